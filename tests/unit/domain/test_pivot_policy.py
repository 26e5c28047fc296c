"""The pivot driver's decisions: phase dispatch, unpivot dispatch, step skipping, failure policy."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import conditions, models, pivot_failure, pivot_flow, pivot_policy
from lattice.domain.models import ConditionStatus, Phase, PivotStep, UnpivotStep
from lattice.domain.pivot_failure import Fault, Response
from lattice.domain.pivot_policy import Action, UnpivotAction

NOW = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)

pivots = st.builds(
    models.PivotStatus,
    step=st.sampled_from(PivotStep),
    attempt=st.integers(1, pivot_failure.MAX_PIVOT_ATTEMPTS + 2),
)
unpivots = st.builds(models.UnpivotStatus, step=st.sampled_from(UnpivotStep))
capi_conditions = st.sampled_from(ConditionStatus).map(
    lambda v: conditions.set_condition((), conditions.CAPI_APPLIED, v, "R", "", now=NOW, generation=1)
)
statuses = st.builds(
    models.LatticeClusterStatus,
    phase=st.sampled_from(Phase),
    pivot=st.none() | pivots,
    unpivot=st.none() | unpivots,
    conditions=st.just(()) | capi_conditions,
)


def _applied() -> tuple[models.Condition, ...]:
    return conditions.set_condition(
        (), conditions.CAPI_APPLIED, ConditionStatus.TRUE, "Applied", "", now=NOW, generation=1
    )


# --------------------------------------------------------------------------- next_action


@given(statuses, st.booleans(), st.booleans())
def test_every_status_leads_to_exactly_one_next_action(
    status: models.LatticeClusterStatus, deleting: bool, connected: bool
) -> None:
    decision = pivot_policy.next_action(status, deleting=deleting, connected=connected)
    assert isinstance(decision.action, Action)
    assert decision.reason
    # Only a deleted child is driven without its agent: a self-managing one is unpivoted (the
    # unpivot says why it waits), a pivot that exported nothing is cancelled.
    if not connected and decision.action is not Action.STOP:
        assert decision.action in (Action.UNPIVOT, Action.CANCEL_PIVOT)
        assert deleting
    if decision.action is Action.UNPIVOT:
        assert pivot_flow.pivoted_away(status)
    if decision.action is Action.CANCEL_PIVOT:
        assert deleting
        assert pivot_flow.pivot_cancelled(status, NOW).phase is Phase.DELETING
    # A step the driver takes is one the status transition accepts.
    if decision.action is Action.CONNECT:
        assert pivot_flow.agent_connected(status, NOW).phase is Phase.BOOTSTRAPPING
    if decision.action is Action.UNPIVOT:
        assert not pivot_flow.unpivot_done(status)
    if decision.action is Action.PIVOT:
        assert status.phase is Phase.PIVOTING
        assert status.pivot is not None
    if decision.action is Action.WAIT_FOR_CAPI:
        assert status.phase is Phase.PROVISIONING
        assert not pivot_flow.capi_applied(status)


@pytest.mark.parametrize(
    ("status", "deleting", "connected", "action"),
    [
        (models.LatticeClusterStatus(phase=Phase.PROVISIONING), False, True, Action.WAIT_FOR_CAPI),
        (
            models.LatticeClusterStatus(phase=Phase.PROVISIONING, conditions=_applied()),
            False,
            True,
            Action.CONNECT,
        ),
        (
            models.LatticeClusterStatus(phase=Phase.PROVISIONING, conditions=_applied()),
            False,
            False,
            Action.STOP,
        ),
        (models.LatticeClusterStatus(phase=Phase.BOOTSTRAPPING), False, True, Action.BOOTSTRAP),
        (models.LatticeClusterStatus(phase=Phase.BOOTSTRAPPING), True, True, Action.BOOTSTRAP),
        (
            models.LatticeClusterStatus(
                phase=Phase.PIVOTING, pivot=models.PivotStatus(PivotStep.IMPORTING, 2)
            ),
            True,
            True,
            Action.PIVOT,
        ),
        (
            models.LatticeClusterStatus(
                phase=Phase.PIVOTING, pivot=models.PivotStatus(PivotStep.EXPORTING, 1)
            ),
            False,
            True,
            Action.PIVOT,
        ),
        (
            models.LatticeClusterStatus(
                phase=Phase.PIVOTING, pivot=models.PivotStatus(PivotStep.EXPORTING, 2)
            ),
            True,
            False,
            Action.CANCEL_PIVOT,
        ),
        (models.LatticeClusterStatus(phase=Phase.PIVOTING), False, True, Action.STOP),
        (pivot_flow.imported_status(), False, True, Action.STOP),
        (pivot_flow.imported_status(), True, False, Action.UNPIVOT),
        (
            models.LatticeClusterStatus(
                phase=Phase.DELETING,
                pivot=models.PivotStatus(PivotStep.COMPLETE, 1),
                unpivot=models.UnpivotStatus(UnpivotStep.RELEASED),
            ),
            True,
            True,
            Action.STOP,
        ),
        (models.LatticeClusterStatus(phase=Phase.FAILED), False, True, Action.STOP),
    ],
    ids=[
        "capi-not-applied",
        "connect",
        "agent-away",
        "bootstrap",
        "bootstrap-while-deleting",
        "pivot-goes-on-when-deleted",
        "pivot-about-to-export",
        "deleted-before-the-export-is-cancelled-even-without-agent",
        "pivoting-without-pivot-status",
        "ready",
        "deleted-child-without-agent-is-unpivoted",
        "unpivot-done",
        "failed",
    ],
)
def test_next_action(
    status: models.LatticeClusterStatus, deleting: bool, connected: bool, action: Action
) -> None:
    assert pivot_policy.next_action(status, deleting=deleting, connected=connected).action is action


# --------------------------------------------------------------------------- unpivot_action


@pytest.mark.parametrize(
    ("step", "action"),
    [
        (None, UnpivotAction.REQUEST),
        (UnpivotStep.REQUESTED, UnpivotAction.FETCH),
        (UnpivotStep.IMPORTED, UnpivotAction.RELEASE),
        (UnpivotStep.RELEASED, UnpivotAction.DONE),
    ],
)
def test_unpivot_action_follows_the_persisted_step(step: UnpivotStep | None, action: UnpivotAction) -> None:
    status = models.LatticeClusterStatus(
        phase=Phase.DELETING,
        pivot=models.PivotStatus(PivotStep.COMPLETE, 1),
        unpivot=None if step is None else models.UnpivotStatus(step),
    )
    assert pivot_policy.unpivot_action(status) is action


@given(statuses)
def test_the_unpivot_action_is_the_transition_the_status_accepts(status: models.LatticeClusterStatus) -> None:
    action = pivot_policy.unpivot_action(status)
    if not pivot_flow.pivoted_away(status):
        return
    transitions = {
        UnpivotAction.REQUEST: lambda s: pivot_flow.unpivot_requested(s, "c", NOW),
        UnpivotAction.FETCH: lambda s: pivot_flow.unpivot_imported(s, 1, NOW),
        UnpivotAction.RELEASE: lambda s: pivot_flow.unpivot_released(s, NOW),
    }
    if action is UnpivotAction.DONE:
        assert pivot_flow.unpivot_done(status)
    else:
        transitions[action](status)  # accepted: does not raise StepRejected


# --------------------------------------------------------------------------- pivot_plan


@given(pivots, st.lists(st.text(min_size=1, max_size=5), max_size=2).map(tuple))
def test_step_skipping_never_skips_an_undone_step(
    pivot: models.PivotStatus, blockers: tuple[str, ...]
) -> None:
    plan = pivot_policy.pivot_plan(pivot, blockers)
    if plan.wait_for:
        assert plan.steps == ()
        assert pivot.step is PivotStep.EXPORTING
        return
    order = pivot_policy.PIVOT_ORDER
    # A suffix of the attempt, ending with deleting the source.
    assert plan.steps == order[len(order) - len(plan.steps) :]
    assert plan.steps[-1] is PivotStep.DELETING_SOURCE
    # Every step at or after the persisted one runs; only a finished import is skipped past.
    if pivot.step in order:
        assert set(order[order.index(pivot.step) :]) <= set(plan.steps)
    if pivot.step is not PivotStep.DELETING_SOURCE and pivot.step is not PivotStep.COMPLETE:
        assert plan.steps == order
        assert plan.exports


@pytest.mark.parametrize(
    ("step", "blockers", "exports", "waits"),
    [
        (PivotStep.EXPORTING, (), True, False),
        (PivotStep.EXPORTING, ("Machine m is not running",), False, True),
        (PivotStep.TRANSFERRING, ("ignored after the export",), True, False),
        (PivotStep.IMPORTING, (), True, False),
        (PivotStep.DELETING_SOURCE, (), False, False),
        (PivotStep.COMPLETE, (), False, False),
    ],
)
def test_pivot_plan(step: PivotStep, blockers: tuple[str, ...], exports: bool, waits: bool) -> None:
    plan = pivot_policy.pivot_plan(models.PivotStatus(step, 1), blockers)
    assert (plan.exports, bool(plan.wait_for)) == (exports, waits)


# --------------------------------------------------------------------------- failure policy


@given(st.integers(1, 50), st.sampled_from(Fault))
def test_the_failure_policy_never_retries_past_its_limit(attempt: int, fault: Fault) -> None:
    policy = pivot_failure.pivot_failure(attempt, fault)
    if fault is Fault.AGENT_AWAY:
        assert policy == pivot_failure.FailurePolicy(Response.WAIT_FOR_AGENT, None)
        assert not policy.counts
        assert not policy.unpause
        return
    assert policy.counts
    assert policy.unpause
    if policy.response is Response.RETRY:
        assert policy.next_attempt == attempt + 1
        assert policy.next_attempt <= pivot_failure.MAX_PIVOT_ATTEMPTS
    else:
        assert policy.response is Response.ABANDON
        assert policy.next_attempt is None
        assert attempt >= pivot_failure.MAX_PIVOT_ATTEMPTS


@given(st.integers(1, pivot_failure.MAX_PIVOT_ATTEMPTS + 3))
def test_the_status_transition_follows_the_failure_policy(attempt: int) -> None:
    status = models.LatticeClusterStatus(
        phase=Phase.PIVOTING, pivot=models.PivotStatus(PivotStep.IMPORTING, attempt), observed_generation=3
    )
    after = pivot_flow.pivot_failed(status, "boom", NOW)
    policy = pivot_failure.pivot_failure(attempt, Fault.FAILED)
    assert after.pivot is not None
    if policy.response is Response.RETRY:
        assert (after.phase, after.pivot.step, after.pivot.attempt) == (
            Phase.PIVOTING,
            PivotStep.EXPORTING,
            policy.next_attempt,
        )
    else:
        assert after.phase is Phase.FAILED
        assert pivot_flow.pivot_abandoned(after, generation=3)
