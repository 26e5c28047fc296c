"""The pivot's failure policy: what a failed attempt costs, and when the cell gives up.

The driver (``lattice.app.operator.child_driver``) classifies what it caught as a :class:`Fault` and acts
on the :class:`FailurePolicy`; :func:`lattice.domain.pivot_flow.pivot_failed` writes the same decision
into the status.
"""

from __future__ import annotations

import enum

from attrs import frozen

MAX_PIVOT_ATTEMPTS = 5
"""Attempts of one spec (generation) before the cell gives up and leaves the source in charge."""


class Fault(enum.Enum):
    """How an attempt went wrong, as the driver classifies what it caught."""

    AGENT_AWAY = "AgentAway"
    """The agent's stream went away or did not answer in time: nothing was decided."""
    FAILED = "Failed"
    """The export, the import, the deletion or the agent failed: the attempt is spent."""


class Response(enum.Enum):
    WAIT_FOR_AGENT = "WaitForAgent"
    """Keep the source paused and resume at the same step when the agent is back."""
    RETRY = "Retry"
    """Unpause the source, count the attempt, start the next one from the export."""
    ABANDON = "Abandon"
    """Unpause the source and give up (``Failed``) until the spec changes."""


@frozen
class FailurePolicy:
    response: Response
    next_attempt: int | None
    """The attempt that follows (``Retry``), else None."""

    @property
    def counts(self) -> bool:
        """Whether the attempt is spent (written through :func:`lattice.domain.pivot_flow.pivot_failed`)."""
        return self.response is not Response.WAIT_FOR_AGENT

    @property
    def unpause(self) -> bool:
        """Whether the source Cluster is unpaused (the source stays in charge)."""
        return self.response is not Response.WAIT_FOR_AGENT


def pivot_failure(attempt: int, fault: Fault) -> FailurePolicy:
    """What a failure during attempt number ``attempt`` leads to. An agent that went away costs
    no attempt; a failure costs one, and the last one (:data:`MAX_PIVOT_ATTEMPTS`) abandons."""
    if fault is Fault.AGENT_AWAY:
        return FailurePolicy(Response.WAIT_FOR_AGENT, None)
    if attempt >= MAX_PIVOT_ATTEMPTS:
        return FailurePolicy(Response.ABANDON, None)
    return FailurePolicy(Response.RETRY, attempt + 1)
