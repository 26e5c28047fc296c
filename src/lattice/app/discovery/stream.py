"""Discovery over the agent stream: the handlers the gRPC adapters call, on both ends.

Cell side, :class:`CatalogStreamHandler` (a :class:`~lattice.ports.discovery.CellDiscoveryHandler`
for :class:`~lattice.adapters.agent_hub.AgentHub`): every discovery message of an agent goes to
the cell's :class:`CatalogService` under the stream's authenticated cluster name, and the answers
and pushes it produces are returned for the hub to deliver; a stream's end drops the cluster's
services and watches.

Agent side, :class:`StreamParent` is the :class:`~lattice.ports.discovery.ParentChannel` over
the agent's stream (queries correlated by ``query_id``, answered within ``query_timeout`` or
:class:`~lattice.ports.discovery.ParentTimeout`; no stream -> ``ParentUnavailable``), and
:class:`AgentDiscovery` (an :class:`~lattice.ports.discovery.AgentDiscoveryHandler` for
:class:`~lattice.adapters.agent_client.AgentRunner`) drives the coordinator from the stream's
events: on every (re)connect a full catalog sync of the local services and a re-query of every
cached remote service (which re-establishes the parent's watches); on disconnect every waiting
query fails at once; a RemoteServiceUpdate goes into the cache and ``on_changes`` is told.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Protocol

import anyio

from lattice.app.discovery.catalog_service import CatalogService
from lattice.app.discovery.coordinator import DEFAULT_QUERY_TIMEOUT, DiscoveryCoordinator
from lattice.app.discovery.correlator import QueryCorrelator
from lattice.domain.discovery.cache import CacheChanges
from lattice.domain.discovery.messages import (
    AgentDiscoveryMessage,
    CellDiscoveryMessage,
    RemoteServiceUpdate,
    ServiceAnnouncement,
    ServiceCatalogSync,
    ServiceQuery,
    ServiceQueryResponse,
)
from lattice.domain.lattice_service import ValidService
from lattice.ports.discovery import Addressed, ParentTimeout, ParentUnavailable

log = logging.getLogger(__name__)

Send = Callable[[AgentDiscoveryMessage], Awaitable[None]]


class CatalogStreamHandler:
    """Implements :class:`lattice.ports.discovery.CellDiscoveryHandler`."""

    def __init__(self, service: CatalogService) -> None:
        self.service = service

    async def refresh(
        self, connected: Iterable[str], push: Callable[[str, CellDiscoveryMessage], Awaitable[bool]]
    ) -> int:
        """One round of the periodic refresh: push to every connected cluster what it depends on
        (incremental, so a service whose owner is merely disconnected stays in the child's cache).
        Returns how many pushes were delivered."""
        delivered = 0
        for cluster in sorted(connected):
            outgoing = self.service.refresh(cluster)
            if outgoing is not None and await push(outgoing.cluster, outgoing.message):
                delivered += 1
        return delivered

    async def on_message(self, cluster: str, message: AgentDiscoveryMessage) -> list[Addressed]:
        return [(o.cluster, o.message) for o in self.service.handle_agent_message(cluster, message)]

    async def on_disconnect(self, cluster: str) -> None:
        self.service.on_disconnect(cluster)


class StopSignal(Protocol):
    """An ``asyncio.Event`` or an ``anyio.Event``."""

    def is_set(self) -> bool: ...

    async def wait(self) -> object: ...


async def every(interval: float, action: Callable[[], Awaitable[object]], stop: StopSignal) -> None:
    """Run ``action`` every ``interval`` seconds until ``stop`` is set; a failing round is logged
    and the next one runs as planned."""
    while True:
        with anyio.move_on_after(interval):
            await stop.wait()
        if stop.is_set():
            return
        try:
            await action()
        except Exception:
            log.exception("periodic discovery task failed; retrying in %.1f s", interval)


class StreamParent:
    """Implements :class:`lattice.ports.discovery.ParentChannel` over a stream's ``send``."""

    def __init__(self, send: Send, query_timeout: float = DEFAULT_QUERY_TIMEOUT) -> None:
        self._send = send
        self._timeout = query_timeout
        self._correlator = QueryCorrelator(self._send_query)
        self.connected = False

    @property
    def pending(self) -> int:
        return self._correlator.pending

    async def _send_query(self, query: ServiceQuery) -> None:
        await self._checked_send(query)

    async def _checked_send(self, message: AgentDiscoveryMessage) -> None:
        if not self.connected:
            raise ParentUnavailable("not connected to the parent")
        await self._send(message)

    async def query(self, query: ServiceQuery) -> ServiceQueryResponse:
        try:
            with anyio.fail_after(self._timeout):
                return await self._correlator.query(query)
        except TimeoutError:
            raise ParentTimeout(f"no answer to query {query.query_id} within {self._timeout} s") from None

    async def announce(self, announcement: ServiceAnnouncement) -> None:
        await self._checked_send(announcement)

    async def sync(self, sync: ServiceCatalogSync) -> None:
        await self._checked_send(sync)

    def on_connected(self) -> None:
        self.connected = True

    def on_disconnected(self) -> int:
        """Every waiting query fails with ParentUnavailable; returns how many."""
        self.connected = False
        return self._correlator.fail_all()

    def on_response(self, response: ServiceQueryResponse) -> bool:
        delivered = self._correlator.on_response(response)
        if not delivered:
            log.debug("late or unknown answer to query %s; dropped", response.query_id)
        return delivered


class AgentDiscovery:
    """Implements :class:`lattice.ports.discovery.AgentDiscoveryHandler`."""

    def __init__(
        self,
        coordinator: DiscoveryCoordinator,
        parent: StreamParent,
        local_services: Callable[[], Awaitable[Sequence[ValidService]]],
        on_changes: Callable[[CacheChanges], Awaitable[None]] | None = None,
    ) -> None:
        self.coordinator = coordinator
        self.parent = parent
        self._local_services = local_services
        self._on_changes = on_changes
        self.syncs = 0
        """Resynchronisations completed (one per established stream)."""
        self.updates = 0
        """RemoteServiceUpdates applied."""
        coordinator.on_parent_disconnected()

    async def on_connected(self) -> None:
        self.parent.on_connected()
        self.coordinator.on_parent_connected()
        synced = await self.coordinator.sync_catalog(await self._local_services())
        asked = await self.coordinator.requery_cached()
        log.info("resynchronised with the parent (catalog sent: %s, re-queried %d)", synced, asked)
        self.syncs += 1

    async def periodic(self) -> bool:
        """One round of the periodic reconciliation (every 5 minutes): a full catalog sync and a
        refresh of stale cached entries. False (and nothing sent) without a stream."""
        if not self.parent.connected:
            return False
        synced = await self.coordinator.sync_catalog(await self._local_services())
        await self.coordinator.refresh_stale()
        return synced

    def on_disconnected(self) -> None:
        self.coordinator.on_parent_disconnected()
        failed = self.parent.on_disconnected()
        if failed:
            log.info("%d queries to the parent failed: the stream ended", failed)

    async def on_message(self, message: CellDiscoveryMessage) -> None:
        if isinstance(message, ServiceQueryResponse):
            self.parent.on_response(message)
            return
        await self._apply(message)

    async def _apply(self, update: RemoteServiceUpdate) -> None:
        changes = self.coordinator.handle_remote_update(update)
        self.updates += 1
        if self._on_changes is not None:
            await self._on_changes(changes)
