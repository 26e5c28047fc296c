"""The discovery coordinator's decisions, as pure functions (spec 003, ``resolve_unknown``).

Resolving an Unknown dependency:

1. Look in the cache: it answers whenever we have *ever* seen the service.
2. Query the parent when the service was never seen, or when the cached entry needs a refresh
   (older than the refresh interval) - and only while the parent is connected.
3. Parent says found: cache it (fresh) and answer from it.
   Parent says not found: keep serving a cached copy if there is one (the removal may be
   temporary); otherwise NotFound.
   The query failed (timeout, disconnect): serve the cached copy, whatever its age.
4. NotFound only for a service never seen.

The answer is :class:`Resolved` when the target allows the caller (bilateral agreement), or
:class:`NotAllowed` when it exists but does not - in which case nothing that would let traffic
through is generated.
"""

from __future__ import annotations

import enum

from attrs import frozen

from lattice.domain.discovery.cache import CachedRemoteService, Staleness
from lattice.domain.discovery.catalog import CatalogEntry


class Source(enum.StrEnum):
    PARENT = "Parent"
    CACHE = "Cache"


@frozen
class Resolved:
    entry: CatalogEntry
    source: Source
    staleness: Staleness


@frozen
class NotAllowed:
    """The service exists but does not allow the caller: deny."""

    entry: CatalogEntry
    source: Source
    staleness: Staleness


@frozen
class NotFound:
    environment: str
    service: str


Resolution = Resolved | NotAllowed | NotFound


# What happened when (or whether) the parent was asked.
class QueryFailure(enum.StrEnum):
    TIMEOUT = "Timeout"
    UNAVAILABLE = "Unavailable"
    INVALID_RESPONSE = "InvalidResponse"


@frozen
class ParentFound:
    entry: CatalogEntry


@frozen
class ParentNotFound:
    error_message: str = ""


@frozen
class ParentFailed:
    failure: QueryFailure


@frozen
class NotQueried:
    pass


ParentAnswer = ParentFound | ParentNotFound | ParentFailed | NotQueried


@frozen
class Decision:
    resolution: Resolution
    cache_insert: CatalogEntry | None  # store this (as fresh) in the cache


def should_query_parent(
    cached: CachedRemoteService | None, parent_connected: bool, now: float, refresh_interval: float
) -> bool:
    if not parent_connected:
        return False
    return cached is None or cached.needs_refresh(now, refresh_interval)


def decide(
    environment: str,
    service: str,
    requesting_service: str,
    cached: CachedRemoteService | None,
    answer: ParentAnswer,
    now: float,
    refresh_interval: float,
) -> Decision:
    if isinstance(answer, ParentFound):
        return Decision(
            _judge(answer.entry, requesting_service, Source.PARENT, Staleness.FRESH), answer.entry
        )
    if cached is None:
        return Decision(NotFound(environment, service), None)
    staleness = cached.staleness(now, refresh_interval)
    return Decision(_judge(cached.entry, requesting_service, Source.CACHE, staleness), None)


def _judge(entry: CatalogEntry, caller: str, source: Source, staleness: Staleness) -> Resolution:
    if entry.allows(caller):
        return Resolved(entry, source, staleness)
    return NotAllowed(entry, source, staleness)
