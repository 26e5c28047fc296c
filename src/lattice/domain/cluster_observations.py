"""Facts about a LatticeCluster that other parts of the operator learn, for its reconciler to merge.

One writer per object's status, in the Cluster API manner: the LatticeCluster reconciler
(:func:`lattice.domain.cluster_reconcile.plan_cluster`) owns ``status``. A part that learns something
about a cluster without owning it (the cell's agent hub learns how the cluster's agent is)
hands it over as an :class:`Observations` value, kept in memory per cluster by the controller,
and asks for a reconcile; the reconcile merges the facts with :func:`merge` into the status it
writes. Facts are the latest word, not history: a newer one replaces the older.

The agent's status, a failed bootstrap, what a pivot waits for and the runtime flow's steps
(phase changes, pivot and unpivot steps, as a :class:`lattice.domain.pivot_flow.FlowReport`) go
this way (``docs/architecture.md``, "Status ownership"). A flow report is not a fact that stays:
it is one transition, applied once by the reconcile that writes it and then withdrawn by the
controller.
"""

from __future__ import annotations

import datetime as dt

import attrs
from attrs import frozen

from lattice.domain import agent, models, pivot_flow
from lattice.domain.models import Phase


@frozen
class Observations:
    """What is known of one cluster besides its own object and its Cluster API objects."""

    agent: models.AgentStatus | None = None
    """The cluster's agent as this cell's hub last saw it; None: no word since this process
    started (the status keeps what it says)."""
    bootstrap_error: str | None = None
    """Why the agent could not apply the bootstrap payload, the last time it was sent; None:
    nothing failed since the last success (or since this process started)."""
    pivot_wait: tuple[str, ...] = ()
    """What Cluster API must settle before the cell's driver exports the cluster for its pivot
    (clusterctl's preflight blockers); (): the driver is not waiting on it."""
    flow: pivot_flow.FlowReport | None = None
    """The step of the runtime flow the cell's driver reached and waits to see written; None:
    none pending."""


NOTHING = Observations()


def _rfc3339(moment: dt.datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def agent_status(status: agent.AgentStatus) -> models.AgentStatus:
    """``status.agent`` as the hub's view of an agent says it (a peer's reports bounded by
    :func:`lattice.domain.agent.reported`)."""
    health = status.health
    return models.AgentStatus(
        connected=status.connection is agent.Connection.CONNECTED,
        state=status.state.value,
        version=status.agent_version or None,
        last_heartbeat_time=_rfc3339(status.last_heartbeat),
        nodes=None if health is None else f"{health.ready_nodes}/{health.total_nodes}",
        reported=() if health is None else agent.reported(health.conditions),
        certificate_not_after=_rfc3339(status.certificate_not_after),
    )


def with_agent(observations: Observations, status: models.AgentStatus) -> Observations | None:
    """``observations`` with the agent's newest status; None when that changes nothing."""
    if observations.agent == status:
        return None
    return attrs.evolve(observations, agent=status)


def with_bootstrap(observations: Observations, error: str | None) -> Observations | None:
    """``observations`` with the last bootstrap's outcome (``error``, None: applied); None when
    that changes nothing."""
    if observations.bootstrap_error == error:
        return None
    return attrs.evolve(observations, bootstrap_error=error)


def with_pivot_wait(observations: Observations, blockers: tuple[str, ...]) -> Observations | None:
    """``observations`` with what the pivot now waits for (``()``: nothing); None when that
    changes nothing."""
    if observations.pivot_wait == blockers:
        return None
    return attrs.evolve(observations, pivot_wait=blockers)


def with_flow(observations: Observations, report: pivot_flow.FlowReport | None) -> Observations | None:
    """``observations`` with ``report`` pending (None: withdrawn); None when that changes
    nothing. Reports are compared by identity: two reports of the same step are two steps."""
    if observations.flow is report:
        return None
    return attrs.evolve(observations, flow=report)


def merge(
    status: models.LatticeClusterStatus, observations: Observations, now: dt.datetime
) -> models.LatticeClusterStatus:
    """``status`` with the facts of ``observations``; what was not observed stays as written.
    A failed bootstrap shows while the cluster is ``Bootstrapping``
    (:func:`lattice.domain.pivot_flow.bootstrap_failed`), a pivot's wait for Cluster API while
    it is about to export (:func:`lattice.domain.pivot_flow.pivot_waiting`); after, they are
    history."""
    if observations.agent is not None and status.agent != observations.agent:
        status = attrs.evolve(status, agent=observations.agent)
    if observations.bootstrap_error is not None and status.phase is Phase.BOOTSTRAPPING:
        status = pivot_flow.bootstrap_failed(status, observations.bootstrap_error, now)
    if observations.pivot_wait and pivot_flow.before_export(status):
        status = pivot_flow.pivot_waiting(status, observations.pivot_wait, now)
    return status
