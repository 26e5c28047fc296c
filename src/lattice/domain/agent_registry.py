"""The cell's registry of agents: what it records, what it resends, when an agent is LOST.

:class:`~lattice.adapters.agent_hub.AgentHub` is the transport (grpclib streams, futures,
send locks). On every event of a stream it calls one of these functions with what it knows of
the cluster (an :class:`AgentRecord`) and the time, stores the record that comes back and does
what the :class:`Step` says: hand a changed status to the status sink, close a stream.

The rules:

* **merge** (:func:`merge_status`) - a report changes only the fields it carries (``None``
  means "not reported"; an empty string is a value). While a stream is attached every event
  also stamps ``last_heartbeat`` with the wall time. The sink is told only when something other
  than ``last_heartbeat`` changed, so heartbeats alone do not turn into status writes;
* **attach** (:func:`attached`) - the agent is CONNECTED and no longer LOST; every command
  queued for its cluster and not yet answered is sent again (:func:`to_resend`), in the order
  it was queued (agents answer a repeated ``command_id`` from memory);
* **heartbeat** (:func:`heartbeat`) - the state is merged; a LOST agent is CONNECTED again;
* **lost** (:func:`lost`, :func:`sweep`) - an attached agent silent for ``policy.lost_after`` seconds
  (:mod:`lattice.domain.heartbeat`) is LOST once, and its stream is closed;
* **end of a stream** (:func:`released`, then :func:`disconnected`) - the agent is no longer
  heard; it is DISCONNECTED unless it is LOST (which says more) or a newer stream attached
  meanwhile;
* **replies** (:func:`match_reply`) - a reply completes its command only if it comes from the
  cluster the command went to and is of the right kind (:func:`lattice.domain.agent.answers`);
* **renewals** (:func:`renewal_refusal`) - at most one certificate renewal per cluster per
  interval.

Times are passed in: ``now`` is monotonic seconds (liveness), ``wall`` an aware datetime (what
the status shows). Not decided here: which cluster a stream belongs to (the client certificate,
:mod:`lattice.domain.agent_identity`) and whether its certificate is revoked
(:func:`lattice.domain.agent_identity.revocation_reason`).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from attrs import asdict, evolve, frozen

from lattice.domain import heartbeat as hb
from lattice.domain.agent import (
    AgentState,
    AgentStatus,
    ClusterHealth,
    Command,
    Connection,
    Reply,
    StatusReport,
    answers,
)


@frozen
class StatusChange:
    """What one event reports about an agent; ``None`` fields are not reported."""

    connection: Connection | None = None
    state: AgentState | None = None
    agent_version: str | None = None
    kubernetes_version: str | None = None
    health: ClusterHealth | None = None
    deleting_reason: str | None = None
    certificate_not_after: datetime | None = None


def merge_status(
    current: AgentStatus | None, cluster: str, change: StatusChange, heard_at: datetime | None
) -> AgentStatus:
    """``current`` (DISCONNECTED and empty when ``None``) with the reported fields replaced and,
    when ``heard_at`` is given, ``last_heartbeat`` set to it."""
    base = current or AgentStatus(cluster_name=cluster, connection=Connection.DISCONNECTED)
    effective: dict[str, Any] = {
        key: value for key, value in asdict(change, recurse=False).items() if value is not None
    }
    if heard_at is not None:
        effective["last_heartbeat"] = heard_at
    return evolve(base, **effective)


def differs(before: AgentStatus | None, after: AgentStatus) -> bool:
    """Whether ``after`` says anything new besides ``last_heartbeat`` (worth a status write)."""
    base = before or AgentStatus(cluster_name=after.cluster_name, connection=Connection.DISCONNECTED)
    return evolve(after, last_heartbeat=None) != evolve(base, last_heartbeat=None)


@frozen
class AgentRecord:
    """What the registry knows of one cluster's agent between two events."""

    cluster: str
    status: AgentStatus | None = None
    """The last status merged (``None`` before the first event)."""
    last_seen: float | None = None
    """Monotonic time of the last attach or heartbeat while a stream is attached; ``None``
    without a stream (so a detached agent is never declared LOST)."""
    lost: bool = False
    """Declared LOST and not heard from since (kept after its stream ends)."""


@frozen
class Step:
    """The outcome of one event: the record to keep, and what to do."""

    record: AgentRecord
    report: AgentStatus | None = None
    """The status to hand to the status sink (``None``: nothing but heartbeat time changed)."""
    close: str | None = None
    """Close the cluster's stream (UNAVAILABLE) with this message."""


def update(record: AgentRecord, change: StatusChange, wall: datetime) -> Step:
    """Merge a report; ``last_heartbeat`` moves to ``wall`` while a stream is attached."""
    heard_at = wall if record.last_seen is not None else None
    status = merge_status(record.status, record.cluster, change, heard_at)
    report = status if differs(record.status, status) else None
    return Step(record=evolve(record, status=status), report=report)


def attached(record: AgentRecord, ready: StatusChange, now: float, wall: datetime) -> Step:
    """A stream said AgentReady: CONNECTED, heard now, no longer LOST."""
    heard = evolve(record, last_seen=now, lost=False)
    return update(heard, evolve(ready, connection=Connection.CONNECTED), wall)


def heartbeat(record: AgentRecord, state: AgentState, now: float, wall: datetime) -> Step:
    """A heartbeat: heard now, its state merged; a LOST agent is CONNECTED again."""
    change = StatusChange(state=state)
    if record.lost:
        change = evolve(change, connection=Connection.CONNECTED)
    return update(evolve(record, last_seen=now, lost=False), change, wall)


def released(record: AgentRecord) -> AgentRecord:
    """The cluster's stream ended: no longer heard (nor swept)."""
    return evolve(record, last_seen=None)


def disconnected(record: AgentRecord, wall: datetime) -> Step:
    """After :func:`released` (and whatever the transport did since): DISCONNECTED, unless the
    agent is LOST (it says more) or a newer stream attached in between."""
    if record.lost or record.last_seen is not None:
        return Step(record=record)
    return update(record, StatusChange(connection=Connection.DISCONNECTED), wall)


def lost_message(policy: hb.HeartbeatPolicy) -> str:
    return f"no heartbeat for {policy.lost_after:.1f} s"


def lost(record: AgentRecord, policy: hb.HeartbeatPolicy, now: float, wall: datetime) -> Step | None:
    """``None`` unless the agent is LOST now and was not already; then it is marked LOST, its
    status reported and its stream closed."""
    if record.lost or record.last_seen is None:
        return None
    if hb.liveness(policy, record.last_seen, now) is not hb.Liveness.LOST:
        return None
    step = update(evolve(record, lost=True), StatusChange(connection=Connection.LOST), wall)
    return evolve(step, close=lost_message(policy))


def sweep(
    records: Iterable[AgentRecord], policy: hb.HeartbeatPolicy, now: float, wall: datetime
) -> tuple[Step, ...]:
    """:func:`lost` for every agent, by cluster name: the agents newly LOST."""
    steps = (lost(record, policy, now, wall) for record in sorted(records, key=lambda r: r.cluster))
    return tuple(step for step in steps if step is not None)


def report_change(reply: Reply) -> StatusChange | None:
    """What a reply says about the agent itself (a StatusReport; empty versions are not news)."""
    if not isinstance(reply, StatusReport):
        return None
    return StatusChange(
        state=reply.state,
        kubernetes_version=reply.kubernetes_version or None,
        agent_version=reply.agent_version or None,
        health=reply.health,
    )


# --- commands ---------------------------------------------------------------------------------


@frozen
class QueuedCommand:
    """A command waiting for its reply."""

    command_id: str
    cluster: str
    command: Command
    delivered: bool = False
    """Sent on a stream at least once (a timeout then means no reply, not no agent)."""
    answered: bool = False


def to_resend(cluster: str, queue: Iterable[QueuedCommand]) -> tuple[str, ...]:
    """The ids to send again when ``cluster`` attaches: its unanswered commands, queue order."""
    return tuple(q.command_id for q in queue if q.cluster == cluster and not q.answered)


class ReplyMatch(enum.Enum):
    ACCEPTED = "Accepted"
    """Completes the command."""
    UNKNOWN = "Unknown"
    """No such command waits (answered and forgotten, timed out, or never sent)."""
    ANSWERED = "Answered"
    """The command already has its reply (a repeat)."""
    OTHER_CLUSTER = "OtherCluster"
    """The command went to another cluster: a stream may only answer its own."""
    WRONG_KIND = "WrongKind"
    """Not a reply of the type the command expects."""


def match_reply(queued: QueuedCommand | None, cluster: str, reply: Reply) -> ReplyMatch:
    """Whether ``reply``, received on ``cluster``'s stream, answers the command it names."""
    if queued is None:
        return ReplyMatch.UNKNOWN
    if queued.cluster != cluster:
        return ReplyMatch.OTHER_CLUSTER
    if not answers(queued.command, reply):
        return ReplyMatch.WRONG_KIND
    if queued.answered:
        return ReplyMatch.ANSWERED
    return ReplyMatch.ACCEPTED


# --- certificate renewals ----------------------------------------------------------------------

RENEWAL_DISABLED = "certificate renewal is not enabled on this cell"


def renewal_refusal(*, enabled: bool, last: float | None, now: float, interval: float) -> str | None:
    """Why a renewal request is refused now (``None``: sign it). ``last`` is the monotonic time
    of the cluster's last signed-for request."""
    if not enabled:
        return RENEWAL_DISABLED
    if last is not None and now - last < interval:
        return f"too many renewals: at most one per {interval:g} s per cluster"
    return None
