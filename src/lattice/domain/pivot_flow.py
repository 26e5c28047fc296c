"""How a cell moves a child through bootstrap and pivot: pure status transitions.

Every step of the runtime flow is persisted in the child's LatticeCluster status on the cell
(phase, ``status.pivot.step`` and attempt, conditions), so a restarted operator resumes where it
stopped instead of starting over. The app layer (``lattice.app.operator.child_driver``) performs the I/O
between these transitions. It does not write them: it hands each step over as a
:class:`FlowReport`, and the status's owner (:func:`lattice.domain.cluster_reconcile.plan_cluster`)
applies it with :func:`apply_report`.
"""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

import attrs
from attrs import frozen

from lattice.domain import conditions, lifecycle, models, pivot_failure, serde
from lattice.domain.models import (
    ConditionStatus,
    Phase,
    PivotStatus,
    PivotStep,
    UnpivotStatus,
    UnpivotStep,
)

MAX_PIVOT_ATTEMPTS = pivot_failure.MAX_PIVOT_ATTEMPTS
# Set on the LatticeCluster a child holds of itself: created by a pivot, so it is Ready at once
# (status cannot be written on create; this keeps the child's operator from starting over).
PIVOTED_ANNOTATION = "lattice.dev/pivoted-from"
LATTICE_CLUSTER_FILE_PREFIX = "LatticeCluster__"
# Deletion. Set by the agent on its own LatticeCluster once the cell holds the cluster's CAPI
# objects again (the unpivot is done): the cluster's operator may then drop its finalizer.
UNPIVOTED_ANNOTATION = "lattice.dev/unpivoted"
# Set by an administrator: delete the LatticeCluster without unpivoting or deleting the
# infrastructure (its machines keep running, owned by nobody). For a parent that is gone.
ABANDON_ANNOTATION = "lattice.dev/abandon-infrastructure"
# Set by an administrator on a cell: deleting it deletes its children first.
CASCADE_ANNOTATION = "lattice.dev/cascade-delete"


class StepRejected(ValueError):
    """The event does not apply in the cluster's current phase (nothing is written)."""


def parse_status(raw: dict[str, Any]) -> models.LatticeClusterStatus:
    data = raw.get("status")
    parsed = serde.structure(data, models.LatticeClusterStatus) if isinstance(data, dict) else None
    return parsed if isinstance(parsed, models.LatticeClusterStatus) else models.LatticeClusterStatus()


def _advance(status: models.LatticeClusterStatus, event: lifecycle.Event) -> Phase:
    result = lifecycle.transition(status.phase, event)
    if isinstance(result, lifecycle.Rejected):
        raise StepRejected(result.reason)
    return result.phase


def _condition(
    status: models.LatticeClusterStatus,
    type_: str,
    value: ConditionStatus,
    reason: str,
    message: str,
    now: dt.datetime,
    generation: int | None,
) -> tuple[models.Condition, ...]:
    return conditions.set_condition(
        status.conditions, type_, value, reason, message, now=now, generation=generation
    )


def capi_applied(status: models.LatticeClusterStatus) -> bool:
    """Whether the reconciler's last pass applied every Cluster API object of the spec.

    A child is bootstrapped, and so pivoted, only then: the phase is already ``Provisioning``
    when an apply failed (``CapiApplied=False``), and a pivot started in that window would
    export a partial graph while the reconciler may not add the rest during the pivot."""
    return any(
        c.type == conditions.CAPI_APPLIED and c.status is ConditionStatus.TRUE for c in status.conditions
    )


def agent_connected(status: models.LatticeClusterStatus, now: dt.datetime) -> models.LatticeClusterStatus:
    if status.phase is Phase.PROVISIONING and not capi_applied(status):
        raise StepRejected("the Cluster API objects are not all applied yet")
    phase = _advance(status, lifecycle.Event.AGENT_CONNECTED)
    conds = _condition(
        status,
        conditions.AGENT_CONNECTED,
        ConditionStatus.TRUE,
        "StreamOpen",
        "the agent's outbound stream to this cell is up",
        now,
        status.observed_generation,
    )
    message = "agent connected; bootstrapping" if phase is Phase.BOOTSTRAPPING else status.message
    return attrs.evolve(status, phase=phase, conditions=conds, message=message)


BOOTSTRAP_MESSAGE_LIMIT = 1024
"""Characters of the agent's apply error kept in the condition (the object and the apiserver's
words come first)."""


def bootstrap_failed(
    status: models.LatticeClusterStatus, error: str, now: dt.datetime
) -> models.LatticeClusterStatus:
    """The child's agent could not apply the bootstrap payload; ``error`` names the object and
    carries the apiserver's message. The cell retries; the phase stays ``Bootstrapping``."""
    if status.phase is not Phase.BOOTSTRAPPING:
        raise StepRejected(f"not bootstrapping (phase {status.phase})")
    text = error.strip() or "the agent reported failure without a reason"
    if len(text) > BOOTSTRAP_MESSAGE_LIMIT:
        text = text[: BOOTSTRAP_MESSAGE_LIMIT - 1] + "…"
    return attrs.evolve(
        status,
        message=f"bootstrap payload not applied: {text}",
        conditions=_condition(
            status,
            conditions.BOOTSTRAPPED,
            ConditionStatus.FALSE,
            "ApplyFailed",
            text,
            now,
            status.observed_generation,
        ),
    )


def bootstrap_completed(status: models.LatticeClusterStatus, now: dt.datetime) -> models.LatticeClusterStatus:
    phase = _advance(status, lifecycle.Event.BOOTSTRAP_COMPLETED)
    status = attrs.evolve(
        status,
        conditions=_condition(
            status,
            conditions.BOOTSTRAPPED,
            ConditionStatus.TRUE,
            "Applied",
            "the agent applied the bootstrap payload (Lattice and Cluster API CRDs, the operator, "
            "Cilium's CRDs and LB-IPAM pool, Flux)",
            now,
            status.observed_generation,
        ),
    )
    return attrs.evolve(
        status,
        phase=phase,
        message="bootstrap complete; pivoting the Cluster API objects into the cluster",
        pivot=PivotStatus(step=PivotStep.EXPORTING, attempt=1),
        conditions=_condition(
            status,
            conditions.PIVOTED,
            ConditionStatus.FALSE,
            "Pivoting",
            "exporting the Cluster API objects",
            now,
            status.observed_generation,
        ),
    )


_STEP_MESSAGES = {
    PivotStep.EXPORTING: "exporting the Cluster API objects (clusterctl move --to-directory)",
    PivotStep.TRANSFERRING: "sending the export to the agent over its stream",
    PivotStep.IMPORTING: "the agent is importing the objects into its cluster",
    PivotStep.DELETING_SOURCE: "the child holds its objects; deleting this cell's copies",
}


def pivot_step(
    status: models.LatticeClusterStatus, step: PivotStep, now: dt.datetime, objects: int | None = None
) -> models.LatticeClusterStatus:
    if status.phase is not Phase.PIVOTING or status.pivot is None:
        raise StepRejected(f"no pivot in progress (phase {status.phase.value})")
    pivot = attrs.evolve(
        status.pivot, step=step, objects=objects if objects is not None else status.pivot.objects
    )
    message = _STEP_MESSAGES.get(step, step.value)
    return attrs.evolve(
        status,
        pivot=pivot,
        message=f"pivoting (attempt {pivot.attempt}): {message}",
        conditions=_condition(
            status,
            conditions.PIVOTED,
            ConditionStatus.FALSE,
            step.value,
            message,
            now,
            status.observed_generation,
        ),
    )


def before_export(status: models.LatticeClusterStatus) -> bool:
    """Whether ``status`` is a pivot that has exported nothing yet (step ``Exporting``: waiting
    for Cluster API, or about to start an attempt): every object is still on this cell."""
    return (
        status.phase is Phase.PIVOTING
        and status.pivot is not None
        and status.pivot.step is PivotStep.EXPORTING
    )


PIVOT_WAIT_SHOWN = 3
"""How many of Cluster API's blockers a waiting pivot names in the status (the rest counted)."""
PIVOT_WAIT_REASON = "WaitingForClusterAPI"


def pivot_waiting(
    status: models.LatticeClusterStatus, blockers: tuple[str, ...], now: dt.datetime
) -> models.LatticeClusterStatus:
    """The cell's driver waits for Cluster API before the export, because clusterctl's preflight
    would refuse the cluster now (:func:`lattice.domain.capi_reports.move_blockers`): the status
    says on what. Not an attempt: nothing is paused or exported yet."""
    if not before_export(status):
        raise StepRejected("not about to export")
    if not blockers:
        raise StepRejected("nothing to wait for")
    shown = "; ".join(blockers[:PIVOT_WAIT_SHOWN])
    if len(blockers) > PIVOT_WAIT_SHOWN:
        shown += f"; and {len(blockers) - PIVOT_WAIT_SHOWN} more"
    return attrs.evolve(
        status,
        message=f"pivot waits for Cluster API: {shown}",
        conditions=_condition(
            status,
            conditions.PIVOTED,
            ConditionStatus.FALSE,
            PIVOT_WAIT_REASON,
            f"clusterctl's move preflight would refuse the cluster now: {shown}",
            now,
            status.observed_generation,
        ),
    )


def pivot_failed(
    status: models.LatticeClusterStatus, error: str, now: dt.datetime
) -> models.LatticeClusterStatus:
    """Count the failure: retry (source unpaused, export again) or give up after the last try
    (the policy: :func:`lattice.domain.pivot_failure.pivot_failure`)."""
    if status.pivot is None:
        raise StepRejected("no pivot in progress")
    attempt = status.pivot.attempt
    policy = pivot_failure.pivot_failure(attempt, pivot_failure.Fault.FAILED)
    if policy.next_attempt is None:
        phase = _advance(status, lifecycle.Event.PIVOT_ABANDONED)
        message = (
            f"pivot abandoned after {attempt} attempts: {error}; the source stays in charge "
            "until the spec changes"
        )
        pivot = attrs.evolve(status.pivot, last_error=error)
    else:
        phase = _advance(status, lifecycle.Event.PIVOT_FAILED)
        message = f"pivot attempt {attempt} failed: {error}; retrying"
        pivot = PivotStatus(step=PivotStep.EXPORTING, attempt=policy.next_attempt, last_error=error)
    return attrs.evolve(
        status,
        phase=phase,
        pivot=pivot,
        message=message,
        conditions=_condition(
            status,
            conditions.PIVOTED,
            ConditionStatus.FALSE,
            "PivotFailed",
            error,
            now,
            status.observed_generation,
        ),
    )


def pivot_abandoned(status: models.LatticeClusterStatus, generation: int) -> bool:
    """Whether the cell gave up pivoting this spec (``Failed`` after the last attempt).

    Such a cluster stays ``Failed`` with the source in charge until its spec changes: a new
    generation starts over from ``Provisioning`` with fresh attempts. Without this the reconciler
    would take ``Failed`` back to ``Provisioning`` at once and, the agent being connected, the
    cell would start the same failing pivot again, forever."""
    return (
        status.phase is Phase.FAILED
        and status.pivot is not None
        and status.pivot.attempt >= MAX_PIVOT_ATTEMPTS
        and status.observed_generation == generation
    )


def pivot_succeeded(status: models.LatticeClusterStatus, now: dt.datetime) -> models.LatticeClusterStatus:
    phase = _advance(status, lifecycle.Event.PIVOT_SUCCEEDED)
    if status.pivot is None:  # a status written by hand: Pivoting without a pivot
        raise StepRejected("no pivot in progress")
    message = "self-managing: the cluster holds its own Cluster API objects"
    conds = _condition(
        status,
        conditions.PIVOTED,
        ConditionStatus.TRUE,
        "Pivoted",
        "the cluster's Cluster API objects live in the cluster itself",
        now,
        status.observed_generation,
    )
    conds = conditions.set_condition(
        conds,
        conditions.READY,
        ConditionStatus.TRUE,
        "SelfManaging",
        message,
        now=now,
        generation=status.observed_generation,
    )
    return attrs.evolve(
        status,
        phase=phase,
        message=message,
        pivot=attrs.evolve(status.pivot, step=PivotStep.COMPLETE, last_error=None),
        conditions=conds,
    )


PIVOT_CANCELLED_MESSAGE = "deleted before its pivot exported anything: deleting its Cluster API objects here"


def pivot_cancelled(status: models.LatticeClusterStatus, now: dt.datetime) -> models.LatticeClusterStatus:
    """The cluster was deleted while its pivot had not exported anything (step ``Exporting``,
    waiting for Cluster API or about to start an attempt, the source unpaused by the cell's
    driver): every object is still on this cell, so the pivot ends and the deletion goes on
    here, as for a cluster never pivoted. Once an export has been sent, a deletion waits for the
    pivot to finish and then takes the objects back instead."""
    if not before_export(status):
        raise StepRejected("no pivot that has not exported anything")
    message = PIVOT_CANCELLED_MESSAGE
    return attrs.evolve(
        status,
        phase=Phase.DELETING,
        message=message,
        conditions=_condition(
            status,
            conditions.PIVOTED,
            ConditionStatus.FALSE,
            "PivotCancelled",
            message,
            now,
            status.observed_generation,
        ),
    )


def pivoted_away(status: models.LatticeClusterStatus) -> bool:
    """Whether the cluster manages itself now (this cell keeps only a record of it)."""
    return status.pivot is not None and status.pivot.step is PivotStep.COMPLETE


def imported_status() -> models.LatticeClusterStatus:
    return models.LatticeClusterStatus(
        phase=Phase.READY,
        message="self-managing: the cluster holds its own Cluster API objects",
        pivot=PivotStatus(step=PivotStep.COMPLETE, attempt=1),
    )


def child_copy(raw: dict[str, Any], status: models.LatticeClusterStatus) -> dict[str, Any]:
    """The LatticeCluster as the child will hold it: same spec, pivoted status, no cell metadata."""
    meta = raw["metadata"]
    cell_name = (raw.get("spec") or {}).get("cellRef") or ""
    out: dict[str, Any] = {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": {"name": meta["name"], "annotations": {PIVOTED_ANNOTATION: cell_name}},
        "spec": raw["spec"],
        "status": serde.status_to_dict(status),
    }
    if meta.get("labels"):
        out["metadata"]["labels"] = meta["labels"]
    return out


def child_copy_file_name(cluster_name: str) -> str:
    return f"{LATTICE_CLUSTER_FILE_PREFIX}{cluster_name}.json"


# --------------------------------------------------------------------------- unpivot


def annotated(raw: dict[str, Any], annotation: str) -> bool:
    return ((raw.get("metadata") or {}).get("annotations") or {}).get(annotation) == "true"


def _deleting(
    status: models.LatticeClusterStatus,
    unpivot: UnpivotStatus,
    reason: str,
    message: str,
    now: dt.datetime,
) -> models.LatticeClusterStatus:
    conds = _condition(
        status, conditions.DELETING, ConditionStatus.TRUE, reason, message, now, status.observed_generation
    )
    conds = conditions.not_ready_deleting(conds, now=now, generation=status.observed_generation)
    return attrs.evolve(status, phase=Phase.DELETING, unpivot=unpivot, message=message, conditions=conds)


def unpivot_requested(
    status: models.LatticeClusterStatus, name: str, now: dt.datetime
) -> models.LatticeClusterStatus:
    if not pivoted_away(status):
        raise StepRejected("the cluster does not hold its own objects; nothing to take back")
    if status.unpivot is not None and status.unpivot.step is not UnpivotStep.REQUESTED:
        raise StepRejected(f"the unpivot is past the request ({status.unpivot.step.value})")
    return _deleting(
        status,
        UnpivotStatus(step=UnpivotStep.REQUESTED),
        "Unpivoting",
        f"asking {name}'s agent to hand its Cluster API objects back to this cell",
        now,
    )


def unpivot_waiting(
    status: models.LatticeClusterStatus, error: str, now: dt.datetime
) -> models.LatticeClusterStatus:
    """The request failed (refused by the child, or no agent): keep asking, and say why."""
    if status.unpivot is None or status.unpivot.step is not UnpivotStep.REQUESTED:
        raise StepRejected("no unpivot request pending")
    message = (
        f"waiting to take the cluster's Cluster API objects back: {error}; to delete this "
        f"record and leave the machines running, annotate {ABANDON_ANNOTATION}=true"
    )
    return _deleting(status, attrs.evolve(status.unpivot, last_error=error), "UnpivotPending", message, now)


def unpivot_imported(
    status: models.LatticeClusterStatus, objects: int, now: dt.datetime
) -> models.LatticeClusterStatus:
    if status.unpivot is None or status.unpivot.step is not UnpivotStep.REQUESTED:
        raise StepRejected("no unpivot request pending")
    return _deleting(
        status,
        UnpivotStatus(step=UnpivotStep.IMPORTED, objects=objects),
        "Unpivoted",
        f"{objects} Cluster API objects are back on this cell; telling the cluster to let go",
        now,
    )


def unpivot_released(status: models.LatticeClusterStatus, now: dt.datetime) -> models.LatticeClusterStatus:
    if status.unpivot is None or status.unpivot.step is not UnpivotStep.IMPORTED:
        raise StepRejected("the objects are not back on this cell")
    return _deleting(
        status,
        attrs.evolve(status.unpivot, step=UnpivotStep.RELEASED),
        "DeletingCapiObjects",
        "deleting the cluster's Cluster API objects",
        now,
    )


def unpivot_done(status: models.LatticeClusterStatus) -> bool:
    """Whether the cell holds a pivoted child's objects again and may delete them."""
    return status.unpivot is not None and status.unpivot.step is UnpivotStep.RELEASED


def own_children(items: list[dict[str, Any]], own_name: str) -> list[str]:
    """The LatticeClusters this cell created (``spec.cellRef`` names it), by name."""
    return sorted(
        str(item["metadata"]["name"])
        for item in items
        if (item.get("spec") or {}).get("cellRef") == own_name and item["metadata"]["name"] != own_name
    )


# --------------------------------------------------------------------------- reports


class FlowStep(enum.Enum):
    """A step of the runtime flow the cell's driver reached (one transition of this module)."""

    AGENT_CONNECTED = "AgentConnected"
    BOOTSTRAP_COMPLETED = "BootstrapCompleted"
    PIVOT_STEP = "PivotStep"
    PIVOT_FAILED = "PivotFailed"
    PIVOT_SUCCEEDED = "PivotSucceeded"
    PIVOT_CANCELLED = "PivotCancelled"
    UNPIVOT_REQUESTED = "UnpivotRequested"
    UNPIVOT_WAITING = "UnpivotWaiting"
    UNPIVOT_IMPORTED = "UnpivotImported"
    UNPIVOT_RELEASED = "UnpivotReleased"


BEFORE_DELETION = frozenset({FlowStep.AGENT_CONNECTED, FlowStep.BOOTSTRAP_COMPLETED})
"""Steps that stop at a deletion; pivot and unpivot steps go on (a deletion waits for the pivot
to finish, and the unpivot is the deletion)."""

ONLY_AT_DELETION = frozenset({FlowStep.PIVOT_CANCELLED})
"""Steps only a deletion brings: a pivot that has exported nothing is cancelled by it."""


@frozen
class FlowReport:
    """What the driver hands the status's owner: the step reached and its data. The owner
    applies it (:func:`apply_report`) to the status as stored and writes the result before the
    driver starts the next step."""

    step: FlowStep
    pivot_step: PivotStep | None = None
    """The pivot step reached (``PIVOT_STEP``)."""
    objects: int | None = None
    """Objects exported (``PIVOT_STEP``) or imported back (``UNPIVOT_IMPORTED``)."""
    error: str = ""
    """Why the attempt failed (``PIVOT_FAILED``) or the unpivot waits (``UNPIVOT_WAITING``)."""


def apply_report(
    status: models.LatticeClusterStatus,
    report: FlowReport,
    *,
    name: str,
    deleting: bool,
    now: dt.datetime,
) -> models.LatticeClusterStatus:
    """``status`` after ``report``'s transition; :class:`StepRejected` when it does not apply
    (the step is not accepted in this phase, or the cluster is being deleted and the step stops
    at a deletion)."""
    step = report.step
    if deleting and step in BEFORE_DELETION:
        raise StepRejected(f"{name} is being deleted")
    if not deleting and step in ONLY_AT_DELETION:
        raise StepRejected(f"{name} is not being deleted")
    if step is FlowStep.AGENT_CONNECTED:
        return agent_connected(status, now)
    if step is FlowStep.BOOTSTRAP_COMPLETED:
        return bootstrap_completed(status, now)
    if step is FlowStep.PIVOT_STEP:
        if report.pivot_step is None:
            raise StepRejected("a pivot step report names no step")
        return pivot_step(status, report.pivot_step, now, report.objects)
    if step is FlowStep.PIVOT_FAILED:
        return pivot_failed(status, report.error, now)
    if step is FlowStep.PIVOT_SUCCEEDED:
        return pivot_succeeded(status, now)
    if step is FlowStep.PIVOT_CANCELLED:
        return pivot_cancelled(status, now)
    if step is FlowStep.UNPIVOT_REQUESTED:
        return unpivot_requested(status, name, now)
    if step is FlowStep.UNPIVOT_WAITING:
        return unpivot_waiting(status, report.error, now)
    if step is FlowStep.UNPIVOT_IMPORTED:
        return unpivot_imported(status, report.objects or 0, now)
    return unpivot_released(status, now)
