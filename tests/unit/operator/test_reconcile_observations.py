"""One writer of a LatticeCluster's status: the agent hub's observations are merged by the
reconcile (``domain/cluster_observations.py``, ``reconcile.plan_cluster(observations=...)``)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import agent, cluster_observations, cluster_reconcile, models, pivot_flow, serde
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
