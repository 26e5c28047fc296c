"""The discovery coordinator: every cluster's bridge between its services and its parent.

It announces local services, keeps the parent's copy of them in sync, and resolves Unknown
dependencies through the parent with a timeout (5 s), falling back to the never-expiring
:class:`~lattice.domain.discovery.cache.RemoteServiceCache`. All decisions are the pure
functions of :mod:`lattice.domain.discovery.resolution`; this class only does the awaiting.

Failure semantics (spec 003, "Failure Handling Matrix"): no method raises because the parent is
slow, gone or confused. Sends report success as a bool; resolution falls back to cached data and
returns NotFound only for a service never seen. Not guaranteed: that concurrent
:meth:`DiscoveryCoordinator.resolve_unknown` calls for one service share a query (each asks).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

import anyio
from attrs import frozen

from lattice.domain.discovery import naming, resolution
from lattice.domain.discovery.cache import (
    DEFAULT_REFRESH_INTERVAL,
    CacheChanges,
    RemoteServiceCache,
    Staleness,
)
from lattice.domain.discovery.catalog import CatalogEntry
from lattice.domain.discovery.graph import ServiceGraph
from lattice.domain.discovery.messages import (
    RemoteServiceUpdate,
    ServiceCatalogSync,
    ServiceKey,
    ServiceQuery,
    ServiceQueryResponse,
)
from lattice.domain.lattice_service import ValidService
from lattice.ports.clock import Clock
from lattice.ports.discovery import ParentChannel, ParentTimeout, ParentUnavailable

log = logging.getLogger(__name__)

DEFAULT_QUERY_TIMEOUT = 5.0


@frozen
class DiscoveryConfig:
    context: naming.ClusterContext
    query_timeout: float = DEFAULT_QUERY_TIMEOUT
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL


@frozen
class DependencyResolution:
    environment: str
    dependency: str
    caller: str
    resolution: resolution.Resolution


class DiscoveryCoordinator:
    def __init__(
        self,
        config: DiscoveryConfig,
        parent: ParentChannel | None,
        clock: Clock,
        new_query_id: Callable[[], str],
        cache: RemoteServiceCache | None = None,
    ) -> None:
        self._config = config
        self._parent = parent
        self._clock = clock
        self._new_query_id = new_query_id
        self._cache = cache if cache is not None else RemoteServiceCache(config.refresh_interval)
        self._connected = parent is not None
        self._callers: dict[ServiceKey, set[str]] = {}

    @property
    def cache(self) -> RemoteServiceCache:
        return self._cache

    @property
    def parent_connected(self) -> bool:
        return self._connected

    def on_parent_connected(self) -> None:
        self._connected = self._parent is not None
        log.info("parent connected")

    def on_parent_disconnected(self) -> None:
        """Cached data stays usable; only its staleness grows."""
        self._connected = False
        log.info("parent disconnected; cached remote services remain available")

    # ------------------------------------------------------------------ announcing

    async def announce_service(self, service: ValidService) -> bool:
        """Tell the parent about a created or updated service. False if it could not be sent."""
        return await self._send(
            lambda parent: parent.announce(naming.announcement_for(service, self._config.context)),
            f"announce {service.environment}/{service.name}",
        )

    async def announce_deletion(self, environment: str, name: str) -> bool:
        return await self._send(
            lambda parent: parent.announce(naming.deletion_for(environment, name, self._config.context)),
            f"announce deletion of {environment}/{name}",
        )

    async def sync_catalog(self, services: Iterable[ValidService], *, full_sync: bool = True) -> bool:
        """Send every local service (on connect, reconnect and every refresh interval)."""
        ctx = self._config.context
        winners = [n.service for n in ServiceGraph.build(services).local() if n.service is not None]
        sync = ServiceCatalogSync(
            services=tuple(naming.announcement_for(s, ctx) for s in winners),
            full_sync=full_sync,
            cluster_name=ctx.cluster_name,
        )
        return await self._send(lambda parent: parent.sync(sync), "catalog sync")

    async def _send(self, action: Callable[[ParentChannel], Awaitable[None]], what: str) -> bool:
        parent = self._parent
        if parent is None or not self._connected:
            return False
        try:
            with anyio.fail_after(self._config.query_timeout):
                await action(parent)
        except (ParentUnavailable, ParentTimeout, TimeoutError) as exc:
            log.warning("could not %s: %s", what, type(exc).__name__)
            return False
        return True

    # ------------------------------------------------------------------ resolving

    async def resolve_unknown(
        self, environment: str, name: str, requesting_service: str
    ) -> resolution.Resolution:
        """Resolve a dependency no local service provides (see :mod:`...resolution`)."""
        key = (environment, name)
        self._callers.setdefault(key, set()).add(requesting_service)
        now = self._clock.monotonic()
        cached = self._cache.get(environment, name)
        answer: resolution.ParentAnswer = resolution.NotQueried()
        if resolution.should_query_parent(cached, self._connected, now, self._config.refresh_interval):
            answer = await self._ask_parent(environment, name, requesting_service)
            now = self._clock.monotonic()
        decision = resolution.decide(
            environment, name, requesting_service, cached, answer, now, self._config.refresh_interval
        )
        if decision.cache_insert is not None:
            self._cache.insert(decision.cache_insert, now)
        result = decision.resolution
        if not isinstance(result, resolution.NotFound) and result.staleness >= Staleness.VERY_STALE:
            log.warning(
                "using %s cached data for %s/%s (from %s)",
                result.staleness.description,
                environment,
                name,
                result.entry.source_cluster,
            )
        return result

    async def resolve_all(self, services: Iterable[ValidService]) -> list[DependencyResolution]:
        """Resolve every Unknown dependency of the local services, for every caller."""
        out: list[DependencyResolution] = []
        for node in ServiceGraph.build(services).unknown():
            for caller in node.callers:
                result = await self.resolve_unknown(node.environment, node.name, caller)
                out.append(DependencyResolution(node.environment, node.name, caller, result))
        return out

    async def refresh_stale(self) -> int:
        """Re-query cached entries that need a refresh (background task); returns how many."""
        now = self._clock.monotonic()
        count = 0
        for environment, name in self._cache.entries_needing_refresh(now):
            callers = sorted(self._callers.get((environment, name), ())) or [""]
            await self.resolve_unknown(environment, name, callers[0])
            count += 1
        return count

    async def requery_cached(self) -> int:
        """Ask the parent again about every cached service (after a reconnect: the parent dropped
        this cluster's watches with its stream, and a query re-establishes them). Returns how
        many were asked; failures keep the cached data."""
        count = 0
        for environment, name in sorted(self._cache.snapshot()):
            if not self._connected:
                break
            caller = (sorted(self._callers.get((environment, name), ())) or [""])[0]
            answer = await self._ask_parent(environment, name, caller)
            now = self._clock.monotonic()
            decision = resolution.decide(
                environment,
                name,
                caller,
                self._cache.get(environment, name),
                answer,
                now,
                self._config.refresh_interval,
            )
            if decision.cache_insert is not None:
                self._cache.insert(decision.cache_insert, now)
            count += 1
        return count

    async def _ask_parent(
        self, environment: str, name: str, requesting_service: str
    ) -> resolution.ParentAnswer:
        parent = self._parent
        if parent is None:  # pragma: no cover - should_query_parent is False without a parent
            return resolution.NotQueried()
        query = ServiceQuery(
            query_id=self._new_query_id(),
            environment=environment,
            service_name=name,
            requesting_service=requesting_service,
        )
        try:
            with anyio.fail_after(self._config.query_timeout):
                response = await parent.query(query)
        except (ParentTimeout, TimeoutError):
            log.warning("query for %s/%s timed out; using cached data if any", environment, name)
            return resolution.ParentFailed(resolution.QueryFailure.TIMEOUT)
        except ParentUnavailable:
            log.info("parent unavailable for %s/%s; using cached data if any", environment, name)
            return resolution.ParentFailed(resolution.QueryFailure.UNAVAILABLE)
        return self._answer_from(query, response)

    def _answer_from(self, query: ServiceQuery, response: ServiceQueryResponse) -> resolution.ParentAnswer:
        if response.query_id != query.query_id:
            log.warning("discarding a response for query %s (expected %s)", response.query_id, query.query_id)
            return resolution.ParentFailed(resolution.QueryFailure.INVALID_RESPONSE)
        if not response.found:
            return resolution.ParentNotFound(response.error_message)
        service = response.service
        if service is None or service.key != query.key or service.deleted or not service.source_cluster:
            log.warning("discarding a malformed response for %s/%s", query.environment, query.service_name)
            return resolution.ParentFailed(resolution.QueryFailure.INVALID_RESPONSE)
        return resolution.ParentFound(CatalogEntry.from_announcement(service, self._clock.now()))

    # ------------------------------------------------------------------ pushes

    def handle_remote_update(self, update: RemoteServiceUpdate) -> CacheChanges:
        """Apply a RemoteServiceUpdate from the parent to the cache."""
        return self._cache.apply_update(update, self._clock.monotonic(), self._clock.now())
