from __future__ import annotations

import pytest

from lattice.domain.discovery.cache import CachedRemoteService, Staleness
from lattice.domain.discovery.resolution import (
    NotAllowed,
    NotFound,
    NotQueried,
    ParentAnswer,
    ParentFailed,
    ParentFound,
    ParentNotFound,
    QueryFailure,
    Resolved,
    Source,
    decide,
    should_query_parent,
)
from tests.unit.discovery.factories import entry

INTERVAL = 300.0
FRESH = CachedRemoteService(entry("api", allowed=("frontend",)), cached_at=1000.0)


@pytest.mark.parametrize(
    ("cached", "connected", "now", "expected"),
    [
        pytest.param(None, True, 0.0, True, id="never-seen-connected"),
        pytest.param(None, False, 0.0, False, id="never-seen-disconnected"),
        pytest.param(FRESH, True, 1100.0, False, id="fresh"),
        pytest.param(FRESH, True, 1300.0, True, id="stale-connected"),
        pytest.param(FRESH, False, 9999.0, False, id="stale-disconnected"),
    ],
)
def test_when_to_ask_the_parent(
    cached: CachedRemoteService | None, connected: bool, now: float, expected: bool
) -> None:
    assert should_query_parent(cached, connected, now, INTERVAL) is expected


NEW = entry("api", allowed=("frontend",), version=2)


@pytest.mark.parametrize(
    ("cached", "answer", "caller", "expected", "insert"),
    [
        pytest.param(
            None, ParentFound(NEW), "frontend", Resolved(NEW, Source.PARENT, Staleness.FRESH), NEW, id="found"
        ),
        pytest.param(
            None,
            ParentFound(NEW),
            "intruder",
            NotAllowed(NEW, Source.PARENT, Staleness.FRESH),
            NEW,
            id="found-denied",
        ),
        pytest.param(None, ParentNotFound(), "frontend", NotFound("prod", "api"), None, id="never-seen"),
        pytest.param(
            None,
            ParentFailed(QueryFailure.TIMEOUT),
            "frontend",
            NotFound("prod", "api"),
            None,
            id="timeout-never-seen",
        ),
        pytest.param(
            None, NotQueried(), "frontend", NotFound("prod", "api"), None, id="disconnected-never-seen"
        ),
        pytest.param(
            FRESH,
            ParentNotFound(),
            "frontend",
            Resolved(FRESH.entry, Source.CACHE, Staleness.ANCIENT),
            None,
            id="removed-keep-cache",
        ),
        pytest.param(
            FRESH,
            ParentFailed(QueryFailure.UNAVAILABLE),
            "frontend",
            Resolved(FRESH.entry, Source.CACHE, Staleness.ANCIENT),
            None,
            id="unavailable-cache",
        ),
        pytest.param(
            FRESH,
            NotQueried(),
            "intruder",
            NotAllowed(FRESH.entry, Source.CACHE, Staleness.ANCIENT),
            None,
            id="cache-denied",
        ),
        pytest.param(
            FRESH,
            ParentFound(NEW),
            "frontend",
            Resolved(NEW, Source.PARENT, Staleness.FRESH),
            NEW,
            id="refreshed",
        ),
    ],
)
def test_decisions(
    cached: CachedRemoteService | None, answer: ParentAnswer, caller: str, expected: object, insert: object
) -> None:
    decision = decide(
        "prod", "api", caller, cached, answer, now=1000.0 + 100 * INTERVAL, refresh_interval=INTERVAL
    )
    assert decision.resolution == expected
    assert decision.cache_insert == insert
