"""Heartbeat loss detection: pure functions of "last seen" and "now" (monotonic seconds).

Agents send a heartbeat every ``interval`` seconds, jittered by up to ``jitter`` (a fraction),
so the longest legitimate gap between two heartbeats is ``interval * (1 + jitter)``. A heartbeat
counts as missed for every such gap that passed without one; after ``max_missed`` missed
heartbeats the agent is LOST. One missed heartbeat makes it LATE (worth a log line, nothing more).

Not guaranteed: clock sources. Callers must pass a monotonic clock, never wall time.
"""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping

from attrs import field, frozen, validators


class Liveness(enum.Enum):
    ALIVE = "Alive"
    LATE = "Late"
    LOST = "Lost"


@frozen
class HeartbeatPolicy:
    interval: float = field(default=10.0, validator=validators.gt(0))
    jitter: float = field(default=0.2, validator=[validators.ge(0), validators.le(1)])
    max_missed: int = field(default=3, validator=validators.ge(1))

    @property
    def max_gap(self) -> float:
        """Longest gap between two heartbeats of a healthy agent."""
        return self.interval * (1.0 + self.jitter)

    @property
    def lost_after(self) -> float:
        """Seconds of silence after which an agent is LOST."""
        return self.max_gap * self.max_missed


def missed_heartbeats(policy: HeartbeatPolicy, last_seen: float, now: float) -> int:
    """How many heartbeats are overdue (0 when one arrived within the last ``max_gap``)."""
    elapsed = now - last_seen
    if elapsed <= 0:
        return 0
    return math.floor(elapsed / policy.max_gap)


def liveness(policy: HeartbeatPolicy, last_seen: float, now: float) -> Liveness:
    missed = missed_heartbeats(policy, last_seen, now)
    if missed >= policy.max_missed:
        return Liveness.LOST
    if missed >= 1:
        return Liveness.LATE
    return Liveness.ALIVE


def newly_lost(
    policy: HeartbeatPolicy,
    last_seen: Mapping[str, float],
    already_lost: frozenset[str],
    now: float,
) -> tuple[str, ...]:
    """Agents (by cluster name, sorted) that are LOST now and were not already known to be."""
    return tuple(
        sorted(
            name
            for name, seen in last_seen.items()
            if name not in already_lost and liveness(policy, seen, now) is Liveness.LOST
        )
    )
