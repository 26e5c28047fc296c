"""The remote service cache every cluster keeps (spec 003, "Remote Service Cache").

**Cached entries never expire and are always served.** Staleness - how long ago an entry was
last confirmed by the parent, against a target refresh interval (5 minutes) - exists for
observability and for choosing what to refresh first, never for refusing an answer: stale data
is better than no data when the parent is unreachable.

=========  ==========================  ====================================
Level      Age (refresh interval = I)  Meaning
=========  ==========================  ====================================
Fresh      < 1 x I   (< 5 min)         normal
Stale      < 5 x I   (5-25 min)        prioritise a refresh
VeryStale  < 10 x I  (25-50 min)       log a warning, emit a metric
Ancient    >= 10 x I (>= 50 min)       log an error, alert
=========  ==========================  ====================================

Time is a monotonic clock reading in seconds, passed in (``now``); a clock that went backwards
counts as age 0. Entries leave the cache only when the parent says the owner *deleted* the
service (a ``deleted`` announcement or a full-sync RemoteServiceUpdate) or on :meth:`remove` /
:meth:`clear`; never because of age, a failed query or a "not found" answer.

Bilateral agreement is computed per caller from the cached ``allowed_callers`` (the parent's
rule), not stored as one flag: two local callers of one remote service can differ.
"""

from __future__ import annotations

import datetime as dt
import enum

from attrs import evolve, frozen

from lattice.domain.discovery.catalog import CatalogEntry
from lattice.domain.discovery.messages import RemoteServiceUpdate, ServiceKey

DEFAULT_REFRESH_INTERVAL = 300.0
"""Target refresh interval in seconds: how often we *want* fresh data, not an expiry."""


class Staleness(enum.IntEnum):
    FRESH = 0
    STALE = 1
    VERY_STALE = 2
    ANCIENT = 3

    @classmethod
    def from_age(cls, age: float, refresh_interval: float) -> Staleness:
        ratio = age / refresh_interval
        if ratio < 1.0:
            return cls.FRESH
        if ratio < 5.0:
            return cls.STALE
        if ratio < 10.0:
            return cls.VERY_STALE
        return cls.ANCIENT

    @property
    def description(self) -> str:
        return {0: "fresh", 1: "stale", 2: "very stale", 3: "ancient"}[self.value]


@frozen
class CachedRemoteService:
    entry: CatalogEntry
    cached_at: float  # monotonic seconds of the last confirmation by the parent

    def age(self, now: float) -> float:
        return max(0.0, now - self.cached_at)

    def staleness(self, now: float, refresh_interval: float = DEFAULT_REFRESH_INTERVAL) -> Staleness:
        return Staleness.from_age(self.age(now), refresh_interval)

    def needs_refresh(self, now: float, refresh_interval: float = DEFAULT_REFRESH_INTERVAL) -> bool:
        """Worth asking the parent again; the entry stays usable either way."""
        return self.staleness(now, refresh_interval) is not Staleness.FRESH


@frozen
class StalenessStats:
    fresh: int = 0
    stale: int = 0
    very_stale: int = 0
    ancient: int = 0

    @property
    def total(self) -> int:
        return self.fresh + self.stale + self.very_stale + self.ancient


@frozen
class CacheChanges:
    """What applying a RemoteServiceUpdate did (for logs and for requeueing dependants)."""

    updated: tuple[ServiceKey, ...] = ()
    removed: tuple[ServiceKey, ...] = ()


class RemoteServiceCache:
    """``(environment, name) -> CachedRemoteService``; mutable, no I/O, time passed in."""

    __slots__ = ("_cache", "refresh_interval")

    def __init__(self, refresh_interval: float = DEFAULT_REFRESH_INTERVAL) -> None:
        if refresh_interval <= 0:
            raise ValueError("refresh_interval must be positive")
        self.refresh_interval = refresh_interval
        self._cache: dict[ServiceKey, CachedRemoteService] = {}

    def get(self, environment: str, name: str) -> CachedRemoteService | None:
        """The cached entry whatever its age (see :meth:`CachedRemoteService.staleness`)."""
        return self._cache.get((environment, name))

    def staleness_of(self, cached: CachedRemoteService, now: float) -> Staleness:
        return cached.staleness(now, self.refresh_interval)

    def insert(self, entry: CatalogEntry, now: float) -> None:
        self._cache[(entry.environment, entry.name)] = CachedRemoteService(entry, now)

    def mark_refreshed(self, environment: str, name: str, now: float) -> None:
        key = (environment, name)
        cached = self._cache.get(key)
        if cached is not None:
            self._cache[key] = evolve(cached, cached_at=now)

    def remove(self, environment: str, name: str) -> None:
        """Only when the service is known to be gone - never because it is old."""
        self._cache.pop((environment, name), None)

    def clear(self) -> None:
        self._cache.clear()

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def keys(self) -> list[ServiceKey]:
        return sorted(self._cache)

    def snapshot(self) -> dict[ServiceKey, CatalogEntry]:
        """The cached entries, for planning (a copy: later changes do not show through)."""
        return {key: cached.entry for key, cached in self._cache.items()}

    def entries_needing_refresh(self, now: float) -> list[ServiceKey]:
        """Keys whose staleness is above Fresh, oldest first (then by key)."""
        due = [
            (c.cached_at, k) for k, c in self._cache.items() if c.needs_refresh(now, self.refresh_interval)
        ]
        return [k for _, k in sorted(due)]

    def entries_at_staleness(self, minimum: Staleness, now: float) -> list[tuple[str, str, float]]:
        """``(environment, name, age)`` of entries at or above ``minimum``, sorted by key."""
        return [
            (k[0], k[1], c.age(now))
            for k, c in sorted(self._cache.items())
            if c.staleness(now, self.refresh_interval) >= minimum
        ]

    def staleness_stats(self, now: float) -> StalenessStats:
        counts = [0, 0, 0, 0]
        for cached in self._cache.values():
            counts[cached.staleness(now, self.refresh_interval)] += 1
        return StalenessStats(*counts)

    def apply_update(self, update: RemoteServiceUpdate, now: float, wall_now: dt.datetime) -> CacheChanges:
        """Apply a RemoteServiceUpdate pushed by the parent."""
        updated: list[ServiceKey] = []
        removed: list[ServiceKey] = []
        listed: set[ServiceKey] = set()
        for announcement in update.services:
            key = announcement.key
            if announcement.deleted:
                if self._cache.pop(key, None) is not None:
                    removed.append(key)
                continue
            listed.add(key)
            self.insert(CatalogEntry.from_announcement(announcement, wall_now), now)
            updated.append(key)
        if update.full_sync:
            for key in sorted(set(self._cache) - listed):
                del self._cache[key]
                removed.append(key)
        return CacheChanges(updated=tuple(updated), removed=tuple(removed))
