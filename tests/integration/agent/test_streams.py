"""Agent <-> cell streams over real mutual TLS on loopback: identity, commands, heartbeats, restarts."""

from __future__ import annotations

import asyncio
import ssl

import grpclib.client
import pytest
from grpclib.const import Status
from grpclib.exceptions import GRPCError, StreamTerminatedError

from lattice.adapters import agent_hub, tls
from lattice.domain import agent
from lattice.domain.heartbeat import HeartbeatPolicy
from lattice.ports.agent import AgentNotConnected, CommandTimeout
from lattice.proto.agent.v1 import agent_grpc
from lattice.proto.agent.v1 import agent_pb2 as pb
from lattice.testing import agents as agent_doubles

from .conftest import Pki, running_agent, running_cell
from .h2raw import raw_h2
from .streams import beat, ready

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

PIVOT = agent.PivotManifests(
    cluster_name="c1",
    capi_namespace="capi-c1",
    pivot_id="pivot-1",
    files=(agent.MoveFile("Cluster_capi-c1_c1.yaml", b'{"kind":"Cluster"}'),),
)


async def test_connect_ready_commands_replies_and_heartbeats(cell_pki: Pki):
    async with (
        running_cell(cell_pki) as cell,
        running_agent(cell_pki.agent_files("c1"), "c1", cell.port) as a,
    ):
        status = await cell.wait_connected("c1")
        assert status.agent_version == "lattice/test"
        assert status.kubernetes_version == "v1.34.1"
        assert status.state is agent.AgentState.PROVISIONING

        report = await cell.hub.send_command("c1", agent.StatusQuery(), 5)
        assert isinstance(report, agent.StatusReport)
        assert report.health == agent.ClusterHealth(1, 1)

        applied = await cell.hub.send_command("c1", agent.ApplyManifests((b"kind: Namespace\n",)), 5)
        assert applied == agent.BootstrapResult(applied.command_id, True)
        assert a.applier.applied == [(b"kind: Namespace\n",)]

        pivoted = await cell.hub.send_command("c1", PIVOT, 5)
        assert isinstance(pivoted, agent.PivotResult)
        assert pivoted.success
        assert pivoted.pivot_id == "pivot-1"
        assert a.importer.imported == [PIVOT]

        synced = await cell.hub.send_command("c1", agent.SyncResources((b"{}",), full_sync=True), 5)
        assert synced == agent.CommandResult(synced.command_id, True)

        # heartbeats carry the new state (READY after the pivot) and are acknowledged
        await cell.sink.wait_for(lambda latest: latest["c1"].state is agent.AgentState.READY, 5)
        async with asyncio.timeout(10):
            while len(a.rtts) < 3:  # noqa: ASYNC110 - polling a counter the agent fills
                await asyncio.sleep(0.1)
        assert all(0 < rtt < 1 for rtt in a.rtts)
        ids = {report.command_id, applied.command_id, pivoted.command_id, synced.command_id}
        assert len(ids) == 4


async def test_unpivot_notice_export_and_release(cell_pki: Pki):
    """A deleted cluster's agent says so on every heartbeat (ClusterDeleting without a command
    id), answers UnpivotCommand with its export (ClusterDeleting as the reply) and lets go on
    UnpivotComplete; an agent without access to its cluster refuses with the reason."""
    files = (agent.MoveFile("Cluster_capi-c1_c1.yaml", b'{"kind":"Cluster"}'),)
    unpivoter = agent_doubles.RecordingUnpivoter(files, deleting_reason="deleted on the cluster")
    async with (
        running_cell(cell_pki) as cell,
        running_agent(cell_pki.agent_files("c1"), "c1", cell.port, unpivoter=unpivoter),
        running_agent(cell_pki.agent_files("c2"), "c2", cell.port),
    ):
        await cell.wait_connected("c1")
        await cell.sink.wait_for(lambda latest: latest["c1"].deleting_reason == "deleted on the cluster", 5)
        export = await cell.hub.send_command("c1", agent.Unpivot("c1", "capi-c1"), 5)
        assert export == agent.UnpivotExport(
            export.command_id, True, files=files, reason="deleted on the cluster"
        )
        assert unpivoter.exported == [agent.Unpivot("c1", "capi-c1")]
        done = await cell.hub.send_command("c1", agent.UnpivotComplete("c1"), 5)
        assert done == agent.CommandResult(done.command_id, True)
        assert unpivoter.released == [agent.UnpivotComplete("c1")]
        other = await cell.hub.send_command("c1", agent.Unpivot("c9", "capi-c9"), 5)
        assert isinstance(other, agent.UnpivotExport)
        assert not other.success
        assert "this agent belongs to 'c1'" in other.error

        await cell.wait_connected("c2")
        refused = await cell.hub.send_command("c2", agent.Unpivot("c2", "capi-c2"), 5)
        assert isinstance(refused, agent.UnpivotExport)
        assert not refused.success
        assert "--kubeconfig" in refused.error
    unpivoter.fail_with = "c1 is a cell with children (a)"
    async with (
        running_cell(cell_pki) as cell,
        running_agent(cell_pki.agent_files("c1"), "c1", cell.port, unpivoter=unpivoter),
    ):
        await cell.wait_connected("c1")
        failed = await cell.hub.send_command("c1", agent.Unpivot("c1", "capi-c1"), 5)
        assert failed == agent.UnpivotExport(failed.command_id, False, "c1 is a cell with children (a)")


async def test_failed_commands_come_back_as_failed_replies(cell_pki: Pki):
    applier = agent_doubles.RecordingManifestApplier(fail_with="the API server said no")
    importer = agent_doubles.RecordingPivotImporter(fail_with="clusterctl move failed")
    async with (
        running_cell(cell_pki) as cell,
        running_agent(cell_pki.agent_files("c1"), "c1", cell.port, applier=applier, importer=importer),
    ):
        await cell.wait_connected("c1")
        applied = await cell.hub.send_command("c1", agent.ApplyManifests((b"x",)), 5)
        assert applied == agent.BootstrapResult(applied.command_id, False, "the API server said no")
        failed = await cell.hub.send_command("c1", PIVOT, 5)
        assert isinstance(failed, agent.PivotResult)
        assert not failed.success
        assert failed.error == "clusterctl move failed"
        await cell.sink.wait_for(lambda latest: latest["c1"].state is agent.AgentState.FAILED, 5)
        bad = agent.PivotManifests("c1", "capi-c1", "pivot-2", (agent.MoveFile("../../etc/passwd", b""),))
        refused = await cell.hub.send_command("c1", bad, 5)
        assert isinstance(refused, agent.PivotResult)
        assert "pivotManifests.files[0].name" in refused.error
        assert importer.imported == []


async def test_a_message_for_another_cluster_is_refused_with_permission_denied(cell_pki: Pki):
    files = cell_pki.agent_files("c1")
    async with running_cell(cell_pki) as cell, raw_h2(cell.port, tls.client_context(files)) as conn:
        sid = conn.start_stream()
        await conn.send_message(sid, ready("c2"))
        result = await conn.result(sid)
        assert result.status is Status.PERMISSION_DENIED
        assert "'c2' does not match the client certificate" in result.message
        sid = conn.start_stream()
        await conn.send_message(sid, ready("c1"))
        await conn.send_message(sid, beat("c1", 1))
        await conn.send_message(sid, beat("c2", 2))
        result = await conn.result(sid)
        assert result.status is Status.PERMISSION_DENIED
        assert [m.heartbeat_ack.sequence for m in result.messages()] == [1]
        assert cell.hub.refused_identity == 2
        assert "c2" not in cell.sink.latest


async def test_the_first_message_must_be_agent_ready(cell_pki: Pki):
    context = tls.client_context(cell_pki.agent_files("c1"))
    async with running_cell(cell_pki) as cell, raw_h2(cell.port, context) as conn:
        sid = conn.start_stream()
        await conn.send_message(sid, beat("c1", 1))
        result = await conn.result(sid)
    assert result.status is Status.FAILED_PRECONDITION
    assert "AgentReady" in result.message


async def _handshake_fails(port: int, context: ssl.SSLContext) -> BaseException | None:
    channel = grpclib.client.Channel("127.0.0.1", port, ssl=context)
    try:
        async with asyncio.timeout(10):
            stream = agent_grpc.LatticeAgentStub(channel).Connect.open()
            async with stream:
                await stream.send_message(ready("c1"))
                await stream.recv_message()
    except (OSError, ssl.SSLError, StreamTerminatedError, GRPCError, ConnectionError) as exc:
        return exc
    finally:
        channel.close()
    return None


async def test_a_certificate_from_another_ca_is_refused_in_the_handshake(cell_pki: Pki, tmp_path):
    other = Pki.create(tmp_path / "other", name="some-other-ca")
    foreign = other.agent_files("c1")
    # the agent trusts our cell CA (so only the cell's check can fail), but presents a foreign cert
    foreign = tls.TlsFiles(cert=foreign.cert, key=foreign.key, ca=cell_pki.server.ca)
    async with running_cell(cell_pki) as cell:
        error = await _handshake_fails(cell.port, tls.client_context(foreign))
        assert error is not None
        assert cell.hub.connected() == frozenset()
        assert cell.sink.history == []


async def test_a_client_without_certificate_is_refused(cell_pki: Pki):
    async with running_cell(cell_pki) as cell:
        error = await _handshake_fails(cell.port, tls.client_context(None, ca=cell_pki.server.ca))
        assert error is not None
        assert cell.sink.history == []


async def test_an_agent_refuses_a_cell_certificate_from_another_ca(cell_pki: Pki, tmp_path):
    other = Pki.create(tmp_path / "other", name="impostor-ca")
    files = cell_pki.agent_files("c1")
    async with running_cell(other) as impostor, running_agent(files, "c1", impostor.port) as a:
        await asyncio.sleep(1.0)
        assert a.runner.connects == 0
        assert "CERTIFICATE_VERIFY_FAILED" in (a.runner.last_error or "")
        assert impostor.sink.history == []


async def test_a_certificate_that_names_no_cluster_is_unauthenticated(cell_pki: Pki):
    plain = cell_pki.ca.authority.issue("c1", client=True)  # same CA, but no spiffe URI SAN
    files = cell_pki.write_identity("plain", plain.cert_pem, plain.key_pem)
    async with running_cell(cell_pki) as cell, raw_h2(cell.port, tls.client_context(files)) as conn:
        sid = conn.start_stream()
        await conn.send_message(sid, ready("c1"))
        result = await conn.result(sid)
    assert result.status is Status.UNAUTHENTICATED
    assert "does not name a Lattice cluster" in result.message


async def test_missed_heartbeats_mark_the_agent_lost_and_close_its_stream(cell_pki: Pki):
    policy = HeartbeatPolicy(interval=0.2, jitter=0.0, max_missed=2)
    context = tls.client_context(cell_pki.agent_files("c1"))
    async with running_cell(cell_pki, heartbeat=policy) as cell, raw_h2(cell.port, context) as conn:
        sid = conn.start_stream()
        await conn.send_message(sid, ready("c1"))
        await cell.wait_connected("c1")
        result = await conn.result(sid)  # and then silence
        assert result.status is Status.UNAVAILABLE
        assert "no heartbeat" in result.message
        assert cell.sink.latest["c1"].connection is agent.Connection.LOST
        assert "c1" not in cell.hub.connected()


async def test_cell_restart_agent_reconnects_and_resyncs(cell_pki: Pki):
    files = cell_pki.agent_files("c1")
    async with running_cell(cell_pki) as first:
        port = first.port
        async with running_agent(files, "c1", port) as a:
            await first.wait_connected("c1")
            assert (await first.hub.send_command("c1", PIVOT, 5)).success
            await first.server.stop()
            # a brand-new cell process state on the same port: it knows nothing
            async with running_cell(cell_pki, port=port) as second:
                status = await second.wait_connected("c1", within=15)
                await second.sink.wait_for(lambda latest: latest["c1"].health is not None, 5)
                status = second.sink.latest["c1"]
                assert a.runner.connects == 2
                # resynced: the new cell learns the state from AgentReady, without asking
                assert status.state is agent.AgentState.READY
                assert status.kubernetes_version == "v1.34.1"
                assert status.health == agent.ClusterHealth(1, 1)
                report = await second.hub.send_command("c1", agent.StatusQuery(), 5)
                assert report.state is agent.AgentState.READY
                # a pivot re-sent after the restart is idempotent: acknowledged, not re-imported
                again = await second.hub.send_command("c1", PIVOT, 5)
                assert again.success
                assert len(a.importer.imported) == 1


async def test_a_command_pending_when_the_stream_drops_is_resent_and_answered_once(cell_pki: Pki):
    importer = agent_doubles.RecordingPivotImporter(delay=1.0)
    async with (
        running_cell(cell_pki) as cell,
        running_agent(cell_pki.agent_files("c1"), "c1", cell.port, importer=importer) as a,
    ):
        await cell.wait_connected("c1")
        pending = asyncio.create_task(cell.hub.send_command("c1", PIVOT, 15))
        await asyncio.sleep(0.3)
        assert cell.hub.disconnect("c1", "test: drop the stream")
        reply = await pending
        assert reply.success
        assert len(importer.imported) == 1
        assert a.runner.connects >= 2


async def test_a_newer_stream_from_the_same_cluster_supersedes_the_older(cell_pki: Pki):
    context = tls.client_context(cell_pki.agent_files("c1"))
    async with (
        running_cell(cell_pki) as cell,
        raw_h2(cell.port, context) as first,
        raw_h2(cell.port, context) as second,
    ):
        old = first.start_stream()
        await first.send_message(old, ready("c1"))
        await cell.wait_connected("c1")
        new = second.start_stream()
        await second.send_message(new, ready("c1"))
        result = await first.result(old)
        assert result.status is Status.ABORTED
        assert "superseded" in result.message
        await second.send_message(new, beat("c1", 7))
        (ack,) = await second.next_messages(new, 1)
        assert ack.heartbeat_ack.sequence == 7
        assert cell.hub.connected() == frozenset({"c1"})


async def test_commands_to_absent_or_silent_agents_time_out_clearly(cell_pki: Pki):
    async with running_cell(cell_pki) as cell:
        with pytest.raises(AgentNotConnected, match="c9"):
            await cell.hub.send_command("c9", agent.StatusQuery(), 0.2)
        async with raw_h2(cell.port, tls.client_context(cell_pki.agent_files("c1"))) as conn:
            sid = conn.start_stream()
            await conn.send_message(sid, ready("c1"))
            await cell.wait_connected("c1")
            waiting = asyncio.create_task(cell.hub.send_command("c1", agent.StatusQuery(), 1.0))
            (command,) = await conn.next_messages(sid, 1)
            assert command.WhichOneof("command") == "status_request"
            # replies of the wrong kind, for unknown ids, or for nothing are ignored
            for wrong in (
                pb.AgentMessage(
                    cluster_name="c1", bootstrap_complete=pb.BootstrapComplete(command_id=command.command_id)
                ),
                pb.AgentMessage(
                    cluster_name="c1", command_result=pb.CommandResult(command_id="nope", success=True)
                ),
            ):
                await conn.send_message(sid, wrong)
            with pytest.raises(CommandTimeout, match="did not answer"):
                await waiting


async def test_service_queries_get_an_answer_and_unknown_payloads_are_tolerated(cell_pki: Pki):
    context = tls.client_context(cell_pki.agent_files("c1"))
    async with running_cell(cell_pki) as cell, raw_h2(cell.port, context) as conn:
        sid = conn.start_stream()
        for message in (
            ready("c1"),
            pb.AgentMessage(cluster_name="c1"),  # no payload (a newer agent's kind)
            pb.AgentMessage(
                cluster_name="c1", catalog_sync=pb.ServiceCatalogSync(full_sync=True, cluster_name="c1")
            ),
            pb.AgentMessage(cluster_name="c1", cluster_health=pb.ClusterHealth(ready_nodes=2, total_nodes=3)),
            pb.AgentMessage(
                cluster_name="c1", cluster_deleting=pb.ClusterDeleting(cluster_name="c1", reason="bye")
            ),
            pb.AgentMessage(
                cluster_name="c1", service_query=pb.ServiceQuery(query_id="q1", service_name="api")
            ),
        ):
            await conn.send_message(sid, message)
        (answer,) = await conn.next_messages(sid, 1)
        assert answer.service_query_response.query_id == "q1"
        assert not answer.service_query_response.found
        assert "not enabled" in answer.service_query_response.error_message
        await cell.sink.wait_for(lambda latest: latest["c1"].deleting_reason == "bye", 5)
        assert cell.sink.latest["c1"].health == agent.ClusterHealth(2, 3)


class FailingSink(agent_doubles.InMemoryAgentStatusSink):
    """A status sink whose backend is down: the streams must not care."""

    async def record(self, status: agent.AgentStatus) -> None:
        raise RuntimeError("the Kubernetes API is unreachable")


async def test_hub_edges(cell_pki: Pki):
    with pytest.raises(ValueError, match="CERT_REQUIRED"):
        agent_hub.CellGrpcServer(
            agent_hub.AgentHub(sink=FailingSink()),
            tls.server_context(cell_pki.server, require_client_cert=False),
        )
    sink = FailingSink()
    hub = agent_hub.AgentHub(sink=sink, heartbeat_policy=HeartbeatPolicy(interval=0.5))
    server = agent_hub.CellGrpcServer(hub, cell_pki.server_context())
    await server.start()
    hub.start()  # idempotent
    try:
        assert not hub.disconnect("nobody", "no such stream")
        assert hub.status("c1") is None
        context = tls.client_context(cell_pki.agent_files("c1"))
        async with raw_h2(server.port, context) as conn:
            empty = conn.start_stream()
            await conn.send(empty, b"", end=True)
            assert (await conn.result(empty)).status is Status.OK  # an agent that says nothing
            sid = conn.start_stream()
            await conn.send_message(sid, ready("c1"))
            await conn.send_message(sid, ready("c1", state=pb.AGENT_STATE_READY))  # a second AgentReady
            await conn.send_message(sid, beat("c1", 1))
            await conn.next_messages(sid, 1)
            status = hub.status("c1")
            assert status is not None
            assert status.state is agent.AgentState.READY
            assert status.connection is agent.Connection.CONNECTED
    finally:
        await server.stop()


async def test_replies_from_another_cluster_or_repeated_are_ignored(cell_pki: Pki):
    async with (
        running_cell(cell_pki) as cell,
        raw_h2(cell.port, tls.client_context(cell_pki.agent_files("c1"))) as c1,
        raw_h2(cell.port, tls.client_context(cell_pki.agent_files("c2"))) as c2,
    ):
        s1, s2 = c1.start_stream(), c2.start_stream()
        await c1.send_message(s1, ready("c1"))
        await c2.send_message(s2, ready("c2"))
        await cell.wait_connected("c1")
        await cell.wait_connected("c2")
        waiting = asyncio.create_task(cell.hub.send_command("c1", agent.StatusQuery(), 5))
        (command,) = await c1.next_messages(s1, 1)

        def answer(cluster: str, version: str) -> pb.AgentMessage:
            return pb.AgentMessage(
                cluster_name=cluster,
                status_response=pb.StatusResponse(
                    command_id=command.command_id, state=pb.AGENT_STATE_READY, kubernetes_version=version
                ),
            )

        await c2.send_message(s2, answer("c2", "v-from-c2"))  # c2 cannot answer for c1
        await asyncio.sleep(0.2)
        assert not waiting.done()
        await c1.send_message(s1, answer("c1", "v1.34.1"))
        await c1.send_message(s1, answer("c1", "v-duplicate"))
        reply = await waiting
        assert reply.kubernetes_version == "v1.34.1"
