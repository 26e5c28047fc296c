"""The hub acts on the registry's decisions (domain/agent_registry) over real mutual TLS streams:
the end of an older stream does not record DISCONNECTED over a newer one that attached meanwhile."""

from __future__ import annotations

import asyncio

import pytest
from grpclib.const import Status

from lattice.adapters import agent_hub, tls
from lattice.domain import agent
from lattice.domain.discovery import messages
from lattice.domain.heartbeat import HeartbeatPolicy
from lattice.ports.discovery import Addressed
from lattice.proto.agent.v1 import agent_pb2 as pb
from lattice.testing.agents import InMemoryAgentStatusSink

from .conftest import Pki
from .h2raw import raw_h2
from .streams import beat, ready

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]


class HeldDiscovery:
    """A discovery handler whose ``on_disconnect`` waits until the test lets it go."""

    def __init__(self) -> None:
        self.disconnecting = asyncio.Event()
        self.release = asyncio.Event()

    async def on_message(self, cluster: str, message: messages.AgentDiscoveryMessage) -> list[Addressed]:
        return []

    async def on_disconnect(self, cluster: str) -> None:
        self.disconnecting.set()
        await self.release.wait()


async def test_an_older_stream_ending_does_not_disconnect_a_newer_one(cell_pki: Pki):
    sink = InMemoryAgentStatusSink()
    discovery = HeldDiscovery()
    hub = agent_hub.AgentHub(sink=sink, heartbeat_policy=HeartbeatPolicy(interval=0.5), discovery=discovery)
    server = agent_hub.CellGrpcServer(hub, cell_pki.server_context())
    await server.start()
    context = tls.client_context(cell_pki.agent_files("c1"))
    try:
        async with raw_h2(server.port, context) as first, raw_h2(server.port, context) as second:
            old = first.start_stream()
            await first.send_message(old, ready("c1"))
            await sink.wait_for(lambda latest: "c1" in latest)
            await first.send(old, b"", end=True)  # the agent ends its stream
            async with asyncio.timeout(10):
                await discovery.disconnecting.wait()  # the hub is telling discovery
            new = second.start_stream()
            await second.send_message(new, ready("c1", state=pb.AGENT_STATE_READY))
            await second.send_message(new, beat("c1", 1))
            await second.next_messages(new, 1)  # the heartbeat's ack: attached
            discovery.release.set()
            assert (await first.result(old)).status is not None
            status = hub.status("c1")
            assert status is not None
            assert status.connection is agent.Connection.CONNECTED
            assert "c1" in hub.connected()
            assert [s.connection for s in sink.history] == [agent.Connection.CONNECTED] * len(sink.history)
    finally:
        discovery.release.set()
        await server.stop()


class HeldLostSink(InMemoryAgentStatusSink):
    """Records statuses; holds the first LOST one until the test lets it go."""

    def __init__(self) -> None:
        super().__init__()
        self.holding = asyncio.Event()
        self.release = asyncio.Event()

    async def record(self, status: agent.AgentStatus) -> None:
        if status.connection is agent.Connection.LOST and not self.release.is_set():
            self.holding.set()
            await self.release.wait()
        await super().record(status)


async def test_an_agent_heard_while_the_sweep_reports_another_is_not_lost(cell_pki: Pki):
    """The sweep decides again for each agent when it gets to it: one that sent a heartbeat while
    the sink took an earlier LOST agent's status stays connected."""
    now = [0.0]
    sink = HeldLostSink()
    hub = agent_hub.AgentHub(
        sink=sink, heartbeat_policy=HeartbeatPolicy(interval=0.5), monotonic=lambda: now[0]
    )
    server = agent_hub.CellGrpcServer(hub, cell_pki.server_context())
    await server.start()
    try:
        async with (
            raw_h2(server.port, tls.client_context(cell_pki.agent_files("c1"))) as c1,
            raw_h2(server.port, tls.client_context(cell_pki.agent_files("c2"))) as c2,
        ):
            s1, s2 = c1.start_stream(), c2.start_stream()
            await c1.send_message(s1, ready("c1"))
            await c2.send_message(s2, ready("c2"))
            await sink.wait_for(lambda latest: {"c1", "c2"} <= latest.keys())
            now[0] = 100.0  # both silent for longer than LOST
            async with asyncio.timeout(10):
                await sink.holding.wait()  # the sweeper reports c1 LOST
            await c2.send_message(s2, beat("c2", 1))
            await c2.next_messages(s2, 1)  # c2 heard at 100
            sink.release.set()
            assert (await c1.result(s1)).status is Status.UNAVAILABLE
            assert sink.latest["c1"].connection is agent.Connection.LOST
            status = hub.status("c2")
            assert status is not None
            assert status.connection is agent.Connection.CONNECTED
            assert "c2" in hub.connected()
            assert not c2.results[s2].ended.is_set()
    finally:
        sink.release.set()
        await server.stop()
