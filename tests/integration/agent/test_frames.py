"""Malformed and oversized gRPC frames (hypothesis, raw HTTP/2): only that stream ends.

A real cell and a real agent run on a background event loop for the whole module; hypothesis
drives raw HTTP/2 streams at the cell from the test thread. After every example the agent must
still answer a command, and the raw connection must still be open.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Coroutine, Iterator
from typing import Any, TypeVar

import attrs
import pytest
from google.protobuf.message import DecodeError
from grpclib.const import Status
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from lattice.adapters import tls
from lattice.domain import agent
from lattice.proto.agent.v1 import agent_pb2 as pb

from .conftest import Cell, Pki, RunningAgent, running_agent, running_cell
from .h2raw import RawH2Connection, grpc_frame
from .streams import beat, ready

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

T = TypeVar("T")
LIMIT = 64 * 1024
REFUSALS = {
    Status.INVALID_ARGUMENT,
    Status.PERMISSION_DENIED,
    Status.RESOURCE_EXHAUSTED,
    Status.UNIMPLEMENTED,
    Status.FAILED_PRECONDITION,
}


@attrs.define
class Env:
    loop: asyncio.AbstractEventLoop
    cell: Cell
    agent: RunningAgent
    conn: RawH2Connection
    stack: contextlib.AsyncExitStack

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    async def agent_still_works(self) -> None:
        reply = await self.cell.hub.send_command("c1", agent.StatusQuery(), 5)
        assert isinstance(reply, agent.StatusReport)
        assert not self.conn.closed.is_set()

    async def stream(self, *chunks: bytes, end: bool = True):
        sid = self.conn.start_stream()
        for chunk in chunks:
            await self.conn.send(sid, chunk)
        if end:
            await self.conn.send(sid, b"", end=True)
        return await self.conn.result(sid)


@pytest.fixture(scope="module")
def env(cell_pki: Pki) -> Iterator[Env]:
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="cell-loop", daemon=True)
    thread.start()

    async def setup() -> Env:
        stack = contextlib.AsyncExitStack()
        cell = await stack.enter_async_context(running_cell(cell_pki, max_message_bytes=LIMIT))
        running = await stack.enter_async_context(running_agent(cell_pki.agent_files("c1"), "c1", cell.port))
        await cell.wait_connected("c1")
        conn = await RawH2Connection.open(cell.port, tls.client_context(cell_pki.agent_files("fuzz")))
        stack.push_async_callback(conn.close)
        return Env(loop=loop, cell=cell, agent=running, conn=conn, stack=stack)

    environment = asyncio.run_coroutine_threadsafe(setup(), loop).result(60)
    try:
        yield environment
    finally:
        asyncio.run_coroutine_threadsafe(environment.stack.aclose(), loop).result(60)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


READY = grpc_frame(ready("fuzz").SerializeToString())


def _is_fuzz_message(body: bytes) -> bool:
    try:
        return pb.AgentMessage.FromString(body).cluster_name == "fuzz"
    except DecodeError:
        return False


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.binary(max_size=4096), after_ready=st.booleans())
def test_malformed_protobuf_messages_end_only_their_stream(env: Env, body: bytes, after_ready: bool):
    assume(not _is_fuzz_message(body))
    chunks = (READY, grpc_frame(body)) if after_ready else (grpc_frame(body),)
    result = env.run(env.stream(*chunks))
    assert result.status in REFUSALS, (result.status, result.message)
    assert result.message
    env.run(env.agent_still_works())


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(min_size=1, max_size=4096))
def test_arbitrary_bytes_on_a_stream_get_a_grpc_status_never_a_crash(env: Env, raw: bytes):
    result = env.run(env.stream(READY, raw))
    assert result.status is not None
    assert result.status not in {Status.INTERNAL, Status.UNKNOWN}, result.message
    env.run(env.agent_still_works())


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    length=st.integers(min_value=LIMIT + 1, max_value=2**32 - 1),
    sent=st.integers(min_value=0, max_value=2048),
)
def test_oversized_frames_are_refused_before_their_body_is_read(env: Env, length: int, sent: int):
    # the stream is left open: the cell must answer from the prefix alone, without waiting for
    # (or buffering) the announced body
    result = env.run(env.stream(READY, grpc_frame(b"\0" * sent, length=length), end=False))
    assert result.status is Status.RESOURCE_EXHAUSTED
    assert f"{length} bytes exceeds the limit of {LIMIT}" in result.message
    env.run(env.agent_still_works())


def test_compressed_and_truncated_frames(env: Env):
    compressed = env.run(env.stream(READY, grpc_frame(b"abc", flag=1)))
    assert compressed.status is Status.UNIMPLEMENTED
    truncated = env.run(env.stream(READY, grpc_frame(b"abc", length=100)))
    assert truncated.status is Status.INVALID_ARGUMENT
    assert "truncated" in truncated.message
    env.run(env.agent_still_works())


def test_the_raw_connection_keeps_serving_valid_streams(env: Env):
    async def valid_stream() -> list[pb.CellCommand]:
        sid = env.conn.start_stream()
        await env.conn.send(sid, READY + grpc_frame(beat("fuzz", 42).SerializeToString()))
        messages = await env.conn.next_messages(sid, 1)
        await env.conn.send(sid, b"", end=True)
        result = await env.conn.result(sid)
        assert result.status is Status.OK
        return messages

    (ack,) = env.run(valid_stream())
    assert ack.heartbeat_ack.sequence == 42


def test_many_bad_streams_at_once_leave_good_ones_alone(env: Env):
    async def burst() -> list[Status | None]:
        bad = [env.stream(READY, grpc_frame(b"\xff" * n)) for n in range(1, 40)]
        results = await asyncio.gather(*bad, env.agent_still_works(), env.agent_still_works())
        return [r.status for r in results[:-2]]

    statuses = env.run(burst())
    assert set(statuses) == {Status.INVALID_ARGUMENT}


@pytest.mark.anyio
async def test_the_default_limit_is_4_mib(cell_pki: Pki):
    async with running_cell(cell_pki) as cell:
        conn = await RawH2Connection.open(cell.port, tls.client_context(cell_pki.agent_files("big")))
        try:
            sid = conn.start_stream()
            await conn.send(sid, grpc_frame(ready("big").SerializeToString()))
            await conn.send(sid, grpc_frame(b"", length=4 * 1024 * 1024 + 1))
            result = await conn.result(sid)
            assert result.status is Status.RESOURCE_EXHAUSTED
        finally:
            await conn.close()


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"
