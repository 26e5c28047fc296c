"""The LatticeCluster reconcile decision: observed state in, a plan (data) out.

``plan_cluster`` is pure: it reads the LatticeCluster as stored, the CAPI objects found for it
(or ``None`` when they could not be read: *unreadable* is not *missing*), the operator's context
and ``now``; it returns what to write. The controller in ``lattice.app`` executes the plan and
feeds failures back through :func:`status_after_failure`. Writes are minimal: each applied
object carries the hash of what was applied (``APPLIED_HASH``); an object whose annotation
matches its desired hash (or, without the annotation, whose desired fields are all present and
equal) is not applied again, and an unchanged status is not written, so an unchanged spec makes
no writes at all, whatever the CAPI controllers and webhooks default or write in those objects.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import json
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs
from attrs import frozen

from lattice.domain import (
    capi,
    capi_reports,
    cert_renewal,
    cluster_observations,
    conditions,
    lifecycle,
    models,
    pivot_flow,
    serde,
    validation,
)
from lattice.domain.errors import FieldError
from lattice.domain.models import ConditionStatus, Phase
from lattice.domain.refs import ResourceRef

FINALIZER = "lattice.dev/cluster-cleanup"
FIELD_MANAGER = "lattice-operator"
# On every object the operator applies: the hash of the object as compiled (without this
# annotation). Compared instead of the fields, because a webhook or controller may rewrite a
# field the operator set (a defaulted version, a normalised quantity): comparing fields would
# re-apply on every reconcile, and every status write by a controller triggers one.
APPLIED_HASH = "lattice.dev/applied-hash"
PROVISIONING_RECHECK_S = 30.0
DELETION_RECHECK_S = 2.0

Manifest = dict[str, Any]


@frozen
class OperatorContext:
    """Who this operator is: the cluster it runs in and how children reach it.

    ``self_name`` is None for an operator that manages clusters without being one of them (the
    temporary bootstrap cluster of ``lattice install``). ``cell_endpoint`` is this cluster's own
    ``parentConfig`` (set when it is a cell); ``self_parent`` is where this cluster itself
    registered, so that its own KubeadmControlPlane compiles exactly as its cell compiled it.
    """

    self_name: str | None = None
    cell_endpoint: capi.ParentEndpoint | None = None
    self_parent: capi.ParentEndpoint | None = None


@frozen
class EventSpec:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@frozen
class FlowOutcome:
    """The pending :class:`lattice.domain.pivot_flow.FlowReport` of a plan: applied (its
    transition is in the plan's status, or changed nothing) or ``rejected`` with the reason."""

    report: pivot_flow.FlowReport
    rejected: str | None = None


@frozen
class Plan:
    finalizers: tuple[str, ...] | None = None  # new list to write; None = leave as is
    apply: tuple[Manifest, ...] = ()
    delete: tuple[ResourceRef, ...] = ()
    status: Manifest | None = None  # full status to write; None = unchanged
    events: tuple[EventSpec, ...] = ()
    requeue_after: float | None = None
    ignored: str | None = None  # why this object is not this operator's business
    unpivot: bool = False  # a pivoted child is deleted: the cell must take its objects back
    cancel_pivot: bool = False  # deleted before its pivot exported anything: the cell cancels it
    revoke_agent: bool = False  # the cluster is gone: its agent's certificates are revoked first
    flow: FlowOutcome | None = None  # what became of the pending flow report; None: not decided here

    @property
    def writes(self) -> bool:
        return bool(self.finalizers is not None or self.apply or self.delete or self.status is not None)


def is_mine(raw: Mapping[str, Any], context: OperatorContext) -> str | None:
    """None if this operator reconciles the object, else the reason it does not."""
    if context.self_name is None:
        return None
    name = raw.get("metadata", {}).get("name")
    spec = raw.get("spec")
    cell_ref = spec.get("cellRef") if isinstance(spec, dict) else None
    if context.self_name in (name, cell_ref):
        return None
    return f"belongs to cell {cell_ref!r}, not {context.self_name!r}"


def plan_cluster(
    raw: Mapping[str, Any],
    capi_objects: Sequence[Manifest] | None,
    context: OperatorContext,
    now: dt.datetime,
    reports: Sequence[Manifest] = (),
    observations: cluster_observations.Observations = cluster_observations.NOTHING,
) -> Plan:
    """``reports``: the objects the CAPI controllers and the infrastructure provider create for
    the cluster's machines (KubeadmConfigs, infrastructure machines), read for failures.
    ``observations``: what other parts of the operator learnt of the cluster (its agent, a failed
    bootstrap, the step the cell's driver reached), merged into the status this plan writes: the
    reconciler is the only writer of the status. A pending flow step is applied first
    (:func:`lattice.domain.pivot_flow.apply_report`) and the plan is decided on the stepped
    status; ``Plan.flow`` says whether the step was applied or rejected."""
    reason = is_mine(raw, context)
    if reason is not None:
        return Plan(ignored=reason)
    base, outcome = _with_flow(raw, observations.flow, now)
    plan = _plan_cluster(base, capi_objects, context, now, reports, observations)
    if plan.finalizers is not None:
        return plan  # the finalizers are written alone; the next pass writes the status
    plan = _with_observations(base, plan, observations, now)
    if base is not raw and plan.status is None and base.get("status") != raw.get("status"):
        plan = attrs.evolve(plan, status=base.get("status"))
    if outcome is None:
        return plan
    if outcome.rejected is None and outcome.report.step is pivot_flow.FlowStep.PIVOT_CANCELLED:
        # The step moved the phase to Deleting itself, so the deletion's own Event does not come.
        cancelled = EventSpec("Normal", "PivotCancelled", pivot_flow.PIVOT_CANCELLED_MESSAGE)
        plan = attrs.evolve(plan, events=(cancelled, *plan.events))
    return attrs.evolve(plan, flow=outcome)


def _with_flow(
    raw: Mapping[str, Any], report: pivot_flow.FlowReport | None, now: dt.datetime
) -> tuple[Mapping[str, Any], FlowOutcome | None]:
    """``raw`` with the driver's pending step applied to its status (the rest of the plan is
    decided on that, as the reconcile's next pass after the step was written would), and what
    became of the step. A step waits while the finalizer is not yet written."""
    if report is None:
        return raw, None
    meta = raw.get("metadata", {})
    deleting = bool(meta.get("deletionTimestamp"))
    if not deleting and FINALIZER not in (meta.get("finalizers") or ()):
        return raw, None
    try:
        stepped = pivot_flow.apply_report(
            _current_status(raw), report, name=str(meta.get("name", "")), deleting=deleting, now=now
        )
    except pivot_flow.StepRejected as exc:
        return raw, FlowOutcome(report, rejected=str(exc))
    return {**raw, "status": serde.status_to_dict(stepped)}, FlowOutcome(report)


def _plan_cluster(
    raw: Mapping[str, Any],
    capi_objects: Sequence[Manifest] | None,
    context: OperatorContext,
    now: dt.datetime,
    reports: Sequence[Manifest],
    observations: cluster_observations.Observations,
) -> Plan:
    meta = raw.get("metadata", {})
    generation = int(meta.get("generation", 0))
    finalizers = tuple(meta.get("finalizers", ()))
    status = _current_status(raw)
    if meta.get("deletionTimestamp"):
        return _plan_delete(raw, status, capi_objects, finalizers, generation, now, context)
    if FINALIZER not in finalizers:
        # Ensure the finalizer first and come back: nothing is created that could leak.
        return Plan(finalizers=(*finalizers, FINALIZER), requeue_after=0.0)

    parsed = serde.cluster_from_dict(dict(raw))
    valid = parsed if isinstance(parsed, list) else validation.validate_cluster(parsed)
    if isinstance(valid, list):
        return _plan_invalid(raw, status, valid, generation, now)
    if status.version is not None:
        changed = validation.version_change_errors(
            status.version,
            valid.spec.provider.kubernetes.version,
            ("spec", "provider", "kubernetes", "version"),
        )
        if changed:
            return _plan_invalid(raw, status, changed, generation, now)
    compile_context = _compile_context(valid, context)
    if isinstance(compile_context, FieldError):
        return _plan_invalid(raw, status, [compile_context], generation, now)
    if pivot_flow.pivoted_away(status) and valid.name != context.self_name:
        # The child manages itself; this cell keeps the record and never re-creates its objects.
        return _with_agent(
            raw, _plan_record_only(raw, status, generation, now), observations, now, generation
        )
    if pivot_flow.pivot_abandoned(status, generation):
        # The objects are applied for this generation; the failure stays visible until a new spec.
        return _with_agent(raw, Plan(), observations, now, generation)
    desired = capi.compile_cluster(valid, compile_context)
    return _with_agent(
        raw,
        _plan_apply(
            raw,
            status,
            valid,
            desired,
            capi_objects,
            generation,
            now,
            capi_reports.failures(reports),
            None if capi_objects is None else capi_reports.rollout([*capi_objects, *reports]),
        ),
        observations,
        now,
        generation,
    )


def _with_agent(
    raw: Mapping[str, Any],
    plan: Plan,
    observations: cluster_observations.Observations,
    now: dt.datetime,
    generation: int,
) -> Plan:
    """``plan`` with the agent as observed, and the condition derived from it."""
    return _with_agent_certificate(raw, _with_observations(raw, plan, observations, now), now, generation)


def _with_observations(
    raw: Mapping[str, Any], plan: Plan, observations: cluster_observations.Observations, now: dt.datetime
) -> Plan:
    """``plan`` writing the observed facts too (:func:`cluster_observations.merge`); a Warning
    Event when a failed bootstrap's message is new, a Normal one when a pivot starts waiting for
    Cluster API."""
    source = raw.get("status") if plan.status is None else plan.status
    if (
        observations.bootstrap_error is None
        and not observations.pivot_wait
        and (
            observations.agent is None
            or (isinstance(source, dict) and source.get("agent") == _agent_dict(observations.agent))
        )
    ):
        return plan  # nothing to merge (the usual pass): no parse of the status
    written = _current_status(raw if plan.status is None else {"status": plan.status})
    merged = cluster_observations.merge(written, observations, now)
    if merged == written:
        return plan
    stored = _current_status(raw)
    events = plan.events
    bootstrap_failed = observations.bootstrap_error is not None and merged.phase is Phase.BOOTSTRAPPING
    if bootstrap_failed and merged.message != stored.message:
        events = (*events, EventSpec("Warning", "BootstrapFailed", merged.message or ""))
    if observations.pivot_wait and pivot_flow.before_export(merged) and not _pivot_waiting(stored):
        events = (*events, EventSpec("Normal", "PivotWaiting", merged.message or ""))
    return attrs.evolve(plan, status=_status_plan(raw, merged), events=events)


def _pivot_waiting(status: models.LatticeClusterStatus) -> bool:
    """Whether ``status`` (as stored) already says the pivot waits for Cluster API: one Event
    when the wait starts, not one per change of what it waits for."""
    pivoted = next((c for c in status.conditions if c.type == conditions.PIVOTED), None)
    return pivoted is not None and pivoted.reason == pivot_flow.PIVOT_WAIT_REASON


@functools.lru_cache(maxsize=1024)
def _agent_dict(agent: models.AgentStatus) -> Any:
    return serde.status_to_dict(models.LatticeClusterStatus(agent=agent)).get("agent")


def _with_agent_certificate(raw: Mapping[str, Any], plan: Plan, now: dt.datetime, generation: int) -> Plan:
    """``plan`` with the ``AgentCertificate`` condition of a child whose agent has connected:
    from the expiry of the certificate it last connected with (``status.agent``, observed by the
    cell's agent hub), rechecked when it would change by itself."""
    written = _current_status(raw if plan.status is None else {"status": plan.status})
    not_after = None if written.agent is None else written.agent.certificate_not_after
    if not_after is None:
        return plan
    health = cert_renewal.certificate_health(dt.datetime.fromisoformat(not_after), now)
    before = next((c for c in written.conditions if c.type == conditions.AGENT_CERTIFICATE), None)
    conds = conditions.set_condition(
        written.conditions,
        conditions.AGENT_CERTIFICATE,
        ConditionStatus.TRUE if health.ok else ConditionStatus.FALSE,
        health.reason,
        health.message,
        now=now,
        generation=generation,
    )
    new = serde.status_to_dict(attrs.evolve(written, conditions=conds))
    events = plan.events
    if not health.ok and (before is None or before.reason != health.reason):
        events = (*events, EventSpec("Warning", f"AgentCertificate{health.reason}", health.message))
    requeue = plan.requeue_after
    if health.recheck_at is not None:
        recheck = max((health.recheck_at - now).total_seconds(), 1.0)
        requeue = recheck if requeue is None else min(requeue, recheck)
    unchanged = raw.get("status") if plan.status is None else plan.status
    return attrs.evolve(
        plan, status=plan.status if new == unchanged else new, events=events, requeue_after=requeue
    )


def _plan_record_only(
    raw: Mapping[str, Any], status: models.LatticeClusterStatus, generation: int, now: dt.datetime
) -> Plan:
    """A self-managing child's copy on its cell: its own LatticeCluster is the source of truth.
    An edit here is not applied (nor forwarded); the status says where to make it."""
    if status.observed_generation is None or generation <= status.observed_generation:
        return Plan()
    name = raw.get("metadata", {}).get("name", "")
    message = (
        f"{name} manages itself: this copy's spec (generation {generation}) is not applied; "
        f"edit the LatticeCluster {name} on the cluster itself"
    )
    conds = conditions.set_condition(
        status.conditions,
        conditions.SPEC_VALID,
        ConditionStatus.FALSE,
        "ManagedByCluster",
        message,
        now=now,
        generation=generation,
    )
    new_status = attrs.evolve(status, conditions=conds)
    status_dict = _status_plan(raw, new_status)
    events = () if status_dict is None else (EventSpec("Warning", "ManagedByCluster", message),)
    return Plan(status=status_dict, events=events)


def _compile_context(
    valid: validation.ValidCluster, context: OperatorContext
) -> capi.CompileContext | FieldError:
    if valid.name == context.self_name:
        return capi.CompileContext(parent=context.self_parent)
    if valid.spec.cell_ref is None:
        return capi.CompileContext(parent=None)
    if context.cell_endpoint is None:
        return FieldError(
            ("spec", "cellRef"),
            f"this cluster's cell {valid.spec.cell_ref!r} is not configured to accept children "
            "(the operator runs without a cell endpoint: set parentConfig on the cell)",
        )
    return capi.CompileContext(parent=context.cell_endpoint)


def _current_status(raw: Mapping[str, Any]) -> models.LatticeClusterStatus:
    data = raw.get("status")
    if not isinstance(data, dict) or not data:
        if pivot_flow.PIVOTED_ANNOTATION in (raw.get("metadata", {}).get("annotations") or {}):
            # Imported by a pivot; its restored status may not be written yet, but it is Ready.
            return pivot_flow.imported_status()
        return models.LatticeClusterStatus()
    parsed = serde.structure(data, models.LatticeClusterStatus, ("status",))
    return parsed if isinstance(parsed, models.LatticeClusterStatus) else models.LatticeClusterStatus()


def _status_plan(raw: Mapping[str, Any], status: models.LatticeClusterStatus) -> Manifest | None:
    new = serde.status_to_dict(status)
    return None if new == raw.get("status") else new


def _plan_invalid(
    raw: Mapping[str, Any],
    status: models.LatticeClusterStatus,
    errors: Sequence[FieldError],
    generation: int,
    now: dt.datetime,
) -> Plan:
    message = "; ".join(str(e) for e in errors)
    result = lifecycle.transition(status.phase, lifecycle.Event.SPEC_REJECTED)
    phase = result.phase if isinstance(result, lifecycle.Transition) else status.phase
    conds = conditions.set_condition(
        status.conditions,
        conditions.SPEC_VALID,
        ConditionStatus.FALSE,
        "InvalidSpec",
        message,
        now=now,
        generation=generation,
    )
    conds = conditions.set_condition(
        conds,
        conditions.READY,
        ConditionStatus.FALSE,
        "InvalidSpec",
        "the spec is invalid; see the SpecValid condition",
        now=now,
        generation=generation,
    )
    new_status = attrs.evolve(
        status,
        phase=phase,
        message=f"invalid spec: {message}",
        conditions=conds,
        observed_generation=generation,
    )
    status_dict = _status_plan(raw, new_status)
    events: tuple[EventSpec, ...] = ()
    if status_dict is not None and status.message != new_status.message:
        events = (EventSpec("Warning", "InvalidSpec", message),)
    return Plan(status=status_dict, events=events)


def is_subset(desired: Any, observed: Any) -> bool:
    """Whether every field of ``desired`` is already present, equal, in ``observed``."""
    if isinstance(desired, dict):
        return isinstance(observed, dict) and all(
            key in observed and is_subset(value, observed[key]) for key, value in desired.items()
        )
    if isinstance(desired, list):
        return (
            isinstance(observed, list)
            and len(desired) == len(observed)
            and all(is_subset(d, o) for d, o in zip(desired, observed, strict=True))
        )
    return bool(desired == observed)


def applied_hash(obj: Mapping[str, Any]) -> str:
    """SHA-256 (128 bits shown) of ``obj`` as canonical JSON: sorted keys, no whitespace."""
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def with_applied_hash(obj: Mapping[str, Any]) -> Manifest:
    """``obj`` annotated with :data:`APPLIED_HASH` of itself (a new dict; ``obj`` is unchanged)."""
    meta = dict(obj["metadata"])
    meta["annotations"] = {**(meta.get("annotations") or {}), APPLIED_HASH: applied_hash(obj)}
    return {**obj, "metadata": meta}


def up_to_date(desired: Mapping[str, Any], observed: Mapping[str, Any] | None) -> bool:
    """Whether applying ``desired`` (as compiled, not annotated) to ``observed`` is needed: not if
    ``observed`` carries the hash of ``desired`` (fields that others rewrote since are theirs),
    nor if it lacks the annotation but already holds every desired field (applied before the
    annotation existed, or restored by a pivot)."""
    if observed is None:
        return False
    annotations = (observed.get("metadata") or {}).get("annotations") or {}
    if annotations.get(APPLIED_HASH) == applied_hash(desired):
        return True
    return APPLIED_HASH not in annotations and is_subset(desired, observed)


def _plan_apply(
    raw: Mapping[str, Any],
    status: models.LatticeClusterStatus,
    valid: validation.ValidCluster,
    desired: Sequence[Manifest],
    capi_objects: Sequence[Manifest] | None,
    generation: int,
    now: dt.datetime,
    failures: Sequence[capi_reports.CapiFailure] = (),
    rolling: capi_reports.Rollout | None = None,
) -> Plan:
    transition = lifecycle.transition(status.phase, lifecycle.Event.SPEC_ACCEPTED)
    conds = conditions.set_condition(
        status.conditions,
        conditions.SPEC_VALID,
        ConditionStatus.TRUE,
        "Valid",
        "",
        now=now,
        generation=generation,
    )
    events: list[EventSpec] = []
    if isinstance(transition, lifecycle.Rejected):
        # During a pivot the source objects must not change; the spec waits for the pivot.
        new_status = attrs.evolve(status, conditions=conds)
        return Plan(status=_status_plan(raw, new_status), requeue_after=PROVISIONING_RECHECK_S)

    observed = None if capi_objects is None else {ResourceRef.of(o): o for o in capi_objects}
    namespace = models.capi_namespace(valid.name)
    if observed is None:
        to_apply = tuple(with_applied_hash(d) for d in desired)
    else:
        # Namespaces are not watched: one that holds the cluster's objects exists.
        in_namespace = any(key.namespace == namespace for key in observed)
        to_apply = tuple(
            with_applied_hash(d)
            for d in desired
            if not (d["kind"] == "Namespace" and in_namespace)
            and not up_to_date(d, observed.get(ResourceRef.of(d)))
        )
    applying = (
        f"applying {len(to_apply)} of {len(desired)} Cluster API objects in {namespace}" if to_apply else None
    )
    conds = conditions.set_condition(
        conds,
        conditions.CAPI_APPLIED,
        ConditionStatus.TRUE,
        "Applied",
        f"{len(desired)} Cluster API objects in namespace {namespace}",
        now=now,
        generation=generation,
    )
    cluster_obj = (
        None
        if observed is None
        else observed.get(ResourceRef(f"{capi.CLUSTER_API}/v1beta2", "Cluster", valid.name, namespace))
    )
    infra, control_plane = _capi_progress(cluster_obj)
    conds = conditions.set_condition(
        conds,
        conditions.INFRASTRUCTURE_READY,
        ConditionStatus.TRUE if infra else ConditionStatus.FALSE,
        "Provisioned" if infra else "WaitingForInfrastructure",
        "" if infra else "the infrastructure provider has not reported the cluster provisioned",
        now=now,
        generation=generation,
    )
    conds = conditions.set_condition(
        conds,
        conditions.CONTROL_PLANE_INITIALIZED,
        ConditionStatus.TRUE if control_plane else ConditionStatus.FALSE,
        "Initialized" if control_plane else "WaitingForControlPlane",
        "" if control_plane else "kubeadm has not initialized the control plane",
        now=now,
        generation=generation,
    )
    conds = _provisioning_health(status.conditions, conds, failures, events, now, generation)
    conds = _rolling_out(status.conditions, conds, rolling, events, now, generation)
    phase = transition.phase
    ready = phase is Phase.READY
    conds = conditions.set_condition(
        conds,
        conditions.READY,
        ConditionStatus.TRUE if ready else ConditionStatus.FALSE,
        "SelfManaging" if ready else phase.value,
        _phase_message(phase, infra, control_plane),
        now=now,
        generation=generation,
    )
    if phase is not status.phase:
        # One Event per transition, as Kubernetes' recorders do: the objects applied with it are
        # part of the transition's message, not an Event (and an apiserver write) of their own.
        message = _phase_message(phase, infra, control_plane)
        if applying is not None:
            message = f"{applying}; {message.removeprefix(APPLIED_PREFIX)}"
        events.insert(0, EventSpec("Normal", phase.value, message))
    elif applying is not None:
        events.insert(0, EventSpec("Normal", "Applying", applying))
    new_status = attrs.evolve(
        status,
        phase=phase,
        message=_failure_message(failures)
        if failures
        else rolling.describe()
        if rolling is not None
        else _phase_message(phase, infra, control_plane),
        conditions=conds,
        observed_generation=generation,
        capi_namespace=namespace,
        version=valid.spec.provider.kubernetes.version,
    )
    return Plan(
        apply=to_apply,
        status=_status_plan(raw, new_status),
        events=tuple(events),
        requeue_after=None if ready else PROVISIONING_RECHECK_S,
    )


MAX_FAILURES_SHOWN = 3


def _failure_message(failures: Sequence[capi_reports.CapiFailure]) -> str:
    shown = "; ".join(f.describe() for f in failures[:MAX_FAILURES_SHOWN])
    more = len(failures) - MAX_FAILURES_SHOWN
    return f"{shown}; and {more} more" if more > 0 else shown


def _provisioning_health(
    before: Sequence[models.Condition],
    conds: Sequence[models.Condition],
    failures: Sequence[capi_reports.CapiFailure],
    events: list[EventSpec],
    now: dt.datetime,
    generation: int,
) -> tuple[models.Condition, ...]:
    """``ProvisioningHealthy``: False with CAPI's own message while a controller or the
    infrastructure provider reports a failure; a Warning Event each time that message changes."""
    if not failures:
        return conditions.set_condition(
            conds,
            conditions.PROVISIONING_HEALTHY,
            ConditionStatus.TRUE,
            "NoFailures",
            "",
            now=now,
            generation=generation,
        )
    message = _failure_message(failures)
    previous = next((c for c in before if c.type == conditions.PROVISIONING_HEALTHY), None)
    if previous is None or previous.status is not ConditionStatus.FALSE or previous.message != message:
        events.append(EventSpec("Warning", failures[0].reason, message))
    return conditions.set_condition(
        conds,
        conditions.PROVISIONING_HEALTHY,
        ConditionStatus.FALSE,
        failures[0].reason,
        message,
        now=now,
        generation=generation,
    )


def _rolling_out(
    before: Sequence[models.Condition],
    conds: Sequence[models.Condition],
    rolling: capi_reports.Rollout | None,
    events: list[EventSpec],
    now: dt.datetime,
    generation: int,
) -> tuple[models.Condition, ...]:
    """``RollingOut``: True with the Machines up to date of total and the controllers' own
    messages while KCP or a MachineDeployment rolls out a change (a version upgrade); an Event
    when a rollout starts and when it ends."""
    previous = next((c for c in before if c.type == conditions.ROLLING_OUT), None)
    was_rolling = previous is not None and previous.status is ConditionStatus.TRUE
    if rolling is None:
        if was_rolling:
            events.append(EventSpec("Normal", "RolledOut", "every Machine is up to date"))
        return conditions.set_condition(
            conds,
            conditions.ROLLING_OUT,
            ConditionStatus.FALSE,
            "UpToDate",
            "",
            now=now,
            generation=generation,
        )
    if not was_rolling:
        events.append(EventSpec("Normal", "RollingOut", rolling.describe()))
    return conditions.set_condition(
        conds,
        conditions.ROLLING_OUT,
        ConditionStatus.TRUE,
        "RollingOut",
        rolling.describe(),
        now=now,
        generation=generation,
    )


def _capi_progress(cluster_obj: Mapping[str, Any] | None) -> tuple[bool, bool]:
    if cluster_obj is None:
        return (False, False)
    initialization = cluster_obj.get("status", {}).get("initialization", {})
    return (
        bool(initialization.get("infrastructureProvisioned")),
        bool(initialization.get("controlPlaneInitialized")),
    )


APPLIED_PREFIX = "Cluster API objects applied; "


def _phase_message(phase: Phase, infra: bool, control_plane: bool) -> str:
    if phase is Phase.READY:
        return "self-managing: the cluster holds its own Cluster API objects"
    if phase is Phase.PROVISIONING:
        if not infra:
            return f"{APPLIED_PREFIX}waiting for the infrastructure"
        if not control_plane:
            return "infrastructure ready; waiting for the control plane to initialize"
        return "control plane initialized; waiting for the agent to connect"
    if phase is Phase.BOOTSTRAPPING:
        return "agent connected; bootstrapping"
    return phase.value


UNPIVOT_RECHECK_S = 10.0


def _without_finalizer(finalizers: tuple[str, ...], *events: EventSpec) -> Plan:
    return Plan(finalizers=tuple(f for f in finalizers if f != FINALIZER), events=events, revoke_agent=True)


def _plan_wait(
    raw: Mapping[str, Any],
    status: models.LatticeClusterStatus,
    reason: str,
    message: str,
    generation: int,
    now: dt.datetime,
    *,
    phase: Phase = Phase.DELETING,
    unpivot: bool = False,
    cancel_pivot: bool = False,
) -> Plan:
    """Deletion waits (for a pivot, for the child, for an administrator); the status says why."""
    conds = conditions.set_condition(
        status.conditions,
        conditions.DELETING,
        ConditionStatus.TRUE,
        reason,
        message,
        now=now,
        generation=generation,
    )
    conds = conditions.not_ready_deleting(conds, now=now, generation=generation)
    events = () if status.message == message else (EventSpec("Normal", reason, message),)
    new_status = attrs.evolve(status, phase=phase, message=message, conditions=conds)
    return Plan(
        status=_status_plan(raw, new_status),
        events=events,
        requeue_after=UNPIVOT_RECHECK_S,
        unpivot=unpivot,
        cancel_pivot=cancel_pivot,
    )


def _plan_delete(
    raw: Mapping[str, Any],
    status: models.LatticeClusterStatus,
    capi_objects: Sequence[Manifest] | None,
    finalizers: tuple[str, ...],
    generation: int,
    now: dt.datetime,
    context: OperatorContext,
) -> Plan:
    if FINALIZER not in finalizers:
        return Plan()
    name = str(raw.get("metadata", {}).get("name", ""))
    if pivot_flow.annotated(dict(raw), pivot_flow.ABANDON_ANNOTATION):
        return _without_finalizer(
            finalizers,
            EventSpec(
                "Warning",
                "InfrastructureAbandoned",
                f"deleted with {pivot_flow.ABANDON_ANNOTATION}=true: the cluster's machines and Cluster API "
                "objects are left as they are",
            ),
        )
    if name == context.self_name:
        return _plan_delete_self(raw, status, finalizers, generation, now, context)
    if status.phase is Phase.PIVOTING:
        # The objects may be on either side: finish the pivot, then take them back. Before the
        # export they are all here: the cell's driver (woken, even without the agent) cancels
        # the pivot, and the pass that writes that deletes them as for a cluster never pivoted.
        return _plan_wait(
            raw,
            status,
            "WaitingForPivot",
            "deletion waits for the pivot in progress to finish; the objects are then taken back",
            generation,
            now,
            phase=Phase.PIVOTING,
            cancel_pivot=pivot_flow.before_export(status),
        )
    if pivot_flow.pivoted_away(status) and not pivot_flow.unpivot_done(status):
        if status.unpivot is not None:  # the cell's driver owns the Deleting condition now
            return Plan(requeue_after=UNPIVOT_RECHECK_S, unpivot=True)
        return _plan_wait(
            raw,
            status,
            "Unpivoting",
            f"waiting for {name} to hand its Cluster API objects back to this cell",
            generation,
            now,
            unpivot=True,
        )
    events: list[EventSpec] = []
    conds = conditions.set_condition(
        status.conditions,
        conditions.DELETING,
        ConditionStatus.TRUE,
        "DeletingCapiObjects",
        "deleting the cluster's Cluster API objects",
        now=now,
        generation=generation,
    )
    conds = conditions.not_ready_deleting(conds, now=now, generation=generation)
    if status.phase is not Phase.DELETING:
        events.append(EventSpec("Normal", "Deleting", "deleting the cluster's Cluster API objects"))
    if capi_objects is None:
        new_status = attrs.evolve(status, phase=Phase.DELETING, conditions=conds)
        return Plan(
            status=_status_plan(raw, new_status),
            events=tuple(events),
            requeue_after=DELETION_RECHECK_S,
        )
    keys = [ResourceRef.of(o) for o in capi_objects if not o["metadata"].get("deletionTimestamp")]
    remaining = len(capi_objects)
    if remaining == 0:
        # The namespace goes with the cluster: whatever else was kept there for it (its
        # registration Secret) is the cluster's too.
        events.append(EventSpec("Normal", "Deleted", "all Cluster API objects are gone"))
        namespace = ResourceRef("v1", "Namespace", models.capi_namespace(name), None)
        return Plan(
            finalizers=tuple(f for f in finalizers if f != FINALIZER),
            delete=(namespace,),
            events=tuple(events),
            revoke_agent=True,
        )
    # Delete the Cluster first and let CAPI's controllers cascade; whatever no controller
    # removes (no controllers, or objects they do not own) is deleted once the Cluster is gone.
    clusters = [k for k in keys if k.group_kind == (capi.CLUSTER_API, "Cluster")]
    has_cluster = any(ResourceRef.of(o).kind == "Cluster" for o in capi_objects)
    to_delete = tuple(clusters if has_cluster else keys)
    message = f"waiting for {remaining} Cluster API object(s) to be deleted"
    new_status = attrs.evolve(status, phase=Phase.DELETING, message=message, conditions=conds)
    return Plan(
        delete=to_delete,
        status=_status_plan(raw, new_status),
        events=tuple(events),
        requeue_after=DELETION_RECHECK_S,
    )


def _plan_delete_self(
    raw: Mapping[str, Any],
    status: models.LatticeClusterStatus,
    finalizers: tuple[str, ...],
    generation: int,
    now: dt.datetime,
    context: OperatorContext,
) -> Plan:
    """A cluster's own LatticeCluster: it never deletes its own infrastructure (it would cut the
    branch it sits on). Its parent takes the objects back over the agent's stream and deletes
    them; the agent marks the LatticeCluster when that is done."""
    if pivot_flow.annotated(dict(raw), pivot_flow.UNPIVOTED_ANNOTATION):
        return _without_finalizer(
            finalizers,
            EventSpec("Normal", "Unpivoted", "the parent cell holds the cluster's Cluster API objects"),
        )
    if context.self_parent is None:
        return _plan_wait(
            raw,
            status,
            "NoParent",
            "this cluster has no parent to hand its Cluster API objects to, so it cannot delete "
            "itself: stop its machines by hand (`lattice down` for the local demo), or annotate "
            f"{pivot_flow.ABANDON_ANNOTATION}=true to delete only this record",
            generation,
            now,
        )
    return _plan_wait(
        raw,
        status,
        "Unpivoting",
        "the agent is handing the cluster's Cluster API objects back to its parent cell, which "
        "then deletes the machines; if the parent is gone for good, annotate "
        f"{pivot_flow.ABANDON_ANNOTATION}=true to delete only this record",
        generation,
        now,
    )


def status_after_failure(raw: Mapping[str, Any], plan: Plan, error: str, now: dt.datetime) -> Manifest:
    """The status to write when executing ``plan`` failed: CapiApplied=False with the error."""
    status = _current_status({"status": plan.status} if plan.status is not None else raw)
    generation = int(raw.get("metadata", {}).get("generation", 0))
    conds = conditions.set_condition(
        status.conditions,
        conditions.CAPI_APPLIED,
        ConditionStatus.FALSE,
        "ApplyFailed",
        error,
        now=now,
        generation=generation,
    )
    new = attrs.evolve(status, conditions=conds, message=f"error: {error}")
    # observedGeneration moves only on success.
    previous = _current_status(raw).observed_generation
    return serde.status_to_dict(attrs.evolve(new, observed_generation=previous))
