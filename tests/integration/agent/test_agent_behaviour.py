"""The agent against a scripted cell: a real grpclib server over real mutual TLS whose every move
the test chooses (repeat a command id, drop the stream, stop acknowledging heartbeats...)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator

import grpclib.server
import pytest
from grpclib.const import Status

from lattice.adapters import agent_client, agent_local, agent_wire, tls
from lattice.domain import agent
from lattice.domain.discovery.messages import ServiceQuery
from lattice.ports.discovery import ParentUnavailable
from lattice.proto.agent.v1 import agent_grpc
from lattice.proto.agent.v1 import agent_pb2 as pb
from lattice.testing import agents as agent_doubles

from .conftest import Pki, running_agent

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]


class ScriptedCell(agent_grpc.LatticeAgentBase):
    def __init__(self, *, acknowledge: bool = True) -> None:
        self.acknowledge = acknowledge
        self.accepting = True
        self.connects = 0
        self.received: list[tuple[int, pb.AgentMessage]] = []
        self.stream: grpclib.server.Stream[pb.AgentMessage, pb.CellCommand] | None = None
        self._changed = asyncio.Condition()
        self._hangup = asyncio.Event()

    async def Connect(self, stream: grpclib.server.Stream[pb.AgentMessage, pb.CellCommand]) -> None:
        if not self.accepting:
            await stream.send_trailing_metadata(status=Status.UNAVAILABLE, status_message="not now")
            return
        self.connects += 1
        number = self.connects
        self.stream = stream
        await stream.send_initial_metadata()
        self._hangup.clear()
        receiver = asyncio.create_task(self._receive(number, stream))
        hangup = asyncio.create_task(self._hangup.wait())
        await asyncio.wait({receiver, hangup}, return_when=asyncio.FIRST_COMPLETED)
        receiver.cancel()
        hangup.cancel()
        self.stream = None
        with contextlib.suppress(Exception):
            await stream.send_trailing_metadata(status=Status.UNAVAILABLE, status_message="scripted hangup")

    async def _receive(
        self, number: int, stream: grpclib.server.Stream[pb.AgentMessage, pb.CellCommand]
    ) -> None:
        async for message in stream:
            self.received.append((number, message))
            if message.WhichOneof("payload") == "heartbeat" and self.acknowledge:
                await stream.send_message(
                    pb.CellCommand(heartbeat_ack=pb.HeartbeatAck(sequence=message.heartbeat.sequence))
                )
            async with self._changed:
                self._changed.notify_all()

    def hang_up(self) -> None:
        self._hangup.set()

    async def send(self, command: pb.CellCommand) -> None:
        assert self.stream is not None
        await self.stream.send_message(command)

    def kinds(self, connection: int | None = None) -> list[str]:
        return [
            str(m.WhichOneof("payload")) for n, m in self.received if connection is None or n == connection
        ]

    def replies(self, command_id: str) -> list[pb.AgentMessage]:
        return [
            m
            for _, m in self.received
            if getattr(agent_wire.reply_from_pb(m), "command_id", None) == command_id
        ]

    async def wait_until(self, predicate, within: float = 10.0) -> None:
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(predicate)


@contextlib.asynccontextmanager
async def scripted_cell(cell_pki: Pki, **kwargs: bool) -> AsyncIterator[tuple[ScriptedCell, int]]:
    cell = ScriptedCell(**kwargs)
    server = grpclib.server.Server([cell])
    sock = socket.create_server(("127.0.0.1", 0))
    await server.start(sock=sock, ssl=cell_pki.server_context())
    port = sock.getsockname()[1]
    try:
        yield cell, port
    finally:
        server.close()
        await server.wait_closed()


STATUS = pb.CellCommand(command_id="s-1", status_request=pb.StatusRequest())


def pivot(pivot_id: str, command_id: str) -> pb.CellCommand:
    return agent_wire.command_to_pb(
        command_id,
        agent.PivotManifests("a1", "capi-a1", pivot_id, (agent.MoveFile("Cluster_capi-a1_a1.yaml", b"{}"),)),
    )


async def _connected(cell: ScriptedCell) -> None:
    await cell.wait_until(lambda: cell.stream is not None and "ready" in cell.kinds())


async def test_repeated_ids_are_answered_from_memory_and_running_commands_are_not_rerun(cell_pki: Pki):
    importer = agent_doubles.RecordingPivotImporter(delay=0.5)
    async with (
        scripted_cell(cell_pki) as (cell, port),
        running_agent(cell_pki.agent_files("a1"), "a1", port, importer=importer),
    ):
        await _connected(cell)
        await cell.send(STATUS)
        await cell.wait_until(lambda: len(cell.replies("s-1")) == 1)
        await cell.send(STATUS)  # the same id again: answered from memory, identically
        await cell.wait_until(lambda: len(cell.replies("s-1")) == 2)
        first, second = cell.replies("s-1")
        assert first == second

        await cell.send(pivot("p-1", "c-1"))
        await cell.send(pivot("p-1", "c-1"))  # still running: ignored, answered once when done
        await cell.wait_until(lambda: len(cell.replies("c-1")) == 1)
        await cell.send(pivot("p-1", "c-2"))  # a new command for an imported pivot: not re-imported
        await cell.wait_until(lambda: len(cell.replies("c-2")) == 1)
        assert len(importer.imported) == 1
        assert cell.replies("c-2")[0].pivot_complete.success

        # no id: cannot be answered; pushes: not commands; an empty command: refused
        await cell.send(pb.CellCommand(status_request=pb.StatusRequest()))
        await cell.send(pb.CellCommand(remote_service_update=pb.RemoteServiceUpdate(full_sync=True)))
        await cell.send(pb.CellCommand(service_query_response=pb.ServiceQueryResponse(query_id="q")))
        await cell.send(pb.CellCommand(command_id="u-1"))
        await cell.wait_until(lambda: len(cell.replies("u-1")) == 1)
        (refusal,) = cell.replies("u-1")
        assert not refusal.command_result.success
        assert "unsupported command" in refusal.command_result.error_message
        assert len(cell.replies("")) == 0


async def test_the_agent_reconnects_when_heartbeats_go_unacknowledged(cell_pki: Pki):
    async with (
        scripted_cell(cell_pki, acknowledge=False) as (cell, port),
        running_agent(cell_pki.agent_files("a1"), "a1", port, interval=0.1) as running,
    ):
        await cell.wait_until(lambda: cell.connects >= 2, within=15)
        assert "ParentLostError" in (running.runner.last_error or "") or running.runner.connects >= 2


async def test_a_reply_finished_while_disconnected_is_delivered_on_resync(cell_pki: Pki):
    importer = agent_doubles.RecordingPivotImporter(delay=0.6)
    async with (
        scripted_cell(cell_pki) as (cell, port),
        running_agent(cell_pki.agent_files("a1"), "a1", port, importer=importer) as running,
    ):
        await _connected(cell)
        await cell.send(pivot("p-9", "c-9"))
        await asyncio.sleep(0.1)
        cell.accepting = False
        cell.hang_up()
        await asyncio.sleep(1.2)  # the pivot finishes while every reconnect is refused
        assert cell.replies("c-9") == []
        cell.accepting = True
        await cell.wait_until(lambda: len(cell.replies("c-9")) == 1, within=15)
        assert cell.kinds(cell.connects)[:3] == ["ready", "cluster_health", "pivot_complete"]
        assert running.runner.connects == 2
        ready = next(m for n, m in cell.received if n == cell.connects)
        assert ready.ready.state == pb.AGENT_STATE_READY  # resync carries the state after the pivot


async def test_health_changes_are_reported(cell_pki: Pki):
    async with (
        scripted_cell(cell_pki) as (cell, port),
        running_agent(cell_pki.agent_files("a1"), "a1", port, interval=0.1) as running,
    ):
        await _connected(cell)
        running.probe.set_health(
            agent.ClusterHealth(ready_nodes=2, total_nodes=5, conditions=("NodeNotReady",))
        )
        await cell.wait_until(
            lambda: any(
                m.WhichOneof("payload") == "cluster_health" and m.cluster_health.total_nodes == 5
                for _, m in cell.received
            )
        )


async def test_the_parent_link_is_shared_and_checked(cell_pki: Pki):
    """Discovery and the runner send through one ParentLink the composition root creates first:
    without a stream a send is refused with the reason, and a link for another cluster is named."""
    link = agent_client.ParentLink("cluster-a")
    with pytest.raises(ConnectionError, match="not connected"):
        await link.send(pb.AgentMessage(cluster_name="cluster-a"))
    with pytest.raises(ParentUnavailable, match="cannot send to the parent"):
        await link.send_discovery(ServiceQuery("q1", "prod", "api", "frontend"))
    settings = agent_client.AgentSettings(cluster_name="cluster-b", host="127.0.0.1", port=1)
    with pytest.raises(ValueError, match="the parent link is for cluster-a, the agent for cluster-b"):
        agent_client.AgentRunner(
            settings,
            tls.client_context(cell_pki.agent_files("cluster-b")),
            applier=agent_doubles.RecordingManifestApplier(),
            importer=agent_doubles.RecordingPivotImporter(),
            probe=agent_local.StaticClusterProbe("v1.34.1", agent.ClusterHealth(1, 1)),
            link=link,
        )
