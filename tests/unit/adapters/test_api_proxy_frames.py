"""The two ends of the API proxy's frame exchange, driven frame by frame: the cell's
``ProxyRelay`` (credit, order, limits, disconnects) and the agent's ``ApiProxyExecutor``
(refusals before any HTTP, cancellation of a request waiting on a silent server)."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator

import pytest

from lattice.adapters.api_proxy_agent import ApiProxyExecutor, HttpTarget
from lattice.adapters.api_proxy_cell import ProxyFailed, ProxyRelay
from lattice.domain.api_proxy import ProxyLimits
from lattice.ports.agent import AgentNotConnected
from lattice.proto.agent.v1 import agent_pb2 as pb

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Wire:
    """What the relay sends, per cluster; ``down`` clusters refuse like a hub without a stream."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, pb.ApiProxyToAgent]] = []
        self.down: set[str] = set()

    async def send(self, cluster: str, command: pb.CellCommand) -> None:
        if cluster in self.down:
            raise AgentNotConnected(f"the agent of cluster {cluster} is not connected")
        self.sent.append((cluster, command.api_proxy))

    def kinds(self) -> list[str]:
        return [frame.WhichOneof("frame") or "" for _, frame in self.sent]


def relay(wire: Wire, **limits: object) -> ProxyRelay:
    counter = iter(range(1_000_000))
    return ProxyRelay(wire.send, ProxyLimits(**limits), new_id=lambda: f"r{next(counter)}")  # type: ignore[arg-type]


def head(request_id: str, status: int = 200) -> pb.ApiProxyFromAgent:
    return pb.ApiProxyFromAgent(request_id=request_id, head=pb.ApiProxyResponseHead(status=status))


def data(request_id: str, payload: bytes) -> pb.ApiProxyFromAgent:
    return pb.ApiProxyFromAgent(request_id=request_id, data=payload)


def end(request_id: str, error: str = "", status: int = 0) -> pb.ApiProxyFromAgent:
    return pb.ApiProxyFromAgent(request_id=request_id, end=pb.ApiProxyEnd(error=error, status=status))


async def test_a_response_flows_within_its_window_and_credit_is_returned() -> None:
    wire = Wire()
    proxy = relay(wire, window_bytes=10, chunk_bytes=4)
    exchange = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    assert wire.sent[0][1].request.initial_window == 10
    proxy.on_frame("c", head("r0"))
    assert (await proxy.response_head(exchange)).status == 200
    body = proxy.body(exchange)
    for piece in (b"abcd", b"efgh"):
        proxy.on_frame("c", data("r0", piece))
    assert [await anext(body), await anext(body)] == [b"abcd", b"efgh"]

    async def rest() -> list[bytes]:
        return [chunk async for chunk in body]

    remaining = asyncio.ensure_future(rest())  # the client asks for more: what it took is granted
    await asyncio.sleep(0)
    assert wire.kinds() == ["request", "window_update"]  # 8 of 10 taken: 8 granted back
    assert wire.sent[1][1].window_update == 8
    proxy.on_frame("c", data("r0", b"ij"))  # within the credit only because 8 came back
    proxy.on_frame("c", data("r0", b"klmn"))
    proxy.on_frame("c", end("r0"))
    assert await remaining == [b"ij", b"klmn"]
    assert proxy.open_count("c") == 0
    assert proxy.violations == 0


async def test_bytes_beyond_the_credit_cancel_that_request_only() -> None:
    wire = Wire()
    proxy = relay(wire, window_bytes=4)
    first = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    second = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/apis"))
    proxy.on_frame("c", head("r0"))
    proxy.on_frame("c", data("r0", b"12345"))
    await asyncio.sleep(0)  # the cancel is sent by a task
    assert proxy.violations == 1
    with pytest.raises(ProxyFailed, match="4 of credit"):
        [chunk async for chunk in proxy.body(first)]
    assert ("c", "cancel") in [(c, f.WhichOneof("frame")) for c, f in wire.sent]
    proxy.on_frame("c", head("r1", 404))
    assert (await proxy.response_head(second)).status == 404


async def test_frames_out_of_order_are_violations() -> None:
    wire = Wire()
    proxy = relay(wire)
    early = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    proxy.on_frame("c", data("r0", b"x"))
    with pytest.raises(ProxyFailed, match="before the response head"):
        await proxy.response_head(early)
    twice = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    proxy.on_frame("c", head("r1"))
    proxy.on_frame("c", head("r1"))
    with pytest.raises(ProxyFailed, match="a second response head"):
        [chunk async for chunk in proxy.body(twice)]
    headless = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    proxy.on_frame("c", end("r2"))
    with pytest.raises(ProxyFailed, match="without a head"):
        await proxy.response_head(headless)
    proxy.on_frame("c", data("unknown", b"x"))  # finished or never opened: ignored
    await asyncio.sleep(0)
    assert proxy.violations == 2


async def test_an_error_end_carries_its_status() -> None:
    wire = Wire()
    proxy = relay(wire)
    exchange = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    proxy.on_frame("c", end("r0", "more than 32 proxied requests", 429))
    with pytest.raises(ProxyFailed) as failed:
        await proxy.response_head(exchange)
    assert failed.value.status == 429
    cut = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    proxy.on_frame("c", head("r1"))
    proxy.on_frame("c", data("r1", b"partial"))
    proxy.on_frame("c", end("r1", "the response is larger than 1 bytes"))
    await proxy.response_head(cut)
    body = proxy.body(cut)
    assert await anext(body) == b"partial"
    with pytest.raises(ProxyFailed, match="larger than"):
        await anext(body)


async def test_limits_disconnects_and_timeouts() -> None:
    wire = Wire()
    proxy = relay(wire, max_concurrent=2, head_timeout=0.05)
    await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    slow = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    with pytest.raises(ProxyFailed) as busy:
        await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api"))
    assert busy.value.status == 429
    await proxy.open("other", pb.ApiProxyRequest(method="GET", path="/api"))  # per cluster
    with pytest.raises(ProxyFailed) as late:
        await proxy.response_head(slow)
    assert late.value.status == 504
    assert wire.kinds()[-1] == "cancel"
    wire.down.add("gone")
    with pytest.raises(ProxyFailed) as absent:
        await proxy.open("gone", pb.ApiProxyRequest(method="GET", path="/api"))
    assert absent.value.status == 503
    assert proxy.open_count("gone") == 0
    pending = await proxy.open("other", pb.ApiProxyRequest(method="GET", path="/api"))
    proxy.on_disconnect("other", "superseded")
    with pytest.raises(ProxyFailed, match="the stream of cluster other ended: superseded"):
        await proxy.response_head(pending)
    assert proxy.open_count("other") == 0


async def test_a_consumer_that_stops_early_cancels_on_the_agent() -> None:
    wire = Wire()
    proxy = relay(wire)
    exchange = await proxy.open("c", pb.ApiProxyRequest(method="GET", path="/api", streaming=True))
    proxy.on_frame("c", head("r0"))
    proxy.on_frame("c", data("r0", b"event"))
    body = proxy.body(exchange)
    assert await anext(body) == b"event"
    await body.aclose()  # the client went away
    assert wire.kinds() == ["request", "cancel"]
    assert wire.sent[-1][1].cancel.reason == "the client went away"
    await proxy.cancel(exchange, "again")  # once only
    assert wire.kinds() == ["request", "cancel"]


# --- the agent's executor -----------------------------------------------------------------


class Outbox:
    def __init__(self) -> None:
        self.frames: list[pb.ApiProxyFromAgent] = []
        self.arrived = asyncio.Event()

    async def send(self, message: pb.AgentMessage) -> None:
        assert message.cluster_name == "child"
        self.frames.append(message.api_proxy)
        self.arrived.set()

    async def next_end(self) -> pb.ApiProxyEnd:
        async with asyncio.timeout(10):
            while not any(f.HasField("end") for f in self.frames):
                self.arrived.clear()
                await self.arrived.wait()
        return next(f.end for f in self.frames if f.HasField("end"))


def request(request_id: str, path: str = "/api", user: str = "alice") -> pb.ApiProxyToAgent:
    return pb.ApiProxyToAgent(
        request_id=request_id, request=pb.ApiProxyRequest(method="GET", path=path, user=user)
    )


@pytest.fixture
async def silent_server() -> AsyncIterator[HttpTarget]:
    """A TCP server that accepts and never answers: requests wait until cancelled."""

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()
        writer.close()

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    target = HttpTarget(base_url=f"http://127.0.0.1:{port}", verify=ssl.create_default_context())
    try:
        yield target
    finally:
        await target.close()
        server.close()


async def test_refusals_before_any_request(silent_server: HttpTarget) -> None:
    executor = ApiProxyExecutor("child", silent_server)
    nobody = Outbox()
    executor.on_frame(request("a", user=""), nobody.send)
    assert (await nobody.next_end()).status == 400
    relayed = Outbox()
    executor.on_frame(request("b", path="/clusters/leaf/api"), relayed.send)
    ended = await relayed.next_end()
    assert ended.status == 404
    assert "runs no cell" in ended.error
    headers = Outbox()
    executor.on_frame(
        pb.ApiProxyToAgent(
            request_id="c",
            request=pb.ApiProxyRequest(
                method="GET",
                path="/api",
                user="alice",
                headers=[pb.ApiProxyHeader(name="Accept", value="x" * 9000)],
            ),
        ),
        headers.send,
    )
    assert (await headers.next_end()).status == 400
    assert executor.open_requests == 0
    await executor.close()


async def test_concurrency_window_and_cancel(silent_server: HttpTarget) -> None:
    executor = ApiProxyExecutor("child", silent_server, limits=ProxyLimits(max_concurrent=1))
    outbox = Outbox()
    executor.on_frame(request("one"), outbox.send)
    executor.on_frame(request("one"), outbox.send)  # a repeated id is refused
    executor.on_frame(request(""), outbox.send)  # so is an empty one
    executor.on_frame(request("two"), outbox.send)
    ended = await outbox.next_end()
    assert ended.status == 429
    assert [f.request_id for f in outbox.frames] == ["two"]
    assert executor.open_requests == 1
    # more credit than the window is a peer's error: the request stops
    outbox.frames.clear()
    executor.on_frame(pb.ApiProxyToAgent(request_id="one", window_update=10**9), outbox.send)
    assert executor.open_requests == 0
    assert executor.cancelled == 1
    refused = await outbox.next_end()  # the cell hears why, rather than waiting
    assert refused.status == 502
    assert "exceeds the limit" in refused.error
    executor.on_frame(request("three"), outbox.send)
    executor.on_frame(pb.ApiProxyToAgent(request_id="three", window_update=1), outbox.send)
    executor.on_frame(
        pb.ApiProxyToAgent(request_id="three", cancel=pb.ApiProxyCancel(reason="bye")), outbox.send
    )
    executor.on_frame(pb.ApiProxyToAgent(request_id="three", cancel=pb.ApiProxyCancel()), outbox.send)  # late
    assert executor.open_requests == 0
    executor.on_frame(request("four"), outbox.send)
    executor.reset()  # the stream ended
    assert executor.open_requests == 0
    assert executor.cancelled == 3
    await executor.close()


async def test_a_request_that_fails_unexpectedly_still_ends(silent_server: HttpTarget) -> None:
    executor = ApiProxyExecutor("child", silent_server)
    outbox = Outbox()
    executor.on_frame(request("a", user="jos\u00e9\u2603"), outbox.send)  # no header can carry it
    ended = await outbox.next_end()
    assert ended.status == 502
    assert "could not perform the request" in ended.error
    await executor.close()
