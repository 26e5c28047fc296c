"""The LatticeCluster phase state machine: pure transitions from (phase, event) to (phase, effects).

```
 Pending ──SpecAccepted──▶ Provisioning ──AgentConnected──▶ Bootstrapping ──BootstrapCompleted──▶
 Pivoting ──PivotSucceeded──▶ Ready
 Pivoting ──PivotFailed──▶ Pivoting (retry: unpause the source, export again)
 any live phase ──SpecRejected / ProvisioningFailed / PivotAbandoned──▶ Failed
 Failed ──SpecAccepted──▶ Provisioning        (the user fixed the spec)
 any phase ──DeletionRequested──▶ Deleting ──CapiDeleted──▶ (finalizer removed)
 Spec changes re-apply CAPI in Provisioning, Bootstrapping and Ready; during Pivoting they wait.
```

Invariants (tested as properties): ``Ready`` is reachable only through ``PivotSucceeded`` from
``Pivoting``; nothing leaves ``Deleting`` except ``CapiDeleted``; every invalid pair is rejected
with a reason, never ignored.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping

from attrs import frozen

from lattice.domain.models import Phase


class Event(enum.StrEnum):
    SPEC_ACCEPTED = "SpecAccepted"
    SPEC_REJECTED = "SpecRejected"
    AGENT_CONNECTED = "AgentConnected"
    BOOTSTRAP_COMPLETED = "BootstrapCompleted"
    PIVOT_SUCCEEDED = "PivotSucceeded"
    PIVOT_FAILED = "PivotFailed"
    PIVOT_ABANDONED = "PivotAbandoned"
    PROVISIONING_FAILED = "ProvisioningFailed"
    DELETION_REQUESTED = "DeletionRequested"
    CAPI_DELETED = "CapiDeleted"


class Effect(enum.StrEnum):
    APPLY_CAPI = "ApplyCapi"
    ISSUE_BOOTSTRAP_TOKEN = "IssueBootstrapToken"  # noqa: S105 - an effect name
    SEND_BOOTSTRAP = "SendBootstrap"
    START_PIVOT = "StartPivot"
    UNPAUSE_SOURCE = "UnpauseSource"
    DELETE_SOURCE_CAPI = "DeleteSourceCapi"
    DELETE_CAPI = "DeleteCapi"
    REVOKE_BOOTSTRAP_TOKEN = "RevokeBootstrapToken"  # noqa: S105 - an effect name
    REMOVE_FINALIZER = "RemoveFinalizer"
    RECORD_FAILURE = "RecordFailure"


@frozen
class Transition:
    phase: Phase
    effects: tuple[Effect, ...]


@frozen
class Rejected:
    phase: Phase
    event: Event
    reason: str


_LIVE = (Phase.PENDING, Phase.PROVISIONING, Phase.BOOTSTRAPPING, Phase.PIVOTING)

_TABLE: Mapping[tuple[Phase, Event], Transition] = {
    (Phase.PENDING, Event.SPEC_ACCEPTED): Transition(
        Phase.PROVISIONING, (Effect.ISSUE_BOOTSTRAP_TOKEN, Effect.APPLY_CAPI)
    ),
    (Phase.FAILED, Event.SPEC_ACCEPTED): Transition(
        Phase.PROVISIONING, (Effect.ISSUE_BOOTSTRAP_TOKEN, Effect.APPLY_CAPI)
    ),
    # A spec change while provisioning: re-apply (workers 2 → 3 updates the MachineDeployment).
    (Phase.PROVISIONING, Event.SPEC_ACCEPTED): Transition(Phase.PROVISIONING, (Effect.APPLY_CAPI,)),
    (Phase.BOOTSTRAPPING, Event.SPEC_ACCEPTED): Transition(Phase.BOOTSTRAPPING, (Effect.APPLY_CAPI,)),
    (Phase.READY, Event.SPEC_ACCEPTED): Transition(Phase.READY, (Effect.APPLY_CAPI,)),
    # After the pivot the stream is optional (health only); a reconnect changes nothing.
    (Phase.READY, Event.AGENT_CONNECTED): Transition(Phase.READY, ()),
    (Phase.PROVISIONING, Event.AGENT_CONNECTED): Transition(
        Phase.BOOTSTRAPPING, (Effect.REVOKE_BOOTSTRAP_TOKEN, Effect.SEND_BOOTSTRAP)
    ),
    # An agent that reconnects mid-bootstrap gets the (idempotent) bootstrap again.
    (Phase.BOOTSTRAPPING, Event.AGENT_CONNECTED): Transition(Phase.BOOTSTRAPPING, (Effect.SEND_BOOTSTRAP,)),
    (Phase.BOOTSTRAPPING, Event.BOOTSTRAP_COMPLETED): Transition(Phase.PIVOTING, (Effect.START_PIVOT,)),
    # Reconnect during a pivot: the pivot is idempotent, so it is simply resumed.
    (Phase.PIVOTING, Event.AGENT_CONNECTED): Transition(Phase.PIVOTING, (Effect.START_PIVOT,)),
    (Phase.PIVOTING, Event.PIVOT_SUCCEEDED): Transition(Phase.READY, (Effect.DELETE_SOURCE_CAPI,)),
    (Phase.PIVOTING, Event.PIVOT_FAILED): Transition(
        Phase.PIVOTING, (Effect.UNPAUSE_SOURCE, Effect.START_PIVOT)
    ),
    (Phase.PIVOTING, Event.PIVOT_ABANDONED): Transition(
        Phase.FAILED, (Effect.UNPAUSE_SOURCE, Effect.RECORD_FAILURE)
    ),
    (Phase.DELETING, Event.CAPI_DELETED): Transition(Phase.DELETING, (Effect.REMOVE_FINALIZER,)),
    (Phase.DELETING, Event.DELETION_REQUESTED): Transition(Phase.DELETING, (Effect.DELETE_CAPI,)),
}


def _with_generic_rules() -> dict[tuple[Phase, Event], Transition]:
    table = dict(_TABLE)
    for phase in _LIVE:
        table.setdefault((phase, Event.SPEC_REJECTED), Transition(Phase.FAILED, (Effect.RECORD_FAILURE,)))
        table.setdefault(
            (phase, Event.PROVISIONING_FAILED), Transition(Phase.FAILED, (Effect.RECORD_FAILURE,))
        )
    table.setdefault((Phase.FAILED, Event.SPEC_REJECTED), Transition(Phase.FAILED, ()))
    table.setdefault((Phase.READY, Event.SPEC_REJECTED), Transition(Phase.READY, (Effect.RECORD_FAILURE,)))
    for phase in Phase:
        if phase is Phase.DELETING:
            continue
        effects = (Effect.UNPAUSE_SOURCE,) if phase is Phase.PIVOTING else ()
        table.setdefault(
            (phase, Event.DELETION_REQUESTED),
            Transition(Phase.DELETING, (*effects, Effect.REVOKE_BOOTSTRAP_TOKEN, Effect.DELETE_CAPI)),
        )
    return table


TRANSITIONS: Mapping[tuple[Phase, Event], Transition] = _with_generic_rules()


def transition(phase: Phase, event: Event) -> Transition | Rejected:
    """The next phase and the effects to carry out, or why the event is not allowed now."""
    found = TRANSITIONS.get((phase, event))
    if found is not None:
        return found
    allowed = sorted(e.value for (p, e) in TRANSITIONS if p is phase)
    return Rejected(
        phase,
        event,
        f"{event.value} is not allowed in phase {phase.value} (allowed: {', '.join(allowed)})",
    )
