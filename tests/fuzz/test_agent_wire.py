"""Fuzz target ``agent_wire``: gRPC frames on the agent stream, both directions, through the
bounded frame reader and the decoding functions the cell (AgentMessage) and the agent
(CellCommand) apply to what arrives.

Inputs: arbitrary bytes; arbitrary-but-valid messages generated from the protobuf descriptors
(every field, any oneof member, unknown enum numbers, extreme integers), framed; and those frames
with bytes replaced, inserted, deleted or cut.

Invariant: each frame decodes into a domain value (or ``None`` for kinds that are not commands
or replies), or ends in :class:`agent_wire.FrameError` (a gRPC status for the peer) or
:class:`discovery_wire.DiscoveryWireError` (a malformed discovery payload, logged and ignored);
never another exception.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st

from lattice.adapters import agent_wire, discovery_wire
from lattice.domain import agent
from lattice.domain.discovery import messages as discovery
from lattice.proto.agent.v1 import agent_pb2 as pb
from tests.fuzz.plugin import fuzz

OWN_CLUSTER = "c1"
T = FieldDescriptor
_INT_RANGES = {
    T.TYPE_INT32: (-(2**31), 2**31 - 1),
    T.TYPE_SINT32: (-(2**31), 2**31 - 1),
    T.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    T.TYPE_INT64: (-(2**63), 2**63 - 1),
    T.TYPE_SINT64: (-(2**63), 2**63 - 1),
    T.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    T.TYPE_UINT32: (0, 2**32 - 1),
    T.TYPE_FIXED32: (0, 2**32 - 1),
    T.TYPE_UINT64: (0, 2**64 - 1),
    T.TYPE_FIXED64: (0, 2**64 - 1),
}
wire_strings = st.one_of(
    st.text(max_size=20),
    st.sampled_from(["", "c1", "c2", "..", ".", "a/b", "../../etc/passwd", "x" * 300, "prod", "api", "*"]),
)


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    if field.type in _INT_RANGES:
        low, high = _INT_RANGES[field.type]
        return st.one_of(st.integers(low, high), st.sampled_from([low, high, 0, 1, 65535, 65536]))
    if field.type == T.TYPE_BOOL:
        return st.booleans()
    if field.type == T.TYPE_FLOAT:
        return st.floats(width=32)
    if field.type == T.TYPE_DOUBLE:
        return st.floats()
    if field.type == T.TYPE_STRING:
        return wire_strings
    if field.type == T.TYPE_BYTES:
        return st.binary(max_size=40)
    if field.type == T.TYPE_ENUM:
        known = [value.number for value in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))  # open enums
    raise AssertionError(f"unhandled field type {field.type} of {field.full_name}")


@st.composite
def messages(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """Any valid message of ``descriptor``: some plain fields set, at most one member per oneof."""
    message = GetMessageClass(descriptor)()
    chosen = [f for f in descriptor.fields if f.containing_oneof is None and draw(st.booleans())]
    for oneof in descriptor.oneofs:
        member = draw(st.one_of(st.none(), st.sampled_from(list(oneof.fields))))
        if member is not None:
            chosen.append(member)
    for field in chosen:
        if field.type == T.TYPE_MESSAGE:
            if depth >= 4:
                continue
            sub = messages(field.message_type, depth + 1)
            if field.is_repeated:
                for value in draw(st.lists(sub, max_size=3)):
                    getattr(message, field.name).add().CopyFrom(value)
            else:
                getattr(message, field.name).CopyFrom(draw(sub))
        elif field.is_repeated:
            getattr(message, field.name).extend(draw(st.lists(_scalar(field), max_size=3)))
        else:
            setattr(message, field.name, draw(_scalar(field)))
    return message


def frame(body: bytes, flag: int = 0) -> bytes:
    return bytes([flag]) + len(body).to_bytes(4, "big") + body


@st.composite
def _mutated(draw: st.DrawFn, data: bytes) -> bytes:
    out = bytearray(data)
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.integers(0, len(out)))
        action = draw(st.sampled_from(["replace", "insert", "delete", "cut"]))
        if action == "replace" and where < len(out):
            out[where] = draw(st.integers(0, 255))
        elif action == "insert":
            out.insert(where, draw(st.integers(0, 255)))
        elif action == "delete" and where < len(out):
            del out[where]
        elif action == "cut":
            del out[where:]
    return bytes(out)


def streams(message_type: type[Message]) -> st.SearchStrategy[bytes]:
    """What one direction of a stream may carry: framed valid messages, the same damaged, or noise."""
    valid = st.lists(
        messages(message_type.DESCRIPTOR).map(lambda m: frame(m.SerializeToString())), min_size=1, max_size=3
    ).map(b"".join)
    return st.one_of(valid, valid.flatmap(_mutated), st.binary(max_size=200))


class FakeBuffer:
    """grpclib's ``recv_data`` over a byte string; ``truncated``: the peer reset the stream."""

    def __init__(self, data: bytes, truncated: bool) -> None:
        self.data = data
        self.truncated = truncated

    async def recv_data(self, size: int) -> bytes:
        if len(self.data) < size and self.truncated and self.data:
            raise AssertionError("Received less data than expected")
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


class FakeStream:
    def __init__(self, data: bytes, truncated: bool) -> None:
        self._stream = FakeBuffer(data, truncated)


def receive_all(data: bytes, message_type: type[Message], limit: int, truncated: bool) -> Iterator[Message]:
    """Every message the reader yields before the end of the stream or a FrameError."""
    stream = FakeStream(data, truncated)
    loop = asyncio.new_event_loop()
    try:
        while True:
            try:
                message = loop.run_until_complete(agent_wire.recv_bounded(stream, message_type, limit))
            except agent_wire.FrameError as exc:
                refused = exc
                break
            if message is None:
                return
            assert isinstance(message, message_type)
            yield message
        assert refused.status is not None  # a status for the peer
        assert refused.message
    finally:
        loop.close()


def cell_decodes(message: pb.AgentMessage) -> object:
    """What the cell does with an AgentMessage (adapters/agent_hub.py ``_handle``)."""
    kind = message.WhichOneof("payload")
    if kind == "ready":
        return agent_wire.state_from_pb(message.ready.state)
    if kind == "heartbeat":
        return agent_wire.state_from_pb(message.heartbeat.state)
    if kind == "cluster_health":
        return agent_wire.health_from_pb(message.cluster_health)
    if kind in discovery_wire.AGENT_DISCOVERY_KINDS:
        decoded = discovery_wire.agent_message_from_pb(message)
        assert isinstance(
            decoded, discovery.ServiceAnnouncement | discovery.ServiceCatalogSync | discovery.ServiceQuery
        )
        return decoded
    reply = agent_wire.reply_from_pb(message)
    if isinstance(reply, agent.UnpivotExport):
        return list(agent.unpivot_errors(reply))  # before any file is written
    assert reply is None or isinstance(
        reply, agent.BootstrapResult | agent.PivotResult | agent.StatusReport | agent.CommandResult
    )
    return reply


def agent_decodes(message: pb.CellCommand) -> object:
    """What an agent does with a CellCommand (adapters/agent_client.py ``_on_command``)."""
    kind = message.WhichOneof("command")
    if kind in discovery_wire.CELL_DISCOVERY_KINDS:
        decoded = discovery_wire.cell_message_from_pb(message)
        assert isinstance(decoded, discovery.ServiceQueryResponse | discovery.RemoteServiceUpdate)
        return decoded
    command = agent_wire.command_from_pb(message)
    if isinstance(command, agent.PivotManifests):
        return list(agent.pivot_errors(command, OWN_CLUSTER))  # before any file is written
    return command


def _decode_all(data: bytes, message_type: type[Message], limit: int, truncated: bool, decode: Any) -> None:
    for message in receive_all(data, message_type, limit, truncated):
        try:
            decode(message)
        except discovery_wire.DiscoveryWireError as exc:
            malformed = exc
        else:
            continue
        assert malformed.field
        assert malformed.problem


limits = st.sampled_from([agent_wire.DEFAULT_MAX_AGENT_MESSAGE, 64, 4096])


@given(data=streams(pb.AgentMessage), limit=limits, truncated=st.booleans())
@fuzz("agent_wire.to_cell", examples=400)
def test_agent_messages_at_the_cell(data: bytes, limit: int, truncated: bool) -> None:
    _decode_all(data, pb.AgentMessage, limit, truncated, cell_decodes)


@given(data=streams(pb.CellCommand), limit=limits, truncated=st.booleans())
@fuzz("agent_wire.to_agent", examples=400)
def test_cell_commands_at_the_agent(data: bytes, limit: int, truncated: bool) -> None:
    _decode_all(data, pb.CellCommand, limit, truncated, agent_decodes)


@pytest.mark.parametrize("message_type", [pb.AgentMessage, pb.CellCommand])
def test_the_generator_reaches_every_payload(message_type: type[Message]) -> None:
    """Every oneof member is reachable (a new message kind is fuzzed without editing this file)."""
    oneof = message_type.DESCRIPTOR.oneofs[0]
    seen: set[str | None] = set()

    @given(messages(message_type.DESCRIPTOR))
    @settings(max_examples=300, deadline=None)
    def collect(message: Message) -> None:
        seen.add(message.WhichOneof(oneof.name))

    collect()
    assert {f.name for f in oneof.fields} <= seen
