"""protobuf <-> domain translation round-trips, and the bounded frame reader on fake buffers."""

from __future__ import annotations

import datetime as dt

import pytest
from grpclib.const import Status
from hypothesis import given
from hypothesis import strategies as st

from lattice.adapters import agent_wire
from lattice.domain import agent
from lattice.proto.agent.v1 import agent_pb2 as pb

ids = st.text(alphabet="0123456789abcdef", min_size=1, max_size=32)
blobs = st.lists(st.binary(max_size=64), max_size=4).map(tuple)
health = st.builds(
    agent.ClusterHealth,
    ready_nodes=st.integers(0, 1000),
    total_nodes=st.integers(0, 1000),
    conditions=st.lists(st.text(max_size=10), max_size=3).map(tuple),
)
states = st.sampled_from(agent.AgentState)
commands = st.one_of(
    st.builds(agent.ApplyManifests, manifests=blobs),
    st.just(agent.StatusQuery()),
    st.builds(
        agent.PivotManifests,
        cluster_name=st.text(max_size=10),
        capi_namespace=st.text(max_size=10),
        pivot_id=st.text(max_size=10),
        files=st.lists(
            st.builds(agent.MoveFile, name=st.text(max_size=10), content=st.binary(max_size=32)), max_size=3
        ).map(tuple),
    ),
    st.builds(agent.SyncResources, manifests=blobs, full_sync=st.booleans()),
    st.builds(
        agent.Unpivot,
        cluster_name=st.text(max_size=10),
        capi_namespace=st.text(max_size=10),
        cascade=st.booleans(),
    ),
    st.builds(agent.UnpivotComplete, cluster_name=st.text(max_size=10)),
)
replies = st.one_of(
    st.builds(agent.BootstrapResult, command_id=ids, success=st.booleans(), error=st.text(max_size=20)),
    st.builds(
        agent.PivotResult,
        command_id=ids,
        pivot_id=st.text(max_size=10),
        success=st.booleans(),
        error=st.text(max_size=20),
    ),
    st.builds(
        agent.StatusReport,
        command_id=ids,
        state=states,
        kubernetes_version=st.text(max_size=10),
        agent_version=st.text(max_size=10),
        health=st.none() | health,
    ),
    st.builds(agent.CommandResult, command_id=ids, success=st.booleans(), error=st.text(max_size=20)),
    st.builds(
        agent.UnpivotExport,
        command_id=ids,
        success=st.booleans(),
        error=st.text(max_size=20),
        files=st.lists(
            st.builds(agent.MoveFile, name=st.text(max_size=10), content=st.binary(max_size=32)), max_size=3
        ).map(tuple),
        reason=st.text(max_size=20),
    ),
)


@given(command_id=ids, command=commands)
def test_commands_round_trip_through_the_wire(command_id, command):
    message = agent_wire.command_to_pb(command_id, command)
    decoded = pb.CellCommand.FromString(message.SerializeToString())
    assert decoded.command_id == command_id
    assert agent_wire.command_from_pb(decoded) == command


@given(reply=replies)
def test_replies_round_trip_through_the_wire(reply):
    message = agent_wire.reply_to_pb("c1", reply)
    decoded = pb.AgentMessage.FromString(message.SerializeToString())
    assert decoded.cluster_name == "c1"
    assert agent_wire.reply_from_pb(decoded) == reply


def test_non_commands_and_non_replies():
    assert agent_wire.command_from_pb(pb.CellCommand(heartbeat_ack=pb.HeartbeatAck(sequence=1))) is None
    assert agent_wire.command_from_pb(pb.CellCommand()) is None
    assert agent_wire.reply_from_pb(pb.AgentMessage(heartbeat=pb.Heartbeat())) is None
    # An unsolicited ClusterDeleting (no command_id) is a notice, not a reply.
    notice = agent_wire.deleting_notice("c1", "deleted on the cluster")
    assert agent_wire.reply_from_pb(pb.AgentMessage.FromString(notice.SerializeToString())) is None
    assert (notice.cluster_name, notice.cluster_deleting.reason) == ("c1", "deleted on the cluster")


@given(states)
def test_states_round_trip(state):
    assert agent_wire.state_from_pb(agent_wire.state_to_pb(state)) is state


def test_unknown_state_numbers_read_as_unknown():
    assert agent_wire.state_from_pb(99) is agent.AgentState.UNKNOWN


def test_timestamps():
    moment = dt.datetime(2026, 5, 4, 3, 2, 1, 123456, tzinfo=dt.UTC)
    assert agent_wire.from_timestamp(agent_wire.timestamp(moment)) == moment


class FakeBuffer:
    """The ``recv_data`` contract of grpclib's HTTP/2 stream, over a fixed byte string."""

    def __init__(self, data: bytes, truncated: bool = False) -> None:
        self.data = data
        self.truncated = truncated

    async def recv_data(self, size: int) -> bytes:
        if not self.data:
            return b""
        if len(self.data) < size:
            if self.truncated:
                raise AssertionError("Received less data than expected")
            chunk, self.data = self.data, b""
            return chunk
        chunk, self.data = self.data[:size], self.data[size:]
        return chunk


class FakeStream:
    def __init__(self, buffer: FakeBuffer) -> None:
        self._stream = buffer


def frame(body: bytes, flag: int = 0, length: int | None = None) -> bytes:
    return bytes([flag]) + (len(body) if length is None else length).to_bytes(4, "big") + body


async def _recv(data: bytes, limit: int = 1024, truncated: bool = False):
    return await agent_wire.recv_bounded(FakeStream(FakeBuffer(data, truncated)), pb.AgentMessage, limit)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("data", "truncated", "status", "fragment"),
    [
        (frame(b"x" * 10, length=2048), False, Status.RESOURCE_EXHAUSTED, "exceeds the limit"),
        (frame(b"", flag=1), False, Status.UNIMPLEMENTED, "compressed"),
        (frame(b"", flag=7), False, Status.INVALID_ARGUMENT, "flag"),
        (b"\x00\x00", False, Status.INVALID_ARGUMENT, "prefix"),
        (b"\x00\x00", True, Status.INVALID_ARGUMENT, "prefix"),
        (frame(b"abc", length=10), False, Status.INVALID_ARGUMENT, "truncated"),
        (frame(b"abc", length=10), True, Status.INVALID_ARGUMENT, "truncated"),
        (frame(b"\xff\xff\xff"), False, Status.INVALID_ARGUMENT, "lattice.agent.v1.AgentMessage"),
    ],
    ids=[
        "oversized",
        "compressed",
        "bad-flag",
        "short-prefix",
        "short-prefix-eof",
        "short-body",
        "short-body-eof",
        "garbage",
    ],
)
async def test_bad_frames_are_refused_with_a_status(data, truncated, status, fragment):
    with pytest.raises(agent_wire.FrameError) as caught:
        await _recv(data, truncated=truncated)
    assert caught.value.status is status
    assert fragment in (caught.value.message or "")


@pytest.mark.anyio
async def test_good_frames_and_end_of_stream():
    message = pb.AgentMessage(cluster_name="c1", heartbeat=pb.Heartbeat(sequence=3))
    assert await _recv(frame(message.SerializeToString())) == message
    assert await _recv(b"") is None


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
