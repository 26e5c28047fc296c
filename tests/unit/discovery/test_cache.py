from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain.discovery.cache import (
    DEFAULT_REFRESH_INTERVAL,
    CachedRemoteService,
    RemoteServiceCache,
    Staleness,
    StalenessStats,
)
from lattice.domain.discovery.messages import RemoteServiceUpdate
from tests.unit.discovery.factories import T0, announcement, entry

INTERVAL = DEFAULT_REFRESH_INTERVAL


@pytest.mark.parametrize(
    ("age", "expected"),
    [
        pytest.param(0.0, Staleness.FRESH, id="new"),
        pytest.param(299.9, Staleness.FRESH, id="just-under-5min"),
        pytest.param(300.0, Staleness.STALE, id="5min"),
        pytest.param(1499.0, Staleness.STALE, id="under-25min"),
        pytest.param(1500.0, Staleness.VERY_STALE, id="25min"),
        pytest.param(2999.0, Staleness.VERY_STALE, id="under-50min"),
        pytest.param(3000.0, Staleness.ANCIENT, id="50min"),
        pytest.param(86400.0 * 365, Staleness.ANCIENT, id="a-year"),
    ],
)
def test_staleness_levels(age: float, expected: Staleness) -> None:
    assert Staleness.from_age(age, INTERVAL) is expected
    assert CachedRemoteService(entry("api"), cached_at=1000.0).staleness(1000.0 + age) is expected


def test_levels_are_ordered_and_described() -> None:
    assert Staleness.FRESH < Staleness.STALE < Staleness.VERY_STALE < Staleness.ANCIENT
    assert [s.description for s in Staleness] == ["fresh", "stale", "very stale", "ancient"]


def test_cached_data_is_served_at_any_age() -> None:
    cache = RemoteServiceCache()
    cache.insert(entry("api"), now=0.0)
    cached = cache.get("prod", "api")
    assert cached is not None
    assert cached.staleness(10**9) is Staleness.ANCIENT
    assert cache.get("prod", "api") == cached  # still there, still the same
    assert cache.staleness_of(cached, 10.0) is Staleness.FRESH


def test_clock_going_backwards_counts_as_fresh() -> None:
    cached = CachedRemoteService(entry("api"), cached_at=100.0)
    assert cached.age(50.0) == 0.0
    assert not cached.needs_refresh(50.0)


def test_refresh_bookkeeping() -> None:
    cache = RemoteServiceCache(refresh_interval=10.0)
    cache.insert(entry("a"), now=0.0)
    cache.insert(entry("b"), now=5.0)
    cache.insert(entry("c"), now=100.0)
    assert cache.entries_needing_refresh(now=101.0) == [("prod", "a"), ("prod", "b")]
    cache.mark_refreshed("prod", "a", now=101.0)
    cache.mark_refreshed("prod", "missing", now=101.0)
    assert cache.entries_needing_refresh(now=101.0) == [("prod", "b")]
    assert cache.entries_at_staleness(Staleness.VERY_STALE, now=105.0) == [("prod", "b", 100.0)]
    assert cache.staleness_stats(now=105.0) == StalenessStats(fresh=2, stale=0, very_stale=0, ancient=1)
    assert cache.staleness_stats(now=1000.0).total == 3


def test_remove_and_clear_are_explicit() -> None:
    cache = RemoteServiceCache()
    cache.insert(entry("a"), 0.0)
    cache.insert(entry("b"), 0.0)
    assert ("prod", "a") in cache
    assert cache.keys() == [("prod", "a"), ("prod", "b")]
    cache.remove("prod", "a")
    cache.remove("prod", "a")
    assert len(cache) == 1
    snapshot = cache.snapshot()
    cache.clear()
    assert len(cache) == 0
    assert list(snapshot) == [("prod", "b")]


def test_refresh_interval_must_be_positive() -> None:
    with pytest.raises(ValueError, match="positive"):
        RemoteServiceCache(refresh_interval=0)


def test_incremental_update_inserts_and_applies_deletions() -> None:
    cache = RemoteServiceCache()
    cache.insert(entry("old"), 0.0)
    cache.insert(entry("gone"), 0.0)
    update = RemoteServiceUpdate(
        services=(
            announcement("new"),
            announcement("gone", deleted=True),
            announcement("never", deleted=True),
        )
    )
    changes = cache.apply_update(update, now=50.0, wall_now=T0)
    assert changes.updated == (("prod", "new"),)
    assert changes.removed == (("prod", "gone"),)
    assert cache.keys() == [("prod", "new"), ("prod", "old")]
    new = cache.get("prod", "new")
    assert new is not None
    assert new.cached_at == 50.0


def test_full_sync_update_replaces_the_cache() -> None:
    cache = RemoteServiceCache()
    cache.insert(entry("old"), 0.0)
    changes = cache.apply_update(
        RemoteServiceUpdate(services=(announcement("new"),), full_sync=True), 1.0, T0
    )
    assert changes.removed == (("prod", "old"),)
    assert cache.keys() == [("prod", "new")]


# A failure path (query timeout, unreachable parent, "not found", a disconnect) never touches
# the cache; only inserts and explicit deletions do. The coordinator tests check the former;
# this checks that time alone never removes anything.
@given(st.lists(st.sampled_from(["a", "b", "c"]), min_size=1), st.lists(st.floats(0, 1e9), max_size=20))
def test_time_never_removes_an_entry(names: list[str], times: list[float]) -> None:
    cache = RemoteServiceCache()
    for name in names:
        cache.insert(entry(name), 0.0)
    keys = cache.keys()
    for now in times:
        cache.entries_needing_refresh(now)
        cache.staleness_stats(now)
        cache.entries_at_staleness(Staleness.ANCIENT, now)
        assert cache.keys() == keys
        assert all(cache.get(*k) is not None for k in keys)
