from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain.lifecycle import TRANSITIONS, Effect, Event, Rejected, Transition, transition
from lattice.domain.models import Phase

HAPPY_PATH = [
    (Event.SPEC_ACCEPTED, Phase.PROVISIONING),
    (Event.AGENT_CONNECTED, Phase.BOOTSTRAPPING),
    (Event.BOOTSTRAP_COMPLETED, Phase.PIVOTING),
    (Event.PIVOT_FAILED, Phase.PIVOTING),
    (Event.PIVOT_SUCCEEDED, Phase.READY),
    (Event.SPEC_ACCEPTED, Phase.READY),
    (Event.DELETION_REQUESTED, Phase.DELETING),
    (Event.CAPI_DELETED, Phase.DELETING),
]


def test_happy_path() -> None:
    phase = Phase.PENDING
    for event, expected in HAPPY_PATH:
        result = transition(phase, event)
        assert isinstance(result, Transition), result
        assert result.phase is expected
        phase = result.phase


@pytest.mark.parametrize(
    ("phase", "event", "effects"),
    [
        (Phase.PENDING, Event.SPEC_ACCEPTED, (Effect.ISSUE_BOOTSTRAP_TOKEN, Effect.APPLY_CAPI)),
        (Phase.PIVOTING, Event.PIVOT_SUCCEEDED, (Effect.DELETE_SOURCE_CAPI,)),
        (Phase.PIVOTING, Event.PIVOT_FAILED, (Effect.UNPAUSE_SOURCE, Effect.START_PIVOT)),
        (Phase.PIVOTING, Event.PIVOT_ABANDONED, (Effect.UNPAUSE_SOURCE, Effect.RECORD_FAILURE)),
        (
            Phase.PIVOTING,
            Event.DELETION_REQUESTED,
            (Effect.UNPAUSE_SOURCE, Effect.REVOKE_BOOTSTRAP_TOKEN, Effect.DELETE_CAPI),
        ),
        (Phase.DELETING, Event.CAPI_DELETED, (Effect.REMOVE_FINALIZER,)),
        (Phase.PROVISIONING, Event.SPEC_REJECTED, (Effect.RECORD_FAILURE,)),
        (Phase.FAILED, Event.SPEC_REJECTED, ()),
    ],
)
def test_effects(phase: Phase, event: Event, effects: tuple[Effect, ...]) -> None:
    result = transition(phase, event)
    assert isinstance(result, Transition)
    assert result.effects == effects


def test_invalid_transitions_are_rejected_with_a_reason() -> None:
    result = transition(Phase.PENDING, Event.PIVOT_SUCCEEDED)
    assert isinstance(result, Rejected)
    assert "PivotSucceeded is not allowed in phase Pending" in result.reason
    assert "SpecAccepted" in result.reason
    assert isinstance(transition(Phase.PIVOTING, Event.SPEC_ACCEPTED), Rejected)


@given(st.lists(st.sampled_from(list(Event)), max_size=30))
def test_ready_only_after_a_successful_pivot(events: list[Event]) -> None:
    phase = Phase.PENDING
    for event in events:
        result = transition(phase, event)
        if isinstance(result, Rejected):
            continue
        if result.phase is Phase.READY and phase is not Phase.READY:
            assert (phase, event) == (Phase.PIVOTING, Event.PIVOT_SUCCEEDED)
        phase = result.phase


def test_nothing_leaves_deleting() -> None:
    for (phase, _event), result in TRANSITIONS.items():
        if phase is Phase.DELETING:
            assert result.phase is Phase.DELETING


def test_every_phase_can_be_deleted() -> None:
    for phase in Phase:
        result = transition(phase, Event.DELETION_REQUESTED)
        assert isinstance(result, Transition)
        assert result.phase is Phase.DELETING
