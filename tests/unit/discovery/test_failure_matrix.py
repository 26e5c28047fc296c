"""Spec 003, "Failure Handling Matrix": one row per scenario, run against the real catalog,
cache, coordinators and an in-process parent, with the parent's stream failing on demand.

Every row starts from the same world: cluster-a runs ``api`` (allows ``frontend``), cluster-b
runs ``frontend`` (depends on ``api``) and has resolved it once. Then the row's events happen,
and we check what cluster-b gets when it resolves ``api`` again - and what the parent holds.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest
from attrs import frozen

from lattice.app.discovery.catalog_service import CatalogService
from lattice.app.discovery.coordinator import DiscoveryConfig, DiscoveryCoordinator
from lattice.app.discovery.inprocess import InProcessHub
from lattice.domain.discovery.cache import Staleness
from lattice.domain.discovery.catalog import ServiceCatalog
from lattice.domain.discovery.plan import DependencyState, plan_service_resources
from lattice.domain.discovery.resolution import NotAllowed, NotFound, Resolution, Resolved, Source
from tests.unit.discovery.factories import HTTP, context, svc
from tests.unit.discovery.fakes import FakeClock, FakeIds, FlakyChannel, Mode

pytestmark = pytest.mark.anyio

API = svc("api", ports=HTTP, inbound=("frontend",), resource_version="5")
FRONTEND = svc("frontend", outbound=("api",))


class World:
    def __init__(self) -> None:
        self.clock = FakeClock()
        self.start_parent()
        self.a, self.a_channel = self.cluster("cluster-a")
        self.b, self.b_channel = self.cluster("cluster-b")

    def start_parent(self) -> None:
        self.hub = InProcessHub(CatalogService(ServiceCatalog("cell"), self.clock))

    def cluster(self, name: str) -> tuple[DiscoveryCoordinator, FlakyChannel]:
        coordinator: DiscoveryCoordinator | None = None

        def on_update(update: object) -> None:
            assert coordinator is not None
            coordinator.handle_remote_update(update)  # type: ignore[arg-type]

        channel = FlakyChannel(self.hub.attach(name, on_update))
        coordinator = DiscoveryCoordinator(
            DiscoveryConfig(context(name), query_timeout=0.05), channel, self.clock, FakeIds()
        )
        return coordinator, channel

    async def setup(self) -> None:
        assert await self.a.sync_catalog([API])
        first = await self.b.resolve_unknown("prod", "api", "frontend")
        assert isinstance(first, Resolved)

    def reattach(self, name: str, channel: FlakyChannel, coordinator: DiscoveryCoordinator) -> None:
        channel.inner = self.hub.attach(name, coordinator.handle_remote_update)

    def parent_has_api(self) -> bool:
        return self.hub.service.catalog.get("prod", "api") is not None


async def parent_unreachable(w: World) -> Resolution:
    w.b_channel.mode = Mode.UNAVAILABLE
    w.clock.advance(400)  # due for refresh: the query is attempted and fails
    return await w.b.resolve_unknown("prod", "api", "frontend")


async def query_timeout(w: World) -> Resolution:
    w.b_channel.mode = Mode.HANG  # the coordinator's own deadline (5 s; 0.05 s here) fires
    w.clock.advance(400)
    return await w.b.resolve_unknown("prod", "api", "frontend")


async def service_not_found(w: World) -> Resolution:
    return await w.b.resolve_unknown("prod", "never-existed", "frontend")


async def service_removed(w: World) -> Resolution:
    w.hub.service.on_disconnect("cluster-a")  # the parent no longer lists it (no deletion pushed)
    w.clock.advance(400)
    return await w.b.resolve_unknown("prod", "api", "frontend")


async def bilateral_agreement_fails(w: World) -> Resolution:
    return await w.b.resolve_unknown("prod", "api", "intruder")


async def agent_disconnect(w: World) -> Resolution:
    w.hub.detach("cluster-a")
    assert not w.parent_has_api()  # the parent removed the cluster's services
    w.reattach("cluster-a", w.a_channel, w.a)
    assert await w.a.sync_catalog([API])  # reconnect: full sync
    assert w.parent_has_api()
    w.clock.advance(400)
    return await w.b.resolve_unknown("prod", "api", "frontend")


async def cache_stale(w: World) -> Resolution:
    w.b.on_parent_disconnected()
    w.clock.advance(600)  # 2x the refresh interval
    assert w.b.cache.entries_needing_refresh(w.clock.monotonic()) == [("prod", "api")]
    return await w.b.resolve_unknown("prod", "api", "frontend")


async def cache_ancient(w: World) -> Resolution:
    w.b.on_parent_disconnected()
    w.clock.advance(3000)  # 10x
    stats = w.b.cache.staleness_stats(w.clock.monotonic())
    assert stats.ancient == 1
    return await w.b.resolve_unknown("prod", "api", "frontend")


async def parent_restart(w: World) -> Resolution:
    w.start_parent()  # a new, empty catalog
    w.reattach("cluster-a", w.a_channel, w.a)
    w.reattach("cluster-b", w.b_channel, w.b)
    assert not w.parent_has_api()
    assert await w.a.sync_catalog([API])  # children detect the new connection and resync
    assert await w.b.sync_catalog([FRONTEND])
    assert w.parent_has_api()
    w.clock.advance(400)
    assert await w.b.refresh_stale() == 1  # re-queries re-establish the parent's watches
    assert w.hub.service.catalog.watchers("prod", "api") == {"cluster-b"}
    return await w.b.resolve_unknown("prod", "api", "frontend")


@frozen
class Row:
    scenario: str
    detection: str
    behavior: str
    run: Callable[[World], Awaitable[Resolution]]
    kind: type
    source: Source | None
    staleness: Staleness | None
    queries_after_setup: int


MATRIX = [
    Row("Parent unreachable", "gRPC stream error", "cached data, staleness tracked", parent_unreachable,
        Resolved, Source.CACHE, Staleness.STALE, 1),
    Row("Query timeout (5s)", "timeout", "cached data, warning", query_timeout,
        Resolved, Source.CACHE, Staleness.STALE, 1),
    Row("Service not found", "never seen + not found", "NotFound", service_not_found,
        NotFound, None, None, 1),
    Row("Service removed", "not found, but cached", "keep using cached data", service_removed,
        Resolved, Source.CACHE, Staleness.STALE, 1),
    Row("Bilateral agreement fails", "response says no agreement", "deny (None)", bilateral_agreement_fails,
        NotAllowed, Source.CACHE, Staleness.FRESH, 0),
    Row("Agent disconnect", "stream closed", "parent drops cluster; full sync on reconnect", agent_disconnect,
        Resolved, Source.PARENT, Staleness.FRESH, 1),
    Row("Cache stale", "age > refresh interval", "usable, prioritised for refresh", cache_stale,
        Resolved, Source.CACHE, Staleness.STALE, 0),
    Row("Cache ancient", "age > 10x refresh interval", "usable, warning metrics", cache_ancient,
        Resolved, Source.CACHE, Staleness.ANCIENT, 0),
    Row("Parent restart", "new connection", "full catalog sync from all children", parent_restart,
        Resolved, Source.CACHE, Staleness.FRESH, 1),
]  # fmt: skip


@pytest.mark.parametrize("row", MATRIX, ids=[r.scenario for r in MATRIX])
async def test_failure_matrix(row: Row) -> None:
    w = World()
    await w.setup()
    queries_before = w.b_channel.queries
    result = await row.run(w)
    assert isinstance(result, row.kind), (row.behavior, result)
    if isinstance(result, (Resolved, NotAllowed)):
        assert (result.source, result.staleness) == (row.source, row.staleness), row.behavior
        assert result.entry.source_cluster == "cluster-a"
    assert w.b_channel.queries - queries_before == row.queries_after_setup
    # The cache never loses api on any of these paths.
    assert w.b.cache.get("prod", "api") is not None


async def test_denied_dependency_generates_nothing_that_lets_traffic_through() -> None:
    w = World()
    await w.setup()
    intruder = svc("intruder", outbound=("api",))
    await w.b.resolve_unknown("prod", "api", "intruder")
    plan = plan_service_resources([intruder], w.b.cache.snapshot(), context("cluster-b"))
    assert plan.objects == ()
    assert plan.dependencies[0].state is DependencyState.NOT_ALLOWED


async def test_update_propagation_reaches_dependants() -> None:
    """E2E scenario 4 of spec 003 in memory: narrowing allowed callers reaches cluster-b's cache."""
    w = World()
    await w.setup()
    narrowed = svc("api", ports=HTTP, inbound=("someone-else",), resource_version="6")
    assert await w.a.announce_service(narrowed)
    cached = w.b.cache.get("prod", "api")
    assert cached is not None
    assert not cached.entry.allows("frontend")
    plan = plan_service_resources([FRONTEND], w.b.cache.snapshot(), context("cluster-b"))
    assert plan.objects == ()
    # Deleting the service reaches the dependant too, and only then leaves its cache.
    assert await w.a.announce_deletion("prod", "api")
    assert w.b.cache.get("prod", "api") is None
