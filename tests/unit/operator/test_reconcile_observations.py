"""One writer of a LatticeCluster's status: the agent hub's observations and the pivot driver's
steps are merged by the reconcile (``domain/cluster_observations.py``,
``cluster_reconcile.plan_cluster(observations=...)``, ``pivot_flow.apply_report``)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import (
    agent,
    cluster_observations,
    cluster_reconcile,
    conditions,
    models,
    pivot_flow,
    serde,
)
from lattice.domain.cluster_observations import Observations
from lattice.domain.cluster_reconcile import FINALIZER, OperatorContext, plan_cluster
from lattice.domain.models import PivotStep
from tests.unit.operator.test_reconcile import CELL, NOW, deleting, desired, lc, pivoted, with_status

CONNECTED = models.AgentStatus(
    connected=True,
    state="Ready",
    version="0.1.0",
    last_heartbeat_time="2026-11-23T11:59:50Z",
    nodes="3/3",
    certificate_not_after="2026-12-13T12:00:00Z",
)

agent_statuses = st.builds(
    models.AgentStatus,
    connected=st.booleans(),
    state=st.sampled_from([None, *(s.value for s in agent.AgentState)]),
    version=st.none() | st.sampled_from(["0.1.0", "0.2.0"]),
    last_heartbeat_time=st.none() | st.sampled_from(["2026-11-23T11:59:50Z", "2026-11-23T12:00:00Z"]),
    nodes=st.none() | st.sampled_from(["1/3", "3/3"]),
    reported=st.sampled_from([(), ("LatticeCluster.phase=Ready",)]),
)


# --------------------------------------------------------------------------- the domain module


def test_the_hubs_view_of_an_agent_becomes_status_agent() -> None:
    seen = agent.AgentStatus(
        cluster_name="w1",
        connection=agent.Connection.CONNECTED,
        state=agent.AgentState.READY,
        agent_version="0.1.0",
        last_heartbeat=dt.datetime(2026, 11, 23, 13, 59, 50, tzinfo=dt.timezone(dt.timedelta(hours=2))),
        health=agent.ClusterHealth(3, 3, ("LatticeCluster.phase=Ready", "Other.ignored", "x" * 10)),
        certificate_not_after=dt.datetime(2026, 12, 13, 12, 0, tzinfo=dt.UTC),
    )
    assert cluster_observations.agent_status(seen) == models.AgentStatus(
        connected=True,
        state="Ready",
        version="0.1.0",
        last_heartbeat_time="2026-11-23T11:59:50Z",
        nodes="3/3",
        reported=("LatticeCluster.phase=Ready",),
        certificate_not_after="2026-12-13T12:00:00Z",
    )
    lost = agent.AgentStatus(cluster_name="w1", connection=agent.Connection.LOST)
    assert cluster_observations.agent_status(lost) == models.AgentStatus(connected=False, state="Unknown")


def test_merge_replaces_only_what_was_observed() -> None:
    status = models.LatticeClusterStatus(phase=models.Phase.READY, agent=CONNECTED)
    assert cluster_observations.merge(status, cluster_observations.NOTHING, NOW) is status
    assert cluster_observations.merge(status, Observations(agent=CONNECTED), NOW) is status
    lost = models.AgentStatus(connected=False)
    merged = cluster_observations.merge(status, Observations(agent=lost), NOW)
    assert merged == models.LatticeClusterStatus(phase=models.Phase.READY, agent=lost)


def test_an_observation_that_changes_nothing_is_not_news() -> None:
    assert cluster_observations.with_agent(Observations(agent=CONNECTED), CONNECTED) is None
    assert cluster_observations.with_agent(cluster_observations.NOTHING, CONNECTED) == Observations(CONNECTED)


# --------------------------------------------------------------------------- the reconcile


def _provisioning() -> dict[str, Any]:
    raw = lc()
    return with_status(raw, plan_cluster(raw, None, CELL, NOW))


def _abandoned() -> dict[str, Any]:
    raw = _provisioning()
    raw["status"]["phase"] = "Failed"
    raw["status"]["pivot"] = {"step": PivotStep.EXPORTING.value, "attempt": pivot_flow.MAX_PIVOT_ATTEMPTS}
    return raw


def _invalid() -> dict[str, Any]:
    return lc(nodes={"controlPlane": 2, "workers": 1})


OBJECTS: dict[str, tuple[Callable[[], dict[str, Any]], Callable[[dict[str, Any]], list[dict[str, Any]]]]] = {
    "provisioning": (_provisioning, desired),
    "pivoted": (lambda: pivoted(lc(), observedGeneration=1), lambda _: []),
    "abandoned": (_abandoned, desired),
    "invalid": (_invalid, lambda _: []),
    "deleted-pivoted": (lambda: deleting(pivoted(lc(), observedGeneration=1)), lambda _: []),
    "deleted-provisioning": (lambda: deleting(_provisioning()), desired),
}


@pytest.mark.parametrize("kind", sorted(OBJECTS))
@given(observed=agent_statuses)
def test_the_reconcile_writes_the_observed_agent_once(kind: str, observed: models.AgentStatus) -> None:
    make, objects = OBJECTS[kind]
    raw = make()
    capi_objects = objects(raw)
    plan = plan_cluster(raw, capi_objects, CELL, NOW, observations=Observations(agent=observed))
    assert plan.finalizers is None
    assert plan.status is not None
    assert plan.status["agent"] == serde.status_to_dict(models.LatticeClusterStatus(agent=observed))["agent"]
    written = with_status(raw, plan)
    again = plan_cluster(written, capi_objects, CELL, NOW, observations=Observations(agent=observed))
    assert again.status is None  # settled: nothing new is written for the same fact
    # What else the plan decides is what it decides without the fact.
    without = plan_cluster(raw, capi_objects, CELL, NOW)
    assert (plan.apply, plan.delete, plan.unpivot) == (without.apply, without.delete, without.unpivot)


def test_the_certificate_condition_follows_the_observed_agent_in_the_same_pass() -> None:
    raw = pivoted(lc(), observedGeneration=1)
    plan = plan_cluster(raw, [], CELL, NOW, observations=Observations(agent=CONNECTED))
    assert plan.status is not None
    assert plan.status["agent"]["certificateNotAfter"] == "2026-12-13T12:00:00Z"
    (condition,) = [c for c in plan.status["conditions"] if c["type"] == "AgentCertificate"]
    assert (condition["status"], condition["reason"]) == ("True", "Valid")


def test_nothing_observed_leaves_status_agent_as_written() -> None:
    raw = pivoted(lc(), observedGeneration=1, agent={"connected": False})
    assert (
        plan_cluster(raw, [], CELL, NOW, observations=cluster_observations.NOTHING)
        == cluster_reconcile.Plan()
    )


def test_finalizer_passes_and_other_cells_clusters_carry_no_status() -> None:
    raw = lc()
    raw["metadata"]["finalizers"] = []
    plan = plan_cluster(raw, [], CELL, NOW, observations=Observations(agent=CONNECTED))
    assert plan.finalizers == (FINALIZER,)
    assert plan.status is None
    other = copy.deepcopy(lc())
    other["spec"]["cellRef"] = "elsewhere"
    ignored = plan_cluster(
        other, [], OperatorContext(self_name="mgmt"), NOW, observations=Observations(CONNECTED)
    )
    assert ignored.ignored is not None
    assert ignored.status is None


# --------------------------------------------------------------------------- a failed bootstrap


def _bootstrapping() -> dict[str, Any]:
    raw = _provisioning()
    raw["status"]["phase"] = "Bootstrapping"
    return raw


def test_a_failed_bootstrap_is_shown_by_the_owner_and_stays_shown() -> None:
    raw = _bootstrapping()
    error = "applying CiliumLoadBalancerIPPool default: spec.blocks[0].cidr: Invalid value"
    failed = Observations(bootstrap_error=error)
    plan = plan_cluster(raw, desired(raw), CELL, NOW, observations=failed)
    assert plan.status is not None
    assert plan.status["phase"] == "Bootstrapping"
    assert plan.status["message"] == f"bootstrap payload not applied: {error}"
    (condition,) = [c for c in plan.status["conditions"] if c["type"] == "Bootstrapped"]
    assert (condition["status"], condition["reason"], condition["message"]) == ("False", "ApplyFailed", error)
    assert [(e.type, e.reason) for e in plan.events] == [("Warning", "BootstrapFailed")]
    raw = with_status(raw, plan)
    # The reconcile's own message for the phase no longer replaces it: nothing to write, no Event.
    later = NOW + dt.timedelta(minutes=1)
    again = plan_cluster(raw, desired(raw), CELL, later, observations=failed)
    assert again.status is None
    assert not [e for e in again.events if e.reason == "BootstrapFailed"]
    # Another error: shown, with its Event.
    other = plan_cluster(raw, desired(raw), CELL, later, observations=Observations(bootstrap_error="boom"))
    assert other.status is not None
    assert other.status["message"] == "bootstrap payload not applied: boom"
    assert [e.reason for e in other.events if e.reason == "BootstrapFailed"] == ["BootstrapFailed"]


@pytest.mark.parametrize("kind", ["provisioning", "pivoted", "deleted-pivoted"])
def test_a_bootstrap_error_is_history_outside_bootstrapping(kind: str) -> None:
    make, objects = OBJECTS[kind]
    raw = make()
    failed = Observations(bootstrap_error="boom")
    assert plan_cluster(raw, objects(raw), CELL, NOW, observations=failed) == plan_cluster(
        raw, objects(raw), CELL, NOW
    )


def test_a_bootstrap_outcome_that_changes_nothing_is_not_news() -> None:
    assert cluster_observations.with_bootstrap(cluster_observations.NOTHING, None) is None
    failed = cluster_observations.with_bootstrap(cluster_observations.NOTHING, "boom")
    assert failed == Observations(bootstrap_error="boom")
    assert cluster_observations.with_bootstrap(failed, "boom") is None
    assert cluster_observations.with_bootstrap(failed, None) == cluster_observations.NOTHING


# --------------------------------------------------------------------------- a pivot waiting for CAPI


def _about_to_export(step: PivotStep = PivotStep.EXPORTING) -> dict[str, Any]:
    raw = _provisioning()
    raw["status"]["phase"] = "Pivoting"
    raw["status"]["pivot"] = {"step": step.value, "attempt": 1}
    return raw


BLOCKERS = (
    "Cluster w1: the control plane is not initialized yet",
    "Machine w1-md-0-a: no Node yet",
    "Machine w1-md-0-b: no Node yet",
    "Machine w1-md-0-c: no Node yet",
)


def test_what_a_pivot_waits_for_is_shown_with_one_event_when_the_wait_starts() -> None:
    raw = _about_to_export()
    plan = plan_cluster(raw, desired(raw), CELL, NOW, observations=Observations(pivot_wait=BLOCKERS[:2]))
    assert plan.status is not None
    shown = "Cluster w1: the control plane is not initialized yet; Machine w1-md-0-a: no Node yet"
    assert plan.status["phase"] == "Pivoting"
    assert plan.status["message"] == f"pivot waits for Cluster API: {shown}"
    (condition,) = [c for c in plan.status["conditions"] if c["type"] == "Pivoted"]
    assert (condition["status"], condition["reason"]) == ("False", "WaitingForClusterAPI")
    assert condition["message"] == f"clusterctl's move preflight would refuse the cluster now: {shown}"
    assert [(e.type, e.reason, e.message) for e in plan.events] == [
        ("Normal", "PivotWaiting", f"pivot waits for Cluster API: {shown}")
    ]
    raw = with_status(raw, plan)
    later = NOW + dt.timedelta(seconds=30)
    # The same wait: nothing to write. What it waits for changes: written, no second Event;
    # beyond three blockers, the rest are counted.
    assert (
        plan_cluster(
            raw, desired(raw), CELL, later, observations=Observations(pivot_wait=BLOCKERS[:2])
        ).status
        is None
    )
    more = plan_cluster(raw, desired(raw), CELL, later, observations=Observations(pivot_wait=BLOCKERS))
    assert more.status is not None
    assert more.status["message"].endswith("Machine w1-md-0-b: no Node yet; and 1 more")
    assert not [e for e in more.events if e.reason == "PivotWaiting"]


@pytest.mark.parametrize("step", [PivotStep.TRANSFERRING, PivotStep.IMPORTING, PivotStep.DELETING_SOURCE])
def test_a_pivot_wait_is_history_once_the_export_is_done(step: PivotStep) -> None:
    raw = _about_to_export(step)
    waiting = Observations(pivot_wait=BLOCKERS)
    assert plan_cluster(raw, desired(raw), CELL, NOW, observations=waiting) == plan_cluster(
        raw, desired(raw), CELL, NOW
    )


def test_a_pivot_wait_outside_a_pivot_is_refused_and_not_news_when_unchanged() -> None:
    with pytest.raises(pivot_flow.StepRejected, match="not about to export"):
        pivot_flow.pivot_waiting(models.LatticeClusterStatus(), BLOCKERS, NOW)
    exporting = models.LatticeClusterStatus(
        phase=models.Phase.PIVOTING, pivot=models.PivotStatus(step=PivotStep.EXPORTING, attempt=1)
    )
    with pytest.raises(pivot_flow.StepRejected, match="nothing to wait for"):
        pivot_flow.pivot_waiting(exporting, (), NOW)
    assert cluster_observations.with_pivot_wait(cluster_observations.NOTHING, ()) is None
    waiting = cluster_observations.with_pivot_wait(cluster_observations.NOTHING, BLOCKERS)
    assert waiting == Observations(pivot_wait=BLOCKERS)
    assert cluster_observations.with_pivot_wait(waiting, BLOCKERS) is None
    assert cluster_observations.with_pivot_wait(waiting, ()) == cluster_observations.NOTHING


# --------------------------------------------------------------------------- the driver's steps

FlowReport = pivot_flow.FlowReport
FlowStep = pivot_flow.FlowStep

# Each step as the driver reports it, and the transition of pivot_flow it stands for.
TRANSITIONS: dict[
    FlowStep, tuple[FlowReport, Callable[[models.LatticeClusterStatus], models.LatticeClusterStatus]]
] = {
    FlowStep.AGENT_CONNECTED: (
        FlowReport(FlowStep.AGENT_CONNECTED),
        lambda s: pivot_flow.agent_connected(s, NOW),
    ),
    FlowStep.BOOTSTRAP_COMPLETED: (
        FlowReport(FlowStep.BOOTSTRAP_COMPLETED),
        lambda s: pivot_flow.bootstrap_completed(s, NOW),
    ),
    FlowStep.PIVOT_STEP: (
        FlowReport(FlowStep.PIVOT_STEP, pivot_step=PivotStep.TRANSFERRING, objects=7),
        lambda s: pivot_flow.pivot_step(s, PivotStep.TRANSFERRING, NOW, 7),
    ),
    FlowStep.PIVOT_FAILED: (
        FlowReport(FlowStep.PIVOT_FAILED, error="MoveError: boom"),
        lambda s: pivot_flow.pivot_failed(s, "MoveError: boom", NOW),
    ),
    FlowStep.PIVOT_SUCCEEDED: (
        FlowReport(FlowStep.PIVOT_SUCCEEDED),
        lambda s: pivot_flow.pivot_succeeded(s, NOW),
    ),
    FlowStep.PIVOT_CANCELLED: (
        FlowReport(FlowStep.PIVOT_CANCELLED),
        lambda s: pivot_flow.pivot_cancelled(s, NOW),
    ),
    FlowStep.UNPIVOT_REQUESTED: (
        FlowReport(FlowStep.UNPIVOT_REQUESTED),
        lambda s: pivot_flow.unpivot_requested(s, "w1", NOW),
    ),
    FlowStep.UNPIVOT_WAITING: (
        FlowReport(FlowStep.UNPIVOT_WAITING, error="no agent"),
        lambda s: pivot_flow.unpivot_waiting(s, "no agent", NOW),
    ),
    FlowStep.UNPIVOT_IMPORTED: (
        FlowReport(FlowStep.UNPIVOT_IMPORTED, objects=12),
        lambda s: pivot_flow.unpivot_imported(s, 12, NOW),
    ),
    FlowStep.UNPIVOT_RELEASED: (
        FlowReport(FlowStep.UNPIVOT_RELEASED),
        lambda s: pivot_flow.unpivot_released(s, NOW),
    ),
}

flow_statuses = st.builds(
    models.LatticeClusterStatus,
    phase=st.sampled_from(models.Phase),
    pivot=st.none()
    | st.builds(models.PivotStatus, step=st.sampled_from(PivotStep), attempt=st.integers(1, 4)),
    unpivot=st.none() | st.builds(models.UnpivotStatus, step=st.sampled_from(models.UnpivotStep)),
    conditions=st.sampled_from(
        [
            (),
            conditions.set_condition(
                (), conditions.CAPI_APPLIED, models.ConditionStatus.TRUE, "Applied", "", now=NOW, generation=1
            ),
        ]
    ),
)


def test_every_step_has_its_transition() -> None:
    assert set(TRANSITIONS) == set(FlowStep)


@given(status=flow_statuses, step=st.sampled_from(FlowStep), deleting=st.booleans())
def test_a_report_applies_exactly_the_transition_it_names(
    status: models.LatticeClusterStatus, step: FlowStep, deleting: bool
) -> None:
    report, transition = TRANSITIONS[step]

    def outcome(apply: Callable[[], models.LatticeClusterStatus]) -> models.LatticeClusterStatus | str:
        try:
            return apply()
        except pivot_flow.StepRejected:
            return "rejected"

    got = outcome(lambda: pivot_flow.apply_report(status, report, name="w1", deleting=deleting, now=NOW))
    if deleting and step in pivot_flow.BEFORE_DELETION:
        assert got == "rejected"  # bootstrap steps stop at a deletion; the others go on
    elif not deleting and step in pivot_flow.ONLY_AT_DELETION:
        assert got == "rejected"  # only a deletion cancels a pivot
    else:
        assert got == outcome(lambda: transition(status))


def test_a_pivot_step_report_must_name_the_step() -> None:
    status = models.LatticeClusterStatus(
        phase=models.Phase.PIVOTING, pivot=models.PivotStatus(PivotStep.EXPORTING, 1)
    )
    with pytest.raises(pivot_flow.StepRejected, match="names no step"):
        pivot_flow.apply_report(status, FlowReport(FlowStep.PIVOT_STEP), name="w1", deleting=False, now=NOW)


def test_a_pending_report_is_one_hand_over() -> None:
    report = FlowReport(FlowStep.AGENT_CONNECTED)
    pending = cluster_observations.with_flow(cluster_observations.NOTHING, report)
    assert pending == Observations(flow=report)
    assert cluster_observations.with_flow(pending, report) is None
    # The same step reported again is a new hand-over (compared by identity).
    assert cluster_observations.with_flow(pending, FlowReport(FlowStep.AGENT_CONNECTED)) is not None
    assert cluster_observations.with_flow(pending, None) == cluster_observations.NOTHING


def _capi_applied(raw: dict[str, Any]) -> dict[str, Any]:
    assert any(c["type"] == "CapiApplied" and c["status"] == "True" for c in raw["status"]["conditions"])
    return raw


def test_the_owner_writes_the_drivers_step_and_decides_the_rest_on_it() -> None:
    raw = _capi_applied(_provisioning())
    report = FlowReport(FlowStep.AGENT_CONNECTED)
    plan = plan_cluster(raw, desired(raw), CELL, NOW, observations=Observations(flow=report))
    assert plan.flow == cluster_reconcile.FlowOutcome(report)
    assert plan.status is not None
    assert plan.status["phase"] == "Bootstrapping"
    assert plan.status["message"] == "agent connected; bootstrapping"
    (condition,) = [c for c in plan.status["conditions"] if c["type"] == "AgentConnected"]
    assert condition["status"] == "True"
    # What the reconcile's next pass would have decided after the driver's write, in this pass.
    stepped = copy.deepcopy(raw)
    stepped["status"] = serde.status_to_dict(pivot_flow.agent_connected(pivot_flow.parse_status(raw), NOW))
    after = plan_cluster(stepped, desired(raw), CELL, NOW)
    assert plan.status == (after.status or stepped["status"])
    assert (plan.apply, plan.events) == (after.apply, after.events)
    # Written, and withdrawn: the next pass writes nothing.
    written = with_status(raw, plan)
    assert plan_cluster(written, desired(raw), CELL, NOW).status is None


def test_a_step_that_does_not_apply_is_rejected_and_changes_nothing() -> None:
    raw = _provisioning()
    report = FlowReport(FlowStep.PIVOT_SUCCEEDED)
    plan = plan_cluster(raw, desired(raw), CELL, NOW, observations=Observations(flow=report))
    assert plan.flow is not None
    assert plan.flow.report is report
    assert plan.flow.rejected
    assert attrs.evolve(plan, flow=None) == plan_cluster(raw, desired(raw), CELL, NOW)


def test_a_bootstrap_step_stops_at_a_deletion_and_a_pivot_step_goes_on() -> None:
    raw = deleting(_bootstrapping())
    connected = FlowReport(FlowStep.BOOTSTRAP_COMPLETED)
    plan = plan_cluster(raw, desired(raw), CELL, NOW, observations=Observations(flow=connected))
    assert plan.flow == cluster_reconcile.FlowOutcome(connected, rejected="w1 is being deleted")
    raw = deleting(_provisioning())
    raw["status"]["phase"] = "Pivoting"
    raw["status"]["pivot"] = {"step": "Importing", "attempt": 1}
    done = FlowReport(FlowStep.PIVOT_SUCCEEDED)
    plan = plan_cluster(raw, desired(raw), CELL, NOW, observations=Observations(flow=done))
    assert plan.flow == cluster_reconcile.FlowOutcome(done)
    assert plan.status is not None
    assert plan.status["pivot"]["step"] == "Complete"
    # The deletion's own pass on the pivoted child: wait for the objects to come back.
    assert plan.unpivot


def test_a_deletion_before_the_export_cancels_the_pivot_and_deletes_here() -> None:
    raw = deleting(_about_to_export())
    objects = desired(raw)
    # The owner's own pass: a deletion waits for a pivot in progress...
    waiting = plan_cluster(raw, objects, CELL, NOW)
    assert waiting.delete == ()
    assert waiting.status is not None
    assert waiting.status["phase"] == "Pivoting"
    assert waiting.cancel_pivot  # the cell's driver is woken to cancel it, agent or not
    # ...until the driver, which unpaused the source, reports the pivot cancelled: the same pass
    # writes it and starts the deletion, as for a cluster never pivoted.
    cancelled = FlowReport(FlowStep.PIVOT_CANCELLED)
    plan = plan_cluster(raw, objects, CELL, NOW, observations=Observations(flow=cancelled))
    assert plan.flow == cluster_reconcile.FlowOutcome(cancelled)
    assert plan.status is not None
    assert plan.status["phase"] == "Deleting"
    pivoted_condition = next(c for c in plan.status["conditions"] if c["type"] == "Pivoted")
    assert (pivoted_condition["status"], pivoted_condition["reason"]) == ("False", "PivotCancelled")
    assert pivoted_condition["message"] == (
        "deleted before its pivot exported anything: deleting its Cluster API objects here"
    )
    deleting_condition = next(c for c in plan.status["conditions"] if c["type"] == "Deleting")
    assert deleting_condition["reason"] == "DeletingCapiObjects"
    assert [k.kind for k in plan.delete] == ["Cluster"]
    assert [(e.type, e.reason) for e in plan.events] == [("Normal", "PivotCancelled")]
    # Once an export went out, the pivot is not cancelled: it finishes, then the objects come back.
    transferring = FlowReport(FlowStep.PIVOT_CANCELLED)
    late = plan_cluster(
        deleting(_about_to_export(PivotStep.TRANSFERRING)),
        objects,
        CELL,
        NOW,
        observations=Observations(flow=transferring),
    )
    assert late.flow == cluster_reconcile.FlowOutcome(
        transferring, rejected="no pivot that has not exported anything"
    )
    assert late.delete == ()
    assert not late.cancel_pivot


def test_a_step_waits_for_the_finalizer() -> None:
    raw = _capi_applied(_provisioning())
    raw["metadata"]["finalizers"] = []
    report = FlowReport(FlowStep.AGENT_CONNECTED)
    plan = plan_cluster(raw, desired(raw), CELL, NOW, observations=Observations(flow=report))
    assert plan.finalizers == (FINALIZER,)
    assert plan.flow is None  # not decided: the controller plans again once the finalizer is written


def test_a_step_that_changes_nothing_writes_nothing() -> None:
    raw = _provisioning()
    raw["status"]["phase"] = "Pivoting"
    raw["status"]["pivot"] = {"step": "Importing", "attempt": 1}
    report = FlowReport(FlowStep.PIVOT_STEP, pivot_step=PivotStep.IMPORTING)
    once = plan_cluster(raw, desired(raw), CELL, NOW, observations=Observations(flow=report))
    written = with_status(raw, once)
    again = plan_cluster(written, desired(raw), CELL, NOW, observations=Observations(flow=report))
    assert again.flow == cluster_reconcile.FlowOutcome(report)
    assert again.status is None


@given(status=flow_statuses, step=st.sampled_from(FlowStep), delete=st.booleans())
def test_the_owner_applies_or_rejects_every_step_in_every_status(
    status: models.LatticeClusterStatus, step: FlowStep, delete: bool
) -> None:
    raw = _provisioning()
    raw["status"] = serde.status_to_dict(status)
    if delete:
        raw = deleting(raw)
    report, _ = TRANSITIONS[step]
    plan = plan_cluster(raw, desired(raw), CELL, NOW, observations=Observations(flow=report))
    assert plan.flow is not None
    assert plan.flow.report is report
    if plan.flow.rejected is not None:  # rejected: the pass is the one it would be without it
        assert attrs.evolve(plan, flow=None) == plan_cluster(raw, desired(raw), CELL, NOW)
