"""A minimal raw HTTP/2 gRPC client (hyper-h2 over asyncio TLS) that can send any bytes.

It sees exactly what the cell sends - response headers, DATA, trailers, RST_STREAM - so tests
can check a status even when the server resets the stream right after its trailers, and can
send frames no gRPC library would produce (garbage, wrong lengths, compressed flags).
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator

import attrs
import h2.config
import h2.connection
import h2.events
from google.protobuf.message import Message
from grpclib.const import Status

from lattice.proto.agent.v1 import agent_pb2 as pb

PATH = "/lattice.agent.v1.LatticeAgent/Connect"


def grpc_frame(body: bytes, *, flag: int = 0, length: int | None = None) -> bytes:
    return bytes([flag]) + (len(body) if length is None else length).to_bytes(4, "big") + body


@attrs.define
class StreamResult:
    headers: dict[str, str] = attrs.field(factory=dict)
    data: bytearray = attrs.field(factory=bytearray)
    trailers: dict[str, str] = attrs.field(factory=dict)
    reset: int | None = None
    ended: asyncio.Event = attrs.field(factory=asyncio.Event)
    data_arrived: asyncio.Event = attrs.field(factory=asyncio.Event)

    @property
    def status(self) -> Status | None:
        value = self.trailers.get("grpc-status", self.headers.get("grpc-status"))
        return None if value is None else Status(int(value))

    @property
    def message(self) -> str:
        return self.trailers.get("grpc-message", self.headers.get("grpc-message", ""))

    def messages(self) -> list[pb.CellCommand]:
        out, data = [], bytes(self.data)
        while len(data) >= 5:
            length = int.from_bytes(data[1:5], "big")
            if len(data) < 5 + length:
                break
            out.append(pb.CellCommand.FromString(data[5 : 5 + length]))
            data = data[5 + length :]
        return out


class RawH2Connection:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._conn = h2.connection.H2Connection(
            h2.config.H2Configuration(client_side=True, header_encoding="utf-8")
        )
        self.results: dict[int, StreamResult] = {}
        self.closed = asyncio.Event()
        self._window_open = asyncio.Event()
        self._conn.initiate_connection()
        self._flush()
        self._pump_task = asyncio.create_task(self._pump())

    @classmethod
    async def open(cls, port: int, context: ssl.SSLContext, host: str = "127.0.0.1") -> RawH2Connection:
        reader, writer = await asyncio.open_connection(host, port, ssl=context, server_hostname=host)
        return cls(reader, writer)

    def _flush(self) -> None:
        data = self._conn.data_to_send()
        if data:
            self._writer.write(data)

    async def _pump(self) -> None:
        try:
            while data := await self._reader.read(65536):
                for event in self._conn.receive_data(data):
                    self._on_event(event)
                self._flush()
        except (ConnectionError, ssl.SSLError, h2.exceptions.ProtocolError):
            pass
        finally:
            self.closed.set()
            for result in self.results.values():
                result.ended.set()
                result.data_arrived.set()

    def _on_event(self, event: h2.events.Event) -> None:
        if isinstance(event, h2.events.WindowUpdated | h2.events.RemoteSettingsChanged):
            self._window_open.set()
        stream_id = getattr(event, "stream_id", None)
        result = self.results.get(stream_id) if stream_id else None
        if result is None:
            return
        if isinstance(event, h2.events.ResponseReceived):
            result.headers.update(dict(event.headers))
        elif isinstance(event, h2.events.TrailersReceived):
            result.trailers.update(dict(event.headers))
        elif isinstance(event, h2.events.DataReceived):
            result.data.extend(event.data)
            self._conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            result.data_arrived.set()
        elif isinstance(event, h2.events.StreamEnded):
            result.ended.set()
        elif isinstance(event, h2.events.StreamReset):
            result.reset = event.error_code
            result.ended.set()

    def start_stream(self) -> int:
        stream_id = self._conn.get_next_available_stream_id()
        self.results[stream_id] = StreamResult()
        self._conn.send_headers(
            stream_id,
            [
                (":method", "POST"),
                (":scheme", "https"),
                (":path", PATH),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        self._flush()
        return stream_id

    async def send(self, stream_id: int, data: bytes, *, end: bool = False) -> None:
        """Send raw bytes as DATA frames, respecting flow control."""
        view = memoryview(data)
        while view:
            window = min(self._conn.local_flow_control_window(stream_id), self._conn.max_outbound_frame_size)
            if window <= 0:
                self._window_open.clear()
                await asyncio.wait_for(self._window_open.wait(), 10)
                continue
            chunk, view = view[:window], view[window:]
            self._conn.send_data(stream_id, bytes(chunk))
            self._flush()
            await self._writer.drain()
        if end:
            self._conn.end_stream(stream_id)
            self._flush()

    async def send_message(self, stream_id: int, message: Message) -> None:
        await self.send(stream_id, grpc_frame(message.SerializeToString()))

    async def result(self, stream_id: int, within: float = 10.0) -> StreamResult:
        result = self.results[stream_id]
        await asyncio.wait_for(result.ended.wait(), within)
        return result

    async def next_messages(self, stream_id: int, count: int, within: float = 10.0) -> list[pb.CellCommand]:
        result = self.results[stream_id]
        async with asyncio.timeout(within):
            while len(result.messages()) < count and not result.ended.is_set():
                result.data_arrived.clear()
                await result.data_arrived.wait()
        return result.messages()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._conn.close_connection()
            self._flush()
        self._writer.close()
        with contextlib.suppress(Exception):
            await self._writer.wait_closed()
        self._pump_task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._pump_task


@contextlib.asynccontextmanager
async def raw_h2(port: int, context: ssl.SSLContext) -> AsyncIterator[RawH2Connection]:
    connection = await RawH2Connection.open(port, context)
    try:
        yield connection
    finally:
        await connection.close()
