"""What the cell's pivot driver does next: pure decisions over a child's persisted status.

The driver (``lattice.app.operator.child_driver.CellCoordinator``) reads the child's LatticeCluster, asks
these functions what to do, and acts; the status transitions themselves are in
:mod:`lattice.domain.pivot_flow`. Four decisions live here:

- :func:`next_action`: the phase dispatch (which step of the runtime flow runs next, or stop);
- :func:`unpivot_action`: which step of taking a deleted child's objects back runs next;
- :func:`pivot_plan`: which pivot steps a resumed pivot runs again (the step-skipping rule).

What a failed attempt costs (the failure policy) is :mod:`lattice.domain.pivot_failure`.
"""

from __future__ import annotations

import enum

from attrs import frozen

from lattice.domain import models, pivot_flow
from lattice.domain.models import Phase, PivotStep, UnpivotStep

# --------------------------------------------------------------------------- phase dispatch


class Action(enum.Enum):
    """One turn of the driver's loop."""

    STOP = "Stop"
    """Nothing to drive now (the next agent event or reconcile kicks the driver again)."""
    UNPIVOT = "Unpivot"
    """One step of taking a deleted, self-managing child's objects back."""
    WAIT_FOR_CAPI = "WaitForCapi"
    """The reconciler has not applied every Cluster API object yet: wait, then look again."""
    CONNECT = "Connect"
    """Record the connected agent: ``Provisioning`` → ``Bootstrapping``."""
    BOOTSTRAP = "Bootstrap"
    """Send the bootstrap payload to the agent."""
    PIVOT = "Pivot"
    """Run (or resume) the pivot."""
    CANCEL_PIVOT = "CancelPivot"
    """Deleted before the pivot exported anything: unpause the source, end the pivot; the
    reconciler then deletes the objects here."""


@frozen
class Decision:
    action: Action
    reason: str


def next_action(status: models.LatticeClusterStatus, *, deleting: bool, connected: bool) -> Decision:
    """The driver's next turn for a child with ``status``; ``deleting``: its LatticeCluster has a
    deletionTimestamp; ``connected``: its agent's stream is open on this cell.

    Exactly one action for every status. A deleted, self-managing child is unpivoted whether or
    not its agent is here (the unpivot says why it waits), and a pivot that has exported nothing
    yet is cancelled by a deletion; everything else needs the agent."""
    if deleting and pivot_flow.pivoted_away(status):
        if pivot_flow.unpivot_done(status):
            return Decision(Action.STOP, "the objects are back; the reconciler deletes them")
        return Decision(Action.UNPIVOT, "a self-managing child is deleted: take its objects back")
    if deleting and pivot_flow.before_export(status):
        return Decision(Action.CANCEL_PIVOT, "deleted before the pivot exported anything")
    if not connected:
        return Decision(Action.STOP, "the agent is not connected")
    if status.phase is Phase.PROVISIONING:
        if not pivot_flow.capi_applied(status):
            return Decision(Action.WAIT_FOR_CAPI, "the Cluster API objects are not all applied yet")
        return Decision(Action.CONNECT, "the agent connected and the Cluster API objects are applied")
    if status.phase is Phase.BOOTSTRAPPING:
        return Decision(Action.BOOTSTRAP, "bootstrapping")
    if status.phase is Phase.PIVOTING and status.pivot is not None:
        return Decision(Action.PIVOT, f"pivoting at {status.pivot.step.value}")
    return Decision(Action.STOP, f"nothing to drive in phase {status.phase.value}")


# --------------------------------------------------------------------------- unpivot dispatch


class UnpivotAction(enum.Enum):
    REQUEST = "Request"
    """Record that the objects are asked back (``status.unpivot.step = Requested``)."""
    FETCH = "Fetch"
    """Ask the child's agent for its objects and import them here."""
    RELEASE = "Release"
    """Tell the child to let go (best effort), then let the reconciler delete."""
    DONE = "Done"
    """Released: nothing left for the driver."""


def unpivot_action(status: models.LatticeClusterStatus) -> UnpivotAction:
    step = None if status.unpivot is None else status.unpivot.step
    if step is None:
        return UnpivotAction.REQUEST
    if step is UnpivotStep.REQUESTED:
        return UnpivotAction.FETCH
    if step is UnpivotStep.IMPORTED:
        return UnpivotAction.RELEASE
    return UnpivotAction.DONE


# --------------------------------------------------------------------------- step skipping

PIVOT_ORDER: tuple[PivotStep, ...] = (
    PivotStep.EXPORTING,
    PivotStep.TRANSFERRING,
    PivotStep.IMPORTING,
    PivotStep.DELETING_SOURCE,
)
"""The steps of one attempt, in order; ``Complete`` is the result, not a step."""


@frozen
class PivotPlan:
    steps: tuple[PivotStep, ...] = ()
    """The steps to run, in order (a suffix of :data:`PIVOT_ORDER`); empty while waiting."""
    wait_for: tuple[str, ...] = ()
    """What Cluster API must settle first (clusterctl's preflight would refuse): not an attempt."""

    @property
    def exports(self) -> bool:
        """Whether the attempt exports, transfers and imports (else it only deletes the source)."""
        return PivotStep.EXPORTING in self.steps


def pivot_plan(pivot: models.PivotStatus, blockers: tuple[str, ...] = ()) -> PivotPlan:
    """Which steps a pivot persisted at ``pivot.step`` runs (again).

    Only a finished import is a result worth keeping: the child holds its objects then, and what
    is left is deleting the source (by the export's files, or by label when a restart lost
    them). A pivot stopped anywhere before that starts the attempt over from the export, since
    neither the export directory nor the agent's half-done import is trusted after an
    interruption. ``blockers`` (from :func:`lattice.domain.capi_reports.move_blockers`) only
    matter before the export."""
    if pivot.step is PivotStep.DELETING_SOURCE or pivot.step is PivotStep.COMPLETE:
        return PivotPlan(steps=(PivotStep.DELETING_SOURCE,))
    if pivot.step is PivotStep.EXPORTING and blockers:
        return PivotPlan(wait_for=blockers)
    return PivotPlan(steps=PIVOT_ORDER)
