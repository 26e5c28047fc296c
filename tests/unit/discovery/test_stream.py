"""The discovery handlers the stream adapters call (app layer), with an in-memory 'stream'."""

from __future__ import annotations

import anyio
import pytest

from lattice.app.discovery.catalog_service import CatalogService
from lattice.app.discovery.coordinator import DiscoveryConfig, DiscoveryCoordinator
from lattice.app.discovery.stream import AgentDiscovery, CatalogStreamHandler, StreamParent
from lattice.domain.discovery.cache import CacheChanges
from lattice.domain.discovery.catalog import ServiceCatalog
from lattice.domain.discovery.messages import (
    AgentDiscoveryMessage,
    RemoteServiceUpdate,
    ServiceCatalogSync,
    ServiceQuery,
    ServiceQueryResponse,
)
from lattice.domain.discovery.resolution import NotAllowed, Resolved
from lattice.domain.lattice_service import ValidService
from lattice.ports.discovery import (
    AgentDiscoveryHandler,
    CellDiscoveryHandler,
    ParentChannel,
    ParentTimeout,
    ParentUnavailable,
)
from tests.unit.discovery.factories import HTTP, announcement, context, svc
from tests.unit.discovery.fakes import FakeClock, FakeIds

pytestmark = pytest.mark.anyio

_a: type[ParentChannel] = StreamParent
_b: type[AgentDiscoveryHandler] = AgentDiscovery
_c: type[CellDiscoveryHandler] = CatalogStreamHandler


class Cell:
    """A CatalogStreamHandler plus 'streams' that deliver to AgentDiscovery handlers."""

    def __init__(self) -> None:
        self.clock = FakeClock()
        self.handler = CatalogStreamHandler(CatalogService(ServiceCatalog("cell"), self.clock))
        self.agents: dict[str, AgentDiscovery] = {}
        self.sent: list[tuple[str, AgentDiscoveryMessage]] = []

    def sender(self, cluster: str, *, answer: bool = True) -> object:
        async def send(message: AgentDiscoveryMessage) -> None:
            self.sent.append((cluster, message))
            if not answer:
                return
            for target, item in await self.handler.on_message(cluster, message):
                if target in self.agents:
                    await self.agents[target].on_message(item)

        return send

    def agent(
        self, cluster: str, local: list[ValidService], *, answer: bool = True, timeout: float = 5.0
    ) -> AgentDiscovery:
        parent = StreamParent(self.sender(cluster, answer=answer), query_timeout=timeout)  # type: ignore[arg-type]
        coordinator = DiscoveryCoordinator(DiscoveryConfig(context(cluster)), parent, self.clock, FakeIds())
        changes: list[CacheChanges] = []

        async def services() -> list[ValidService]:
            return local

        async def record(c: CacheChanges) -> None:
            changes.append(c)

        handler = AgentDiscovery(coordinator, parent, services, record)
        handler.changes = changes  # type: ignore[attr-defined]
        self.agents[cluster] = handler
        return handler


async def test_not_connected_is_parent_unavailable() -> None:
    parent = StreamParent(_never_send)
    with pytest.raises(ParentUnavailable):
        await parent.query(ServiceQuery("q", "prod", "api", "frontend"))
    with pytest.raises(ParentUnavailable):
        await parent.announce(announcement("api"))
    with pytest.raises(ParentUnavailable):
        await parent.sync(ServiceCatalogSync((), True, "a"))


async def _never_send(message: AgentDiscoveryMessage) -> None:  # pragma: no cover
    raise AssertionError("must not send")


async def test_no_answer_is_parent_timeout() -> None:
    sent: list[AgentDiscoveryMessage] = []

    async def send(message: AgentDiscoveryMessage) -> None:
        sent.append(message)

    parent = StreamParent(send, query_timeout=0.05)
    parent.on_connected()
    with pytest.raises(ParentTimeout):
        await parent.query(ServiceQuery("q", "prod", "api", "frontend"))
    assert parent.pending == 0
    assert len(sent) == 1
    # a late answer is dropped
    assert not parent.on_response(ServiceQueryResponse("q", False))


async def test_disconnect_fails_waiting_queries() -> None:
    async def send(message: AgentDiscoveryMessage) -> None:
        pass

    parent = StreamParent(send)
    parent.on_connected()
    errors: list[BaseException] = []

    async def ask() -> None:
        try:
            await parent.query(ServiceQuery("q", "prod", "api", "frontend"))
        except ParentUnavailable as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        assert parent.on_disconnected() == 1
    assert len(errors) == 1
    assert not parent.connected


async def test_connect_syncs_resolves_and_pushes_reach_dependants() -> None:
    cell = Cell()
    a = cell.agent("cluster-a", [svc("api", ports=HTTP, inbound=("frontend",))])
    b = cell.agent("cluster-b", [svc("frontend", outbound=("api",))])
    await a.on_connected()
    await b.on_connected()
    assert a.syncs == b.syncs == 1
    assert cell.handler.service.catalog.get("prod", "api") is not None
    result = await b.coordinator.resolve_unknown("prod", "api", "frontend")
    assert isinstance(result, Resolved)
    # narrowing pushes a RemoteServiceUpdate to b
    await a.coordinator.announce_service(svc("api", ports=HTTP, inbound=("admin",), resource_version="2"))
    assert b.updates == 1
    assert b.changes[-1].updated  # type: ignore[attr-defined]
    assert isinstance(await b.coordinator.resolve_unknown("prod", "api", "frontend"), NotAllowed)


async def test_disconnect_drops_the_clusters_entries_and_reconnect_requeries() -> None:
    cell = Cell()
    a = cell.agent("cluster-a", [svc("api", ports=HTTP, inbound=("*",))])
    b = cell.agent("cluster-b", [svc("frontend", outbound=("api",))])
    await a.on_connected()
    await b.on_connected()
    await b.coordinator.resolve_unknown("prod", "api", "frontend")
    a.on_disconnected()
    await cell.handler.on_disconnect("cluster-a")
    assert cell.handler.service.catalog.get("prod", "api") is None
    assert b.coordinator.cache.get("prod", "api") is not None  # never expires
    # b reconnects: its watch is re-established by re-querying what it caches
    b.on_disconnected()
    await cell.handler.on_disconnect("cluster-b")
    await b.on_connected()
    assert cell.handler.service.catalog.watchers("prod", "api") == {"cluster-b"}
    queries = [msg for cluster, msg in cell.sent if cluster == "cluster-b" and isinstance(msg, ServiceQuery)]
    assert len(queries) == 2


async def test_updates_without_a_listener_are_applied() -> None:
    cell = Cell()
    parent = StreamParent(cell.sender("cluster-b"))  # type: ignore[arg-type]
    coordinator = DiscoveryCoordinator(DiscoveryConfig(context("cluster-b")), parent, cell.clock, FakeIds())

    async def none() -> list[ValidService]:
        return []

    handler = AgentDiscovery(coordinator, parent, none)
    await handler.on_message(RemoteServiceUpdate((announcement("api"),)))
    assert coordinator.cache.get("prod", "api") is not None
    assert handler.updates == 1
