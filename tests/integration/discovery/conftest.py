"""A real cell hub with a real ServiceCatalog and real agents with discovery, over mutual TLS."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import attrs
import pytest

from lattice.adapters import agent_client, agent_hub, agent_local, tls
from lattice.adapters.clock import SystemClock
from lattice.app.discovery.catalog_service import CatalogService
from lattice.app.discovery.coordinator import DiscoveryConfig, DiscoveryCoordinator
from lattice.app.discovery.stream import AgentDiscovery, CatalogStreamHandler, StreamParent
from lattice.domain import agent
from lattice.domain.backoff import Backoff
from lattice.domain.discovery.cache import CacheChanges
from lattice.domain.discovery.catalog import ServiceCatalog
from lattice.domain.discovery.naming import ClusterContext
from lattice.domain.heartbeat import HeartbeatPolicy
from lattice.domain.lattice_service import ValidService
from lattice.ports.discovery import CellDiscoveryHandler
from lattice.testing import agents as agent_doubles
from tests.integration.agent.conftest import Pki

BASE_DOMAIN = "lattice.example.com"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module")
def cell_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("discovery-pki"))


async def wait_until(predicate: Callable[[], bool], within: float = 10.0, what: str = "") -> None:
    deadline = time.monotonic() + within
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within} s waiting for {what or predicate}")
        await asyncio.sleep(0.02)


@attrs.define
class DiscoveryCell:
    hub: agent_hub.AgentHub
    server: agent_hub.CellGrpcServer
    service: CatalogService

    @property
    def port(self) -> int:
        return self.server.port

    @property
    def catalog(self) -> ServiceCatalog:
        return self.service.catalog


@contextlib.asynccontextmanager
async def discovery_cell(
    pki: Pki, handler: Callable[[CatalogService], CellDiscoveryHandler] = CatalogStreamHandler
) -> AsyncIterator[DiscoveryCell]:
    service = CatalogService(ServiceCatalog("cell"), SystemClock())
    hub = agent_hub.AgentHub(
        sink=agent_doubles.InMemoryAgentStatusSink(),
        heartbeat_policy=HeartbeatPolicy(interval=0.5),
        discovery=handler(service),
    )
    server = agent_hub.CellGrpcServer(hub, pki.server_context())
    await server.start()
    try:
        yield DiscoveryCell(hub=hub, server=server, service=service)
    finally:
        await server.stop()


@attrs.define
class DiscoveryAgent:
    cluster: str
    context: ClusterContext
    runner: agent_client.AgentRunner
    discovery: AgentDiscovery
    local: list[ValidService]
    changes: list[CacheChanges]

    @property
    def coordinator(self) -> DiscoveryCoordinator:
        return self.discovery.coordinator

    @property
    def parent(self) -> StreamParent:
        return self.discovery.parent


@contextlib.asynccontextmanager
async def discovery_agent(
    pki: Pki,
    cluster: str,
    port: int,
    local: list[ValidService],
    *,
    refresh_interval: float = 300.0,
    query_timeout: float = 5.0,
    local_services: Callable[[], Awaitable[list[ValidService]]] | None = None,
    on_changes: Callable[[CacheChanges], Awaitable[None]] | None = None,
) -> AsyncIterator[DiscoveryAgent]:
    ctx = ClusterContext(cluster_name=cluster, base_domain=BASE_DOMAIN)
    link = agent_client.ParentLink(cluster)
    parent = StreamParent(link.send_discovery, query_timeout=query_timeout)
    coordinator = DiscoveryCoordinator(
        DiscoveryConfig(ctx, query_timeout=query_timeout, refresh_interval=refresh_interval),
        parent,
        SystemClock(),
        lambda: uuid.uuid4().hex,
    )
    changes: list[CacheChanges] = []

    async def services() -> list[ValidService]:
        return list(local)

    async def record(change: CacheChanges) -> None:
        changes.append(change)
        if on_changes is not None:
            await on_changes(change)

    handler = AgentDiscovery(coordinator, parent, local_services or services, record)
    runner = agent_client.AgentRunner(
        agent_client.AgentSettings(
            cluster_name=cluster,
            host="127.0.0.1",
            port=port,
            agent_version="lattice/test",
            heartbeat=HeartbeatPolicy(interval=0.5, jitter=0.2, max_missed=3),
            backoff=Backoff(initial=0.05, maximum=0.5),
            connect_timeout=5.0,
        ),
        tls.client_context(pki.agent_files(cluster)),
        applier=agent_doubles.RecordingManifestApplier(),
        importer=agent_doubles.RecordingPivotImporter(),
        probe=agent_local.StaticClusterProbe("v1.34.1", agent.ClusterHealth(1, 1)),
        discovery=handler,
        link=link,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield DiscoveryAgent(cluster, ctx, runner, handler, local, changes)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)
