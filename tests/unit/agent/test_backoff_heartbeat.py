"""Reconnect backoff bounds, heartbeat jitter and heartbeat-loss detection (pure, injected time)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import heartbeat
from lattice.domain.backoff import Backoff, jittered

rands = st.floats(min_value=0.0, max_value=1.0, exclude_max=True)
policies = st.builds(
    Backoff,
    initial=st.floats(min_value=0.01, max_value=5.0),
    maximum=st.floats(min_value=5.0, max_value=300.0),
    multiplier=st.floats(min_value=1.0, max_value=4.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
)


@given(policy=policies, attempt=st.integers(min_value=0, max_value=10_000), rand=rands)
def test_backoff_delay_stays_within_its_jitter_window_and_the_cap(policy, attempt, rand):
    ceiling = policy.ceiling(attempt)
    delay = policy.delay(attempt, rand)
    assert ceiling <= policy.maximum
    assert ceiling * (1 - policy.jitter) - 1e-9 <= delay <= ceiling + 1e-9
    assert delay >= 0


@given(policy=policies, attempt=st.integers(min_value=0, max_value=200))
def test_backoff_ceiling_never_shrinks(policy, attempt):
    assert policy.ceiling(attempt + 1) >= policy.ceiling(attempt) - 1e-12


def test_backoff_schedule_doubles_up_to_the_cap():
    policy = Backoff(initial=0.5, maximum=30.0, multiplier=2.0, jitter=0.0)
    assert [policy.delay(n, 0.0) for n in range(8)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert policy.delay(10**9, 0.5) == 30.0


def test_full_jitter_spreads_over_the_whole_window():
    policy = Backoff(initial=1.0, maximum=8.0, jitter=1.0)
    assert policy.delay(3, 0.0) == 0.0
    assert math.isclose(policy.delay(3, 0.999999), 8.0, rel_tol=1e-5)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0}, "initial"),
        ({"maximum": -1}, "maximum"),
        ({"multiplier": 0.5}, "multiplier"),
        ({"jitter": 1.5}, "jitter"),
    ],
)
def test_backoff_rejects_nonsense(kwargs, message):
    with pytest.raises(ValueError, match=message):
        Backoff(**kwargs)


def test_backoff_rejects_bad_inputs():
    with pytest.raises(ValueError, match="attempt"):
        Backoff().ceiling(-1)
    with pytest.raises(ValueError, match="rand"):
        Backoff().delay(0, 1.0)


@given(
    interval=st.floats(min_value=0.01, max_value=3600),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    rand=rands,
)
def test_heartbeat_jitter_bounds(interval, jitter, rand):
    value = jittered(interval, jitter, rand)
    assert interval * (1 - jitter) - 1e-9 <= value <= interval * (1 + jitter) + 1e-9


def test_jittered_rejects_bad_inputs():
    with pytest.raises(ValueError, match="interval"):
        jittered(0, 0.1, 0.5)
    with pytest.raises(ValueError, match="jitter"):
        jittered(1, 2, 0.5)
    with pytest.raises(ValueError, match="rand"):
        jittered(1, 0.1, -0.1)


POLICY = heartbeat.HeartbeatPolicy(interval=10.0, jitter=0.2, max_missed=3)


@pytest.mark.parametrize(
    ("elapsed", "missed", "expected"),
    [
        (-5.0, 0, heartbeat.Liveness.ALIVE),  # clock read before the heartbeat was stored
        (0.0, 0, heartbeat.Liveness.ALIVE),
        (12.0, 1, heartbeat.Liveness.LATE),  # exactly one max gap (10 * 1.2)
        (11.9, 0, heartbeat.Liveness.ALIVE),
        (35.9, 2, heartbeat.Liveness.LATE),
        (36.0, 3, heartbeat.Liveness.LOST),
        (1000.0, 83, heartbeat.Liveness.LOST),
    ],
    ids=str,
)
def test_liveness_from_injected_time(elapsed, missed, expected):
    assert heartbeat.missed_heartbeats(POLICY, 100.0, 100.0 + elapsed) == missed
    assert heartbeat.liveness(POLICY, 100.0, 100.0 + elapsed) is expected


@given(
    last_seen=st.floats(min_value=0, max_value=1e6),
    elapsed=st.floats(min_value=0, max_value=1e5),
    max_missed=st.integers(min_value=1, max_value=10),
)
def test_lost_exactly_when_silent_longer_than_lost_after(last_seen, elapsed, max_missed):
    policy = heartbeat.HeartbeatPolicy(interval=5.0, jitter=0.1, max_missed=max_missed)
    now = last_seen + elapsed
    lost = heartbeat.liveness(policy, last_seen, now) is heartbeat.Liveness.LOST
    margin = 1e-6 * max(1.0, now)
    if now - last_seen > policy.lost_after + margin:
        assert lost
    if now - last_seen < policy.lost_after - margin:
        assert not lost


def test_newly_lost_reports_each_loss_once_in_name_order():
    seen = {"b": 0.0, "a": 0.0, "fresh": 99.0, "gone": 0.0}
    assert heartbeat.newly_lost(POLICY, seen, frozenset({"gone"}), 100.0) == ("a", "b")
    assert heartbeat.newly_lost(POLICY, seen, frozenset(), 1.0) == ()


def test_heartbeat_policy_derived_windows():
    assert POLICY.max_gap == pytest.approx(12.0)
    assert POLICY.lost_after == pytest.approx(36.0)
    with pytest.raises(ValueError, match="max_missed"):
        heartbeat.HeartbeatPolicy(max_missed=0)
