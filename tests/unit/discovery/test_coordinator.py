from __future__ import annotations

import pytest

from lattice.app.discovery.catalog_service import CatalogService
from lattice.app.discovery.coordinator import DependencyResolution, DiscoveryConfig, DiscoveryCoordinator
from lattice.domain.discovery.cache import Staleness
from lattice.domain.discovery.catalog import ServiceCatalog
from lattice.domain.discovery.messages import RemoteServiceUpdate
from lattice.domain.discovery.resolution import NotAllowed, NotFound, Resolved, Source
from lattice.ports.discovery import ParentChannel
from tests.unit.discovery.factories import HTTP, announcement, context, svc
from tests.unit.discovery.fakes import FakeClock, FakeIds, FakeParentChannel, Mode

pytestmark = pytest.mark.anyio

_: type[ParentChannel] = FakeParentChannel  # the fake satisfies the port


class World:
    """A parent catalog with cluster-a's 'api' registered, and cluster-b's coordinator."""

    def __init__(self, query_timeout: float = 5.0) -> None:
        self.clock = FakeClock()
        self.service = CatalogService(ServiceCatalog("cell"), self.clock)
        self.service.handle_agent_message("cluster-a", announcement("api", allowed=("frontend",), version=1))
        self.parent = FakeParentChannel(self.service, "cluster-b")
        self.coordinator = DiscoveryCoordinator(
            DiscoveryConfig(context("cluster-b"), query_timeout=query_timeout),
            self.parent,
            self.clock,
            FakeIds(),
        )


async def test_resolves_through_the_parent_and_caches() -> None:
    w = World()
    result = await w.coordinator.resolve_unknown("prod", "api", "frontend")
    assert isinstance(result, Resolved)
    assert result.source is Source.PARENT
    assert result.entry.source_cluster == "cluster-a"
    assert w.parent.queries[0].query_id == "q-1"
    assert w.parent.queries[0].requesting_service == "frontend"
    # Fresh cache: no second query.
    again = await w.coordinator.resolve_unknown("prod", "api", "frontend")
    assert isinstance(again, Resolved)
    assert again.source is Source.CACHE
    assert len(w.parent.queries) == 1
    # The parent now knows cluster-b depends on api.
    assert w.service.catalog.watchers("prod", "api") == {"cluster-b"}


async def test_stale_entries_are_refreshed_when_connected() -> None:
    w = World()
    await w.coordinator.resolve_unknown("prod", "api", "frontend")
    w.clock.advance(301)
    result = await w.coordinator.resolve_unknown("prod", "api", "frontend")
    assert isinstance(result, Resolved)
    assert result.source is Source.PARENT
    assert len(w.parent.queries) == 2


async def test_no_bilateral_agreement_is_denied() -> None:
    w = World()
    result = await w.coordinator.resolve_unknown("prod", "api", "intruder")
    assert isinstance(result, NotAllowed)


@pytest.mark.parametrize("mode", [Mode.TIMEOUT, Mode.HANG, Mode.UNAVAILABLE, Mode.WRONG_ID, Mode.GARBLED])
async def test_failed_queries_fall_back_to_cached_data(mode: Mode) -> None:
    w = World(query_timeout=0.05)
    await w.coordinator.resolve_unknown("prod", "api", "frontend")
    w.clock.advance(10_000)  # ancient, due for refresh
    w.parent.mode = mode
    result = await w.coordinator.resolve_unknown("prod", "api", "frontend")
    assert isinstance(result, Resolved)
    assert result.source is Source.CACHE
    assert result.staleness is Staleness.ANCIENT
    assert len(w.parent.queries) == 2
    assert len(w.coordinator.cache) == 1


@pytest.mark.parametrize("mode", [Mode.TIMEOUT, Mode.HANG, Mode.UNAVAILABLE])
async def test_failed_queries_for_never_seen_services_are_not_found(mode: Mode) -> None:
    w = World(query_timeout=0.05)
    w.parent.mode = mode
    assert await w.coordinator.resolve_unknown("prod", "api", "frontend") == NotFound("prod", "api")


async def test_disconnected_coordinator_does_not_ask() -> None:
    w = World()
    w.coordinator.on_parent_disconnected()
    assert not w.coordinator.parent_connected
    assert await w.coordinator.resolve_unknown("prod", "api", "frontend") == NotFound("prod", "api")
    assert w.parent.queries == []
    w.coordinator.on_parent_connected()
    assert isinstance(await w.coordinator.resolve_unknown("prod", "api", "frontend"), Resolved)


async def test_announcements_and_syncs() -> None:
    w = World()
    api2 = svc("web", ports=HTTP, inbound=("*",), resource_version="9")
    assert await w.coordinator.announce_service(api2)
    assert w.parent.announcements[-1].source_cluster == "cluster-b"
    assert w.service.catalog.get("prod", "web") is not None
    assert await w.coordinator.announce_deletion("prod", "web")
    assert w.service.catalog.get("prod", "web") is None
    assert await w.coordinator.sync_catalog([api2, svc("cart", ports=HTTP)])
    (sync,) = w.parent.syncs
    assert sync.full_sync
    assert sync.cluster_name == "cluster-b"
    assert [s.service_name for s in sync.services] == ["cart", "web"]
    assert [e.name for e in w.service.catalog.services_of("cluster-b")] == ["cart", "web"]


@pytest.mark.parametrize("mode", [Mode.UNAVAILABLE, Mode.TIMEOUT, Mode.HANG])
async def test_sends_report_failure_instead_of_raising(mode: Mode) -> None:
    w = World(query_timeout=0.05)
    w.parent.mode = mode
    assert not await w.coordinator.announce_service(svc("web"))
    assert not await w.coordinator.sync_catalog([svc("web")])


async def test_root_cluster_without_parent() -> None:
    clock = FakeClock()
    root = DiscoveryCoordinator(DiscoveryConfig(context("mgmt")), None, clock, FakeIds())
    assert not root.parent_connected
    root.on_parent_connected()
    assert not root.parent_connected
    assert not await root.announce_service(svc("web"))
    assert await root.resolve_unknown("prod", "api", "x") == NotFound("prod", "api")


async def test_resolve_all_covers_every_unknown_dependency_and_caller() -> None:
    w = World()
    services = [
        svc("frontend", outbound=("api", "cart")),
        svc("cart", inbound=("*",)),
        svc("admin", outbound=("api",)),
    ]
    results = await w.coordinator.resolve_all(services)
    assert [(r.dependency, r.caller, type(r.resolution).__name__) for r in results] == [
        ("api", "admin", "NotAllowed"),
        ("api", "frontend", "Resolved"),
    ]
    assert isinstance(results[0], DependencyResolution)


async def test_pushes_update_the_cache() -> None:
    w = World()
    await w.coordinator.resolve_unknown("prod", "api", "frontend")
    changes = w.coordinator.handle_remote_update(
        RemoteServiceUpdate(services=(announcement("api", allowed=("*",), version=2),))
    )
    assert changes.updated == (("prod", "api"),)
    cached = w.coordinator.cache.get("prod", "api")
    assert cached is not None
    assert cached.entry.allows("anyone")


async def test_refresh_stale_requeries_with_a_known_caller() -> None:
    w = World()
    await w.coordinator.resolve_unknown("prod", "api", "frontend")
    assert await w.coordinator.refresh_stale() == 0
    w.clock.advance(600)
    assert await w.coordinator.refresh_stale() == 1
    assert [q.requesting_service for q in w.parent.queries] == ["frontend", "frontend"]
    # A pushed entry nobody asked about is refreshed with an empty requesting service.
    w.coordinator.handle_remote_update(
        RemoteServiceUpdate(services=(announcement("pushed", cluster="cluster-a"),))
    )
    w.clock.advance(600)
    assert await w.coordinator.refresh_stale() == 2
    assert sorted(q.requesting_service for q in w.parent.queries[2:]) == ["", "frontend"]
