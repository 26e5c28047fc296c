"""metav1.Condition bookkeeping: lastTransitionTime moves only when the status flips."""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence

import attrs

from lattice.domain.models import Condition, ConditionStatus

READY = "Ready"
SPEC_VALID = "SpecValid"
CAPI_APPLIED = "CapiApplied"
INFRASTRUCTURE_READY = "InfrastructureReady"
CONTROL_PLANE_INITIALIZED = "ControlPlaneInitialized"
PROVISIONING_HEALTHY = "ProvisioningHealthy"
AGENT_CONNECTED = "AgentConnected"
AGENT_CERTIFICATE = "AgentCertificate"
BOOTSTRAPPED = "Bootstrapped"
PIVOTED = "Pivoted"
ROLLING_OUT = "RollingOut"
DELETING = "Deleting"

# Display order: the summary first, then the path through the life of a cluster.
ORDER = (
    READY,
    SPEC_VALID,
    CAPI_APPLIED,
    INFRASTRUCTURE_READY,
    CONTROL_PLANE_INITIALIZED,
    AGENT_CONNECTED,
    AGENT_CERTIFICATE,
    PIVOTED,
    DELETING,
)


def rfc3339(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def set_condition(
    conditions: Sequence[Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    *,
    now: dt.datetime,
    generation: int | None,
) -> tuple[Condition, ...]:
    """Upsert one condition; keep its lastTransitionTime unless the status changed."""
    existing = next((c for c in conditions if c.type == type_), None)
    if existing is not None and existing.status == status:
        updated = attrs.evolve(existing, reason=reason, message=message, observed_generation=generation)
    else:
        updated = Condition(
            type=type_,
            status=status,
            reason=reason,
            message=message,
            last_transition_time=rfc3339(now),
            observed_generation=generation,
        )
    rest = [c for c in conditions if c.type != type_]
    return _ordered([*rest, updated])


def get(conditions: Sequence[Condition], type_: str) -> Condition | None:
    return next((c for c in conditions if c.type == type_), None)


def _ordered(conditions: Sequence[Condition]) -> tuple[Condition, ...]:
    def key(condition: Condition) -> tuple[int, str]:
        index = ORDER.index(condition.type) if condition.type in ORDER else len(ORDER)
        return (index, condition.type)

    return tuple(sorted(conditions, key=key))


def not_ready_deleting(
    conditions: Sequence[Condition], *, now: dt.datetime, generation: int | None
) -> tuple[Condition, ...]:
    """``Ready=False`` because the cluster is being deleted (whatever the deletion waits for)."""
    return set_condition(
        conditions,
        READY,
        ConditionStatus.FALSE,
        "Deleting",
        "the cluster is being deleted",
        now=now,
        generation=generation,
    )
