"""The cell's agent registry (pure): status merge, resend on attach, LOST, replies, renewals."""

from __future__ import annotations

import datetime as dt
import itertools

import pytest
from attrs import evolve
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import agent
from lattice.domain import agent_registry as reg
from lattice.domain.heartbeat import HeartbeatPolicy

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
POLICY = HeartbeatPolicy(interval=10.0, jitter=0.2, max_missed=3)  # LOST after 36 s

states = st.sampled_from(agent.AgentState)
connections = st.sampled_from(agent.Connection)
walls = st.integers(0, 10**6).map(lambda s: T0 + dt.timedelta(seconds=s))
healths = st.builds(
    agent.ClusterHealth,
    ready_nodes=st.integers(0, 5),
    total_nodes=st.integers(0, 5),
    conditions=st.lists(st.sampled_from(["LatticeCluster.phase=Ready", "x"]), max_size=2).map(tuple),
)
texts = st.sampled_from(["", "v1", "v2"])
changes = st.builds(
    reg.StatusChange,
    connection=st.none() | connections,
    state=st.none() | states,
    agent_version=st.none() | texts,
    kubernetes_version=st.none() | texts,
    health=st.none() | healths,
    deleting_reason=st.none() | texts,
    certificate_not_after=st.none() | walls,
)
statuses = st.none() | st.builds(
    agent.AgentStatus,
    cluster_name=st.just("c1"),
    connection=connections,
    state=states,
    agent_version=texts,
    kubernetes_version=texts,
    last_heartbeat=st.none() | walls,
    health=st.none() | healths,
)
policies = st.builds(
    HeartbeatPolicy,
    interval=st.floats(min_value=0.01, max_value=100.0),
    jitter=st.floats(min_value=0.0, max_value=1.0),
    max_missed=st.integers(1, 10),
)


# --- merge ------------------------------------------------------------------------------------


@given(current=statuses, change=changes, heard=st.none() | walls)
def test_merge_is_idempotent(current, change, heard):
    once = reg.merge_status(current, "c1", change, heard)
    assert reg.merge_status(once, "c1", change, heard) == once
    assert not reg.differs(once, reg.merge_status(once, "c1", change, heard))


@given(current=statuses, change=changes, heard=st.none() | walls)
def test_merge_replaces_reported_fields_only(current, change, heard):
    merged = reg.merge_status(current, "c1", change, heard)
    base = current or agent.AgentStatus("c1", agent.Connection.DISCONNECTED)
    for name in ("connection", "state", "agent_version", "kubernetes_version", "health", "deleting_reason"):
        reported = getattr(change, name)
        assert getattr(merged, name) == (getattr(base, name) if reported is None else reported)
    assert merged.last_heartbeat == (base.last_heartbeat if heard is None else heard)


@given(current=statuses, change=changes, heard=walls)
def test_merge_never_moves_heartbeat_time_back(current, change, heard):
    if current is not None and current.last_heartbeat is not None and heard < current.last_heartbeat:
        heard = current.last_heartbeat  # clocks passed in move forward
    merged = reg.merge_status(current, "c1", change, heard)
    assert merged.last_heartbeat is not None
    if current is not None and current.last_heartbeat is not None:
        assert merged.last_heartbeat >= current.last_heartbeat


@given(current=statuses, wall=walls)
def test_heartbeat_time_alone_is_not_reported(current, wall):
    record = reg.AgentRecord("c1", status=current, last_seen=1.0)
    step = reg.update(record, reg.StatusChange(), wall)
    assert step.record.status is not None
    assert step.record.status.last_heartbeat == wall
    assert step.report is None


@given(current=statuses, change=changes, wall=walls, attached=st.booleans())
def test_update_reports_exactly_when_something_besides_heartbeat_time_changed(
    current, change, wall, attached
):
    record = reg.AgentRecord("c1", status=current, last_seen=5.0 if attached else None)
    step = reg.update(record, change, wall)
    assert step.record.status is not None
    assert (step.report is not None) == reg.differs(current, step.record.status)
    if step.report is not None:
        assert step.report == step.record.status
    heard = step.record.status.last_heartbeat
    assert heard == (wall if attached else (current.last_heartbeat if current else None))
    assert step.close is None


# --- a stream's life ------------------------------------------------------------------------


def test_attach_connects_and_reports_what_the_agent_said():
    ready = reg.StatusChange(state=agent.AgentState.READY, agent_version="v1", kubernetes_version="1.32.0")
    step = reg.attached(reg.AgentRecord("c1", lost=True), ready, 3.0, T0)
    assert step.record == reg.AgentRecord("c1", status=step.report, last_seen=3.0, lost=False)
    assert step.report == agent.AgentStatus(
        "c1",
        agent.Connection.CONNECTED,
        agent.AgentState.READY,
        agent_version="v1",
        kubernetes_version="1.32.0",
        last_heartbeat=T0,
    )


def test_a_heartbeat_brings_a_lost_agent_back():
    connected = reg.attached(reg.AgentRecord("c1"), reg.StatusChange(), 0.0, T0).record
    lost = reg.lost(connected, POLICY, 36.0, T0)
    assert lost is not None
    assert lost.record.lost
    assert lost.report is not None
    assert lost.report.connection is agent.Connection.LOST
    back = reg.heartbeat(lost.record, agent.AgentState.READY, 40.0, T0 + dt.timedelta(seconds=40))
    assert not back.record.lost
    assert back.record.last_seen == 40.0
    assert back.report is not None
    assert back.report.connection is agent.Connection.CONNECTED
    assert back.report.state is agent.AgentState.READY


def test_a_heartbeat_of_an_unchanged_agent_only_moves_its_times():
    connected = reg.attached(reg.AgentRecord("c1"), reg.StatusChange(state=agent.AgentState.READY), 0.0, T0)
    later = T0 + dt.timedelta(seconds=10)
    step = reg.heartbeat(connected.record, agent.AgentState.READY, 10.0, later)
    assert step.report is None
    assert step.record.last_seen == 10.0
    assert step.record.status is not None
    assert step.record.status.last_heartbeat == later


def test_the_end_of_a_stream_disconnects_and_keeps_the_last_heartbeat_time():
    connected = reg.attached(reg.AgentRecord("c1"), reg.StatusChange(), 0.0, T0).record
    released = reg.released(connected)
    assert released.last_seen is None
    step = reg.disconnected(released, T0 + dt.timedelta(seconds=5))
    assert step.report is not None
    assert step.report.connection is agent.Connection.DISCONNECTED
    assert step.report.last_heartbeat == T0


def test_the_end_of_a_stream_keeps_lost():
    connected = reg.attached(reg.AgentRecord("c1"), reg.StatusChange(), 0.0, T0).record
    lost = reg.lost(connected, POLICY, 100.0, T0)
    assert lost is not None
    step = reg.disconnected(reg.released(lost.record), T0)
    assert step == reg.Step(record=reg.released(lost.record))
    assert step.record.status is not None
    assert step.record.status.connection is agent.Connection.LOST


def test_the_end_of_an_older_stream_does_not_disconnect_a_newer_one():
    released = reg.released(reg.attached(reg.AgentRecord("c1"), reg.StatusChange(), 0.0, T0).record)
    again = reg.attached(released, reg.StatusChange(), 1.0, T0).record  # attached meanwhile
    step = reg.disconnected(again, T0)
    assert step == reg.Step(record=again)


# --- LOST -----------------------------------------------------------------------------------


@given(policy=policies, seen=st.floats(0, 1e6), elapsed=st.floats(0, 1e4), wall=walls)
def test_never_lost_before_the_timeout_and_always_after(policy, seen, elapsed, wall):
    record = reg.AgentRecord("c1", last_seen=seen)
    step = reg.lost(record, policy, seen + elapsed, wall)
    if (seen + elapsed) - seen < policy.lost_after * (1 - 1e-9):
        assert step is None
    if (seen + elapsed) - seen >= policy.lost_after * (1 + 1e-9):
        assert step is not None
        assert step.record.lost
        assert step.close == f"no heartbeat for {policy.lost_after:.1f} s"


@given(policy=policies, seen=st.floats(0, 1e6), elapsed=st.floats(0, 1e6), wall=walls)
def test_lost_once_and_never_without_a_stream(policy, seen, elapsed, wall):
    record = reg.AgentRecord("c1", last_seen=seen)
    first = reg.lost(record, policy, seen + elapsed, wall)
    if first is not None:
        assert reg.lost(first.record, policy, seen + 2 * elapsed, wall) is None
    assert reg.lost(reg.released(record), policy, seen + elapsed, wall) is None


def test_sweep_names_the_newly_lost_in_order():
    records = [
        reg.AgentRecord("b", last_seen=0.0),
        reg.AgentRecord("a", last_seen=0.0),
        reg.AgentRecord("fresh", last_seen=30.0),
        reg.AgentRecord("gone"),
        reg.AgentRecord("already", last_seen=0.0, lost=True),
    ]
    steps = reg.sweep(records, POLICY, 40.0, T0)
    assert [s.record.cluster for s in steps] == ["a", "b"]
    assert all(s.report is not None and s.report.connection is agent.Connection.LOST for s in steps)


events = st.one_of(
    st.tuples(st.just("attach"), states),
    st.tuples(st.just("heartbeat"), states),
    st.tuples(st.just("report"), changes.map(lambda c: evolve(c, connection=None))),  # as the hub's
    st.tuples(st.just("end"), st.none()),
    st.tuples(st.just("sweep"), st.none()),
)


@given(
    steps=st.lists(st.tuples(events, st.floats(0.0, 50.0)), max_size=30),
)
def test_a_stream_of_events_keeps_the_registry_consistent(steps):
    """Whatever happens, in whatever order: LOST is declared only after the timeout, a LOST
    agent shows LOST, heartbeat time never moves back, and only news is reported."""
    record, now, wall = reg.AgentRecord("c1"), 0.0, T0
    for (kind, arg), gap in steps:
        now, wall = now + gap, wall + dt.timedelta(seconds=gap)
        before = record
        if kind == "attach":
            step = reg.attached(record, reg.StatusChange(state=arg), now, wall)
        elif kind == "heartbeat":
            step = reg.heartbeat(record, arg, now, wall)
        elif kind == "report":
            step = reg.update(record, arg, wall)
        elif kind == "end":
            step = reg.disconnected(reg.released(record), wall)
        else:
            found = reg.sweep([record], POLICY, now, wall)
            step = found[0] if found else reg.Step(record=record)
            if found:
                assert before.last_seen is not None
                assert now - before.last_seen >= POLICY.lost_after - 1e-9
        record = step.record
        if record.lost:
            assert record.status is not None
            assert record.status.connection is agent.Connection.LOST
        if before.status is not None and before.status.last_heartbeat is not None:
            assert record.status is not None
            assert record.status.last_heartbeat is not None
            assert record.status.last_heartbeat >= before.status.last_heartbeat
        assert (step.report is not None) == (
            record.status is not None and reg.differs(before.status, record.status)
        )


# --- commands -------------------------------------------------------------------------------

queues = st.lists(
    st.builds(
        reg.QueuedCommand,
        command_id=st.text("0123456789abcdef", min_size=1, max_size=4),
        cluster=st.sampled_from(["c1", "c2", "c3"]),
        command=st.just(agent.StatusQuery()),
        delivered=st.booleans(),
        answered=st.booleans(),
    ),
    unique_by=lambda q: q.command_id,
    max_size=20,
)


@given(queue=queues, cluster=st.sampled_from(["c1", "c2", "c3"]))
def test_every_unanswered_command_is_resent_exactly_once_on_attach(queue, cluster):
    resent = reg.to_resend(cluster, queue)
    assert len(resent) == len(set(resent))
    assert list(resent) == [q.command_id for q in queue if q.cluster == cluster and not q.answered]


QUERY = reg.QueuedCommand("id1", "c1", agent.StatusQuery())
REPORT = agent.StatusReport("id1", agent.AgentState.READY)


@pytest.mark.parametrize(
    ("queued", "cluster", "reply", "match"),
    [
        (QUERY, "c1", REPORT, reg.ReplyMatch.ACCEPTED),
        (None, "c1", REPORT, reg.ReplyMatch.UNKNOWN),
        (QUERY, "c2", REPORT, reg.ReplyMatch.OTHER_CLUSTER),
        (QUERY, "c1", agent.BootstrapResult("id1", True), reg.ReplyMatch.WRONG_KIND),
        (QUERY, "c1", agent.CommandResult("id1", False, "unknown command"), reg.ReplyMatch.ACCEPTED),
        (evolve(QUERY, answered=True), "c1", REPORT, reg.ReplyMatch.ANSWERED),
    ],
)
def test_match_reply(queued, cluster, reply, match):
    assert reg.match_reply(queued, cluster, reply) is match


def test_a_status_report_is_news_about_the_agent_and_other_replies_are_not():
    health = agent.ClusterHealth(ready_nodes=1, total_nodes=2)
    report = agent.StatusReport("x", agent.AgentState.DEGRADED, "", "v2", health)
    assert reg.report_change(report) == reg.StatusChange(
        state=agent.AgentState.DEGRADED, agent_version="v2", health=health
    )
    assert reg.report_change(agent.CommandResult("x", True)) is None


# --- renewals -------------------------------------------------------------------------------


def test_renewal_refusals():
    assert reg.renewal_refusal(enabled=False, last=None, now=0.0, interval=10.0) == reg.RENEWAL_DISABLED
    assert reg.renewal_refusal(enabled=True, last=None, now=0.0, interval=10.0) is None
    assert reg.renewal_refusal(enabled=True, last=0.0, now=9.5, interval=10.0) == (
        "too many renewals: at most one per 10 s per cluster"
    )
    assert reg.renewal_refusal(enabled=True, last=0.0, now=10.0, interval=10.0) is None


@given(times=st.lists(st.floats(0.0, 100.0), max_size=20).map(sorted), interval=st.floats(0.1, 30.0))
def test_signed_renewals_are_an_interval_apart(times, interval):
    last = None
    signed = []
    for now in times:
        if reg.renewal_refusal(enabled=True, last=last, now=now, interval=interval) is None:
            signed.append(now)
            last = now
    assert all(b - a >= interval for a, b in itertools.pairwise(signed))
