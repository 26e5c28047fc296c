"""The parent's cross-cluster service catalog (spec 003, "Service Catalog").

:class:`ServiceCatalog` aggregates the services its child clusters announce, keyed by
``(environment, name)``, and answers queries with a bilateral-agreement check. It is a mutable
in-memory index (three dicts, O(1) per operation) whose methods are pure in the sense that
matters here: no I/O, no clock (``now`` is passed in), deterministic. Every mutation returns the
:data:`CatalogEvent` values describing what changed, so callers log, count and push without
re-deriving anything. It is not thread-safe: one event loop owns it.

Rules, with the spec's reasons and this implementation's decisions:

- Registration is versioned: an announcement replaces an entry only with a *higher* version
  (out-of-order updates never overwrite newer data). Equal or lower versions are ignored.
- A service belongs to the cluster that registered it. Another cluster cannot unregister it
  (spec), and - a decision the spec leaves open - cannot take it over either while the owner
  holds it: versions are ``resourceVersion`` values of different etcds and not comparable, and a
  takeover would let one cluster divert another's traffic. The name frees up when the owner
  deletes the service, drops it in a full sync, or disconnects.
- The announcing cluster is the stream's authenticated identity; an announcement claiming a
  different ``source_cluster`` is ignored (an empty one is filled in).
- Deletion by the owner always wins, whatever its version (the agent sends version 0).
- ``remove_cluster`` (agent disconnect) drops the cluster's services *and* its watches; it is not
  a deletion, so it is not pushed to dependants, whose caches keep serving the last data.
- Watches: a cluster that queried ``(env, name)`` - found or not - is told about every later
  registration or deletion of that key (:meth:`ServiceCatalog.pushes`), so a dependency that
  appears after the query still resolves without polling.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable

from attrs import evolve, frozen

from lattice.domain.discovery.messages import (
    ANY_CALLER,
    RemoteServiceUpdate,
    ServiceAnnouncement,
    ServiceCatalogSync,
    ServiceKey,
    ServicePort,
)


@frozen
class CatalogEntry:
    """A service registered in the catalog (and, on children, in the remote cache)."""

    name: str
    environment: str
    source_cluster: str
    ports: tuple[ServicePort, ...]  # one per port name, sorted by name
    allowed_callers: frozenset[str]
    qualified_dns_name: str
    gateway_endpoint: str
    version: int
    last_updated: dt.datetime

    @property
    def key(self) -> ServiceKey:
        return (self.environment, self.name)

    def allows(self, caller: str) -> bool:
        """Bilateral agreement, callee half: the target allows ``caller`` (or everyone)."""
        return ANY_CALLER in self.allowed_callers or caller in self.allowed_callers

    @classmethod
    def from_announcement(
        cls, announcement: ServiceAnnouncement, now: dt.datetime, source_cluster: str | None = None
    ) -> CatalogEntry:
        return cls(
            name=announcement.service_name,
            environment=announcement.environment,
            source_cluster=source_cluster or announcement.source_cluster,
            ports=_normalised_ports(announcement.ports),
            allowed_callers=frozenset(announcement.allowed_callers),
            qualified_dns_name=announcement.qualified_dns_name,
            gateway_endpoint=announcement.gateway_endpoint,
            version=announcement.version,
            last_updated=now,
        )

    def to_announcement(self) -> ServiceAnnouncement:
        return ServiceAnnouncement(
            environment=self.environment,
            service_name=self.name,
            ports=self.ports,
            allowed_callers=tuple(sorted(self.allowed_callers)),
            source_cluster=self.source_cluster,
            qualified_dns_name=self.qualified_dns_name,
            gateway_endpoint=self.gateway_endpoint,
            deleted=False,
            version=self.version,
        )

    def same_content(self, other: CatalogEntry) -> bool:
        """Equal apart from ``version`` and ``last_updated``: nothing a dependant would act on."""
        return evolve(other, version=self.version, last_updated=self.last_updated) == self


def _normalised_ports(ports: tuple[ServicePort, ...]) -> tuple[ServicePort, ...]:
    """One port per name (the last wins), sorted by name; usually already so (fast path)."""
    previous = ""
    for port in ports:  # a plain loop: this runs once per announcement of every full sync
        if port.name <= previous:
            break
        previous = port.name
    else:
        return ports
    by_name = {port.name: port for port in ports}
    return tuple(by_name[name] for name in sorted(by_name))


@frozen
class QueryResult:
    entry: CatalogEntry
    bilateral_agreement: bool


class IgnoreReason(enum.StrEnum):
    STALE_VERSION = "StaleVersion"
    """An entry with an equal or higher version exists."""
    OWNED_BY_OTHER_CLUSTER = "OwnedByOtherCluster"
    """Another cluster holds this (environment, name)."""
    SOURCE_MISMATCH = "SourceMismatch"
    """The announcement (or sync) names a cluster other than the one that sent it."""
    NOT_REGISTERED = "NotRegistered"
    """Deletion of a service the catalog does not hold."""
    INVALID = "Invalid"
    """Empty environment or service name."""


class RemovalCause(enum.StrEnum):
    DELETED = "Deleted"
    """The owner announced the deletion."""
    DROPPED_BY_FULL_SYNC = "DroppedByFullSync"
    """The owner's full sync no longer lists it."""
    CLUSTER_REMOVED = "ClusterRemoved"
    """The owner disconnected (not a deletion: dependants keep their cached copy)."""


@frozen
class Registered:
    entry: CatalogEntry
    previous: CatalogEntry | None


@frozen
class Unregistered:
    entry: CatalogEntry
    cause: RemovalCause


@frozen
class Ignored:
    key: ServiceKey
    cluster: str
    reason: IgnoreReason


CatalogEvent = Registered | Unregistered | Ignored


class ServiceCatalog:
    """``(environment, name) -> CatalogEntry`` with cluster and environment indices and watches."""

    __slots__ = ("_by_cluster", "_by_environment", "_entries", "_watchers", "_watching", "local_cluster")

    def __init__(self, local_cluster: str) -> None:
        self.local_cluster = local_cluster
        self._entries: dict[ServiceKey, CatalogEntry] = {}
        self._by_cluster: dict[str, set[ServiceKey]] = {}
        self._by_environment: dict[str, set[str]] = {}
        self._watchers: dict[ServiceKey, set[str]] = {}
        self._watching: dict[str, set[ServiceKey]] = {}

    # ------------------------------------------------------------------ reads

    def get(self, environment: str, name: str) -> CatalogEntry | None:
        return self._entries.get((environment, name))

    def query(self, environment: str, name: str, requesting_service: str) -> QueryResult | None:
        """The entry and whether it allows ``requesting_service``; None if not registered."""
        entry = self._entries.get((environment, name))
        if entry is None:
            return None
        return QueryResult(entry, entry.allows(requesting_service))

    def list_services(self, environment: str) -> list[CatalogEntry]:
        """Services of one environment, sorted by name."""
        names = self._by_environment.get(environment, ())
        return [self._entries[(environment, name)] for name in sorted(names)]

    def services_of(self, cluster: str) -> list[CatalogEntry]:
        """Services one cluster owns, sorted by key."""
        return [self._entries[key] for key in sorted(self._by_cluster.get(cluster, ()))]

    def service_count(self) -> int:
        return len(self._entries)

    def cluster_count(self) -> int:
        return len(self._by_cluster)

    def clusters(self) -> list[str]:
        return sorted(self._by_cluster)

    def environments(self) -> list[str]:
        return sorted(self._by_environment)

    def watchers(self, environment: str, name: str) -> frozenset[str]:
        return frozenset(self._watchers.get((environment, name), ()))

    def watched_by(self, cluster: str) -> frozenset[ServiceKey]:
        return frozenset(self._watching.get(cluster, ()))

    # ------------------------------------------------------------------ writes

    def register(self, entry: CatalogEntry) -> CatalogEvent:
        """Add or update ``entry`` if its version is newer and its cluster may hold the name."""
        key = (entry.environment, entry.name)
        if not entry.environment or not entry.name or not entry.source_cluster:
            return Ignored(key, entry.source_cluster, IgnoreReason.INVALID)
        existing = self._entries.get(key)
        if existing is not None:
            if existing.source_cluster != entry.source_cluster:
                return Ignored(key, entry.source_cluster, IgnoreReason.OWNED_BY_OTHER_CLUSTER)
            if existing.version >= entry.version:
                return Ignored(key, entry.source_cluster, IgnoreReason.STALE_VERSION)
        else:
            owned = self._by_cluster.get(entry.source_cluster)
            if owned is None:
                owned = self._by_cluster[entry.source_cluster] = set()
            owned.add(key)
            names = self._by_environment.get(entry.environment)
            if names is None:
                names = self._by_environment[entry.environment] = set()
            names.add(entry.name)
        self._entries[key] = entry
        return Registered(entry, existing)

    def unregister(
        self, environment: str, name: str, source_cluster: str, cause: RemovalCause = RemovalCause.DELETED
    ) -> CatalogEvent:
        """Remove a service, but only for the cluster that owns it."""
        key = (environment, name)
        existing = self._entries.get(key)
        if existing is None:
            return Ignored(key, source_cluster, IgnoreReason.NOT_REGISTERED)
        if existing.source_cluster != source_cluster:
            return Ignored(key, source_cluster, IgnoreReason.OWNED_BY_OTHER_CLUSTER)
        self._drop(key, existing)
        return Unregistered(existing, cause)

    def remove_cluster(self, cluster: str) -> list[CatalogEvent]:
        """Forget everything a (disconnected) cluster announced and every watch it held."""
        keys = self._by_cluster.get(cluster, set())
        events: list[CatalogEvent] = []
        for key in sorted(keys):
            entry = self._entries[key]
            self._drop(key, entry)
            events.append(Unregistered(entry, RemovalCause.CLUSTER_REMOVED))
        for key in self._watching.pop(cluster, set()):
            watchers = self._watchers[key]
            watchers.discard(cluster)
            if not watchers:
                del self._watchers[key]
        return events

    def apply_announcement(
        self, cluster: str, announcement: ServiceAnnouncement, now: dt.datetime
    ) -> CatalogEvent:
        """One announcement from ``cluster``'s stream: register, or unregister if deleted."""
        key = announcement.key
        if announcement.source_cluster and announcement.source_cluster != cluster:
            return Ignored(key, cluster, IgnoreReason.SOURCE_MISMATCH)
        if announcement.deleted:
            return self.unregister(announcement.environment, announcement.service_name, cluster)
        existing = self._entries.get(key)
        if (
            existing is not None
            and existing.source_cluster == cluster
            and existing.version >= announcement.version
        ):
            # The common case of a periodic full sync: decided without building an entry.
            return Ignored(key, cluster, IgnoreReason.STALE_VERSION)
        return self.register(CatalogEntry.from_announcement(announcement, now, cluster))

    def apply_sync(self, cluster: str, sync: ServiceCatalogSync, now: dt.datetime) -> list[CatalogEvent]:
        """A ServiceCatalogSync from ``cluster``; with ``full_sync`` its other services go."""
        if sync.cluster_name and sync.cluster_name != cluster:
            return [Ignored(("", ""), cluster, IgnoreReason.SOURCE_MISMATCH)]
        # A key listed twice counts once: the last announcement wins.
        latest = {a.key: a for a in sync.services}
        events = [self.apply_announcement(cluster, a, now) for a in latest.values()]
        if sync.full_sync:
            listed = {key for key, a in latest.items() if not a.deleted}
            owned = self._by_cluster.get(cluster, set())
            for key in sorted(owned - listed):
                events.append(self.unregister(key[0], key[1], cluster, RemovalCause.DROPPED_BY_FULL_SYNC))
        return events

    def watch(self, cluster: str, environment: str, name: str) -> None:
        """Remember that ``cluster`` depends on ``(environment, name)`` (it queried it)."""
        key = (environment, name)
        watchers = self._watchers.get(key)
        if watchers is None:
            watchers = self._watchers[key] = set()
        watchers.add(cluster)
        watching = self._watching.get(cluster)
        if watching is None:
            watching = self._watching[cluster] = set()
        watching.add(key)

    # ------------------------------------------------------------------ pushes

    def pushes(self, events: Iterable[CatalogEvent]) -> list[tuple[str, RemoteServiceUpdate]]:
        """RemoteServiceUpdates for the watchers of what ``events`` changed, one per cluster.

        Registrations that change content and deletions (explicit or by full sync) are pushed;
        disconnect removals are not (caches keep serving them). The owning cluster is never
        told about its own service. Deterministic: clusters and services sorted.
        """
        per_cluster: dict[str, dict[ServiceKey, ServiceAnnouncement]] = {}
        for event in events:
            if isinstance(event, Registered):
                if event.previous is not None and event.previous.same_content(event.entry):
                    continue
                announcement = event.entry.to_announcement()
            elif isinstance(event, Unregistered) and event.cause is not RemovalCause.CLUSTER_REMOVED:
                announcement = deletion_of(event.entry)
            else:
                continue
            key = (event.entry.environment, event.entry.name)
            for cluster in self._watchers.get(key, ()):
                if cluster != event.entry.source_cluster:
                    per_cluster.setdefault(cluster, {})[key] = announcement
        return [
            (cluster, RemoteServiceUpdate(services=tuple(v for _, v in sorted(items.items()))))
            for cluster, items in sorted(per_cluster.items())
        ]

    def refresh_for(self, cluster: str) -> RemoteServiceUpdate:
        """Periodic refresh: every service ``cluster`` watches that is registered (incremental).

        Never ``full_sync=True``: a watched service whose owner is briefly disconnected must not
        vanish from the child's cache.
        """
        keys = sorted(self._watching.get(cluster, ()))
        return RemoteServiceUpdate(
            services=tuple(
                self._entries[k].to_announcement()
                for k in keys
                if k in self._entries and self._entries[k].source_cluster != cluster
            )
        )

    # ------------------------------------------------------------------ internals

    def _drop(self, key: ServiceKey, entry: CatalogEntry) -> None:
        del self._entries[key]
        owned = self._by_cluster[entry.source_cluster]
        owned.discard(key)
        if not owned:
            del self._by_cluster[entry.source_cluster]
        names = self._by_environment[entry.environment]
        names.discard(entry.name)
        if not names:
            del self._by_environment[entry.environment]


def deletion_of(entry: CatalogEntry) -> ServiceAnnouncement:
    """The announcement that tells a dependant ``entry`` was deleted by its owner."""
    return ServiceAnnouncement(
        environment=entry.environment,
        service_name=entry.name,
        source_cluster=entry.source_cluster,
        deleted=True,
        version=entry.version,
    )
