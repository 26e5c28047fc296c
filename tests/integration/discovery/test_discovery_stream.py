"""Cross-cluster discovery over real agent streams: a real cell hub with a ServiceCatalog and
two real agents (clusters A and B), mutual TLS on loopback."""

from __future__ import annotations

import asyncio
import time
import uuid

import attrs
import pytest

from lattice.adapters import agent_client, agent_local, tls
from lattice.app.discovery.stream import AgentDiscovery, CatalogStreamHandler, every
from lattice.domain import agent
from lattice.domain.discovery.messages import (
    AgentDiscoveryMessage,
    CellDiscoveryMessage,
    RemoteServiceUpdate,
    ServiceAnnouncement,
    ServicePort,
    ServiceQuery,
)
from lattice.domain.discovery.plan import DependencyState, plan_service_resources
from lattice.domain.discovery.resolution import NotAllowed, NotFound, Resolved, Source
from lattice.domain.lattice_service import ValidService
from lattice.ports.discovery import Addressed, ParentUnavailable
from lattice.proto.agent.v1 import agent_pb2 as pb
from lattice.testing import agents as agent_doubles
from tests.integration.agent.conftest import Pki
from tests.integration.agent.h2raw import raw_h2
from tests.integration.agent.streams import ready
from tests.unit.discovery.factories import HTTP, svc

from .conftest import DiscoveryAgent, DiscoveryCell, discovery_agent, discovery_cell, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]


def api(*callers: str, version: str = "1") -> ValidService:
    return svc("api", ports=HTTP, inbound=callers, resource_version=version)


def frontend() -> ValidService:
    return svc("frontend", ports=HTTP, outbound=("api",))


async def synced(
    cell: DiscoveryCell, agent: DiscoveryAgent, count: int = 1, *, in_catalog: bool = True
) -> None:
    await wait_until(lambda: agent.discovery.syncs >= count, what=f"{agent.cluster} sync #{count}")
    await wait_until(lambda: agent.cluster in cell.hub.connected(), what=f"{agent.cluster} attached")
    if not in_catalog:
        return
    # the sync was sent; the cell handles it on its own stream task
    await wait_until(
        lambda: len(cell.catalog.services_of(agent.cluster)) == len(agent.local),
        what=f"{agent.cluster}'s services in the catalog",
    )


def query(service: str, caller: str) -> ServiceQuery:
    return ServiceQuery(uuid.uuid4().hex, "prod", service, caller)


async def test_announce_then_query_with_bilateral_agreement(cell_pki: Pki) -> None:
    async with (
        discovery_cell(cell_pki) as cell,
        discovery_agent(cell_pki, "cluster-a", cell.port, [api("frontend")]) as a,
        discovery_agent(cell_pki, "cluster-b", cell.port, [frontend()]) as b,
    ):
        await synced(cell, a)
        await synced(cell, b)
        entry = cell.catalog.get("prod", "api")
        assert entry is not None
        assert entry.source_cluster == "cluster-a"  # the stream's identity
        assert entry.allowed_callers == frozenset({"frontend"})

        # the raw answers over the stream, correlated by query id
        allowed = await b.parent.query(query("api", "frontend"))
        assert allowed.found
        assert allowed.bilateral_agreement
        assert allowed.service is not None
        assert allowed.service.qualified_dns_name == "api.prod.cluster-a.lattice.example.com"
        denied = await b.parent.query(query("api", "intruder"))
        assert denied.found
        assert not denied.bilateral_agreement
        assert "does not allow intruder" in denied.error_message
        missing = await b.parent.query(query("nothing", "frontend"))
        assert not missing.found
        assert b.parent.pending == 0

        # through the coordinator: resolved, cached, and planned
        result = await b.coordinator.resolve_unknown("prod", "api", "frontend")
        assert isinstance(result, Resolved)
        assert result.source is Source.PARENT
        assert isinstance(await b.coordinator.resolve_unknown("prod", "api", "intruder"), NotAllowed)
        plan = plan_service_resources(b.local, b.coordinator.cache.snapshot(), b.context)
        (status,) = plan.for_caller("shop", "frontend")
        assert status.state is DependencyState.REMOTE
        assert status.source_cluster == "cluster-a"
        kinds = {obj["kind"] for obj in plan.objects}
        assert {"ServiceEntry", "AuthorizationPolicy", "CiliumNetworkPolicy"} <= kinds


async def test_disconnect_keeps_the_cache_and_reconnect_restores_the_catalog(cell_pki: Pki) -> None:
    async with (
        discovery_cell(cell_pki) as cell,
        discovery_agent(cell_pki, "cluster-b", cell.port, [frontend()], refresh_interval=0.2) as b,
    ):
        async with discovery_agent(cell_pki, "cluster-a", cell.port, [api("frontend")]) as a:
            await synced(cell, a)
            await synced(cell, b)
            assert isinstance(await b.coordinator.resolve_unknown("prod", "api", "frontend"), Resolved)
        # A is gone: the catalog drops its entries...
        await wait_until(lambda: cell.catalog.get("prod", "api") is None, what="catalog drop")
        assert cell.catalog.services_of("cluster-a") == []
        assert "cluster-a" not in cell.hub.connected()
        # ...but B's cache never expires: B asks the parent again (its entry is stale after
        # 0.2 s), hears "not found", and still serves the cached copy
        await wait_until(
            lambda: b.coordinator.cache.entries_needing_refresh(time.monotonic()) != [], what="stale"
        )
        stale = await b.coordinator.resolve_unknown("prod", "api", "frontend")
        assert isinstance(stale, Resolved)
        assert stale.source is Source.CACHE
        assert stale.entry.source_cluster == "cluster-a"

        # A comes back (a new stream from the same identity): the full sync restores it
        async with discovery_agent(cell_pki, "cluster-a", cell.port, [api("frontend")]) as a2:
            await synced(cell, a2)
            restored = cell.catalog.get("prod", "api")
            assert restored is not None
            assert restored.source_cluster == "cluster-a"
            fresh = await b.coordinator.resolve_unknown("prod", "api", "frontend")
            assert isinstance(fresh, Resolved)


async def test_the_same_runner_resyncs_after_the_cell_drops_its_stream(cell_pki: Pki) -> None:
    async with (
        discovery_cell(cell_pki) as cell,
        discovery_agent(cell_pki, "cluster-a", cell.port, [api("frontend")]) as a,
        discovery_agent(cell_pki, "cluster-b", cell.port, [frontend()]) as b,
    ):
        await synced(cell, a)
        await synced(cell, b)
        assert isinstance(await b.coordinator.resolve_unknown("prod", "api", "frontend"), Resolved)
        assert cell.catalog.watchers("prod", "api") == {"cluster-b"}

        # A: dropped by the cell, reconnects on its own, and full-syncs again
        assert cell.hub.disconnect("cluster-a", "test: drop the stream")
        await synced(cell, a, count=2)
        await wait_until(lambda: cell.catalog.get("prod", "api") is not None, what="restored")

        # B: dropped too; its watch goes with its stream and comes back with its re-query
        assert cell.hub.disconnect("cluster-b", "test: drop the stream")
        await synced(cell, b, count=2)
        await wait_until(lambda: cell.catalog.watchers("prod", "api") == {"cluster-b"}, what="watch restored")
        assert b.runner.connects == 2


async def test_narrowing_allowed_callers_pushes_an_update_and_denies_traffic(cell_pki: Pki) -> None:
    async with (
        discovery_cell(cell_pki) as cell,
        discovery_agent(cell_pki, "cluster-a", cell.port, [api("frontend")]) as a,
        discovery_agent(cell_pki, "cluster-b", cell.port, [frontend()]) as b,
    ):
        await synced(cell, a)
        await synced(cell, b)
        assert isinstance(await b.coordinator.resolve_unknown("prod", "api", "frontend"), Resolved)
        before = plan_service_resources(b.local, b.coordinator.cache.snapshot(), b.context)
        assert any(o["kind"] == "AuthorizationPolicy" for o in before.objects)

        narrowed = api("admin", version="2")
        a.local[:] = [narrowed]
        assert await a.coordinator.announce_service(narrowed)

        await wait_until(lambda: b.discovery.updates >= 1, what="RemoteServiceUpdate at B")
        assert b.changes[-1].updated
        cached = b.coordinator.cache.get("prod", "api")
        assert cached is not None
        assert cached.entry.allowed_callers == frozenset({"admin"})
        after = plan_service_resources(b.local, b.coordinator.cache.snapshot(), b.context)
        (status,) = after.for_caller("shop", "frontend")
        assert status.state is DependencyState.NOT_ALLOWED
        assert not any(
            o["kind"] in {"AuthorizationPolicy", "ServiceEntry", "CiliumNetworkPolicy"} for o in after.objects
        )
        # the decision at B, without asking (the pushed data is fresh)
        again = await b.coordinator.resolve_unknown("prod", "api", "frontend")
        assert isinstance(again, NotAllowed)
        assert again.source is Source.CACHE
        # never to the owner
        assert a.discovery.updates == 0


async def test_malformed_discovery_messages_do_not_end_the_stream(cell_pki: Pki) -> None:
    context = tls.client_context(cell_pki.agent_files("raw-1"))
    async with discovery_cell(cell_pki) as cell, raw_h2(cell.port, context) as conn:
        sid = conn.start_stream()
        for message in (
            ready("raw-1"),
            pb.AgentMessage(
                cluster_name="raw-1",
                service_announcement=pb.ServiceAnnouncement(environment="prod"),  # no name
            ),
            pb.AgentMessage(
                cluster_name="raw-1",
                catalog_sync=pb.ServiceCatalogSync(
                    services=[
                        pb.ServiceAnnouncement(
                            environment="prod",
                            service_name="api",
                            ports=[pb.ServicePort(name="http", port=99999)],
                        )
                    ]
                ),
            ),
            pb.AgentMessage(
                cluster_name="raw-1", service_query=pb.ServiceQuery(query_id="q1", service_name="api")
            ),
            pb.AgentMessage(
                cluster_name="raw-1",
                service_announcement=pb.ServiceAnnouncement(
                    environment="prod", service_name="api", source_cluster="someone-else"
                ),
            ),
            pb.AgentMessage(
                cluster_name="raw-1",
                service_announcement=pb.ServiceAnnouncement(
                    environment="prod", service_name="web", allowed_callers=["*"], version=3
                ),
            ),
            pb.AgentMessage(
                cluster_name="raw-1",
                service_query=pb.ServiceQuery(query_id="q2", environment="prod", service_name="web"),
            ),
        ):
            await conn.send_message(sid, message)
        first, second = await conn.next_messages(sid, 2)
        assert first.service_query_response.query_id == "q1"
        assert not first.service_query_response.found
        assert "service_query.environment" in first.service_query_response.error_message
        assert second.service_query_response.query_id == "q2"
        assert second.service_query_response.found
        assert second.service_query_response.bilateral_agreement
        assert second.service_query_response.service.source_cluster == "raw-1"
        assert cell.catalog.get("prod", "api") is None  # the malformed and the foreign ones
        assert "raw-1" in cell.hub.connected()


class BrokenCatalog(CatalogStreamHandler):
    """A discovery handler whose catalog fails: the streams must not care."""

    async def on_message(self, cluster: str, message: AgentDiscoveryMessage) -> list[Addressed]:
        raise RuntimeError("catalog exploded")

    async def on_disconnect(self, cluster: str) -> None:
        raise RuntimeError("catalog exploded on disconnect")


async def test_a_failing_catalog_ends_no_stream(cell_pki: Pki) -> None:
    async with discovery_cell(cell_pki, BrokenCatalog) as cell:
        async with discovery_agent(cell_pki, "cluster-b", cell.port, [frontend()]) as b:
            await synced(cell, b, in_catalog=False)
            answer = await b.parent.query(query("api", "frontend"))
            assert not answer.found
            assert "internal error" in answer.error_message
            result = await b.coordinator.resolve_unknown("prod", "api", "frontend")
            assert isinstance(result, NotFound)
            assert "cluster-b" in cell.hub.connected()
            assert b.runner.connects == 1
        # the handler's failure on disconnect is logged; the hub forgets the stream anyway
        await wait_until(lambda: "cluster-b" not in cell.hub.connected(), what="detached")


async def test_the_agent_ignores_malformed_pushes_and_pushes_to_absent_clusters_are_dropped(
    cell_pki: Pki,
) -> None:
    async with (
        discovery_cell(cell_pki) as cell,
        discovery_agent(cell_pki, "cluster-b", cell.port, [frontend()]) as b,
    ):
        await synced(cell, b)
        bad = RemoteServiceUpdate((ServiceAnnouncement(environment="prod", service_name=""),))
        assert await cell.hub.send_discovery("cluster-b", bad)
        good = RemoteServiceUpdate(
            (
                ServiceAnnouncement(
                    environment="prod",
                    service_name="api",
                    ports=(ServicePort("http", 8080, "HTTP"),),
                    allowed_callers=("frontend",),
                    source_cluster="cluster-a",
                    qualified_dns_name="api.prod.cluster-a.lattice.example.com",
                    gateway_endpoint="gateway.cluster-a.lattice.example.com:443",
                    version=1,
                ),
            )
        )
        assert await cell.hub.send_discovery("cluster-b", good)
        await wait_until(lambda: b.discovery.updates == 1, what="the good update")
        assert b.coordinator.cache.get("prod", "api") is not None
        assert b.runner.connects == 1  # the malformed push did not break the stream
        assert not await cell.hub.send_discovery("cluster-z", good)


async def test_periodic_refresh_and_full_sync_repair_lost_state(cell_pki: Pki) -> None:
    async with (
        discovery_cell(cell_pki) as cell,
        discovery_agent(cell_pki, "cluster-a", cell.port, [api("frontend")]) as a,
        discovery_agent(cell_pki, "cluster-b", cell.port, [frontend()]) as b,
    ):
        await synced(cell, a)
        await synced(cell, b)
        assert isinstance(await b.coordinator.resolve_unknown("prod", "api", "frontend"), Resolved)
        handler = CatalogStreamHandler(cell.service)
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(
                every(0.1, lambda: handler.refresh(cell.hub.connected(), cell.hub.send_discovery), stop)
            ),
            asyncio.create_task(every(0.1, a.discovery.periodic, stop)),
        ]
        try:
            # B lost its copy (say, a restart without the push): the cell's refresh brings it back
            b.coordinator.cache.remove("prod", "api")
            await wait_until(lambda: b.coordinator.cache.get("prod", "api") is not None, what="refresh")
            # the cell lost A's services while A stayed connected: A's periodic full sync repairs it
            cell.catalog.remove_cluster("cluster-a")
            await wait_until(lambda: cell.catalog.get("prod", "api") is not None, what="full sync")
        finally:
            stop.set()
            await asyncio.gather(*tasks)
        assert await a.discovery.periodic()
    # the agents stopped: without a stream a round sends nothing
    assert not a.parent.connected
    assert not await a.discovery.periodic()


async def test_a_failing_periodic_round_is_retried() -> None:
    rounds: list[int] = []

    async def flaky() -> None:
        rounds.append(len(rounds))
        if len(rounds) == 1:
            raise RuntimeError("first round fails")

    stop = asyncio.Event()
    task = asyncio.create_task(every(0.01, flaky, stop))
    await wait_until(lambda: len(rounds) >= 3, what="three rounds")
    stop.set()
    await task


class BrokenAgentDiscovery(AgentDiscovery):
    """An agent-side handler that fails everywhere: the agent's stream must not care."""

    async def on_connected(self) -> None:
        raise RuntimeError("resync exploded")

    def on_disconnected(self) -> None:
        raise RuntimeError("disconnect exploded")

    async def on_message(self, message: CellDiscoveryMessage) -> None:
        raise RuntimeError("push exploded")


async def test_a_failing_agent_handler_ends_no_stream(cell_pki: Pki) -> None:
    async with (
        discovery_cell(cell_pki) as cell,
        discovery_agent(cell_pki, "cluster-b", cell.port, [frontend()]) as b,
    ):

        async def nothing() -> list[ValidService]:
            return []

        broken = BrokenAgentDiscovery(b.coordinator, b.parent, nothing)
        runner = agent_client.AgentRunner(
            attrs.evolve(b.runner.settings, cluster_name="cluster-c"),
            tls.client_context(cell_pki.agent_files("cluster-c")),
            applier=agent_doubles.RecordingManifestApplier(),
            importer=agent_doubles.RecordingPivotImporter(),
            probe=agent_local.StaticClusterProbe("v1.34.1", agent.ClusterHealth(1, 1)),
            discovery=broken,
        )
        with pytest.raises(ParentUnavailable):  # not connected yet
            await runner.send_discovery(query("api", "frontend"))
        stop = asyncio.Event()
        task = asyncio.create_task(runner.run(stop))
        try:
            await wait_until(lambda: "cluster-c" in cell.hub.connected(), what="cluster-c attached")
            assert await cell.hub.send_discovery("cluster-c", RemoteServiceUpdate(()))
            # commands are handled in order: once this is answered, the push was handled
            report = await cell.hub.send_command("cluster-c", agent.StatusQuery(), 5)
            assert isinstance(report, agent.StatusReport)
            assert cell.hub.disconnect("cluster-c", "test")
            await wait_until(lambda: runner.connects == 2, what="cluster-c reconnected")
            assert not task.done()
        finally:
            stop.set()
            await asyncio.wait_for(task, 10)
