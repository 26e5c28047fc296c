from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from lattice.domain import cluster_reconcile, conditions, install_plan, models, pivot_flow
from lattice.domain.models import ConditionStatus, Phase, PivotStep
from lattice.domain.operator_command import OperatorOptions

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def status(phase: Phase, **kw: object) -> models.LatticeClusterStatus:
    return models.LatticeClusterStatus(phase=phase, **kw)  # type: ignore[arg-type]


def applied(value: ConditionStatus = ConditionStatus.TRUE) -> tuple[models.Condition, ...]:
    reason = "Applied" if value is ConditionStatus.TRUE else "ApplyFailed"
    return conditions.set_condition((), conditions.CAPI_APPLIED, value, reason, "", now=NOW, generation=1)


def test_happy_path_through_bootstrap_and_pivot() -> None:
    s = pivot_flow.agent_connected(status(Phase.PROVISIONING, conditions=applied()), NOW)
    assert s.phase is Phase.BOOTSTRAPPING
    assert s.message == "agent connected; bootstrapping"
    s = pivot_flow.bootstrap_completed(s, NOW)
    assert (s.phase, s.pivot) == (Phase.PIVOTING, models.PivotStatus(PivotStep.EXPORTING, 1))
    s = pivot_flow.pivot_step(s, PivotStep.TRANSFERRING, NOW, objects=10)
    assert s.pivot is not None
    assert (s.pivot.step, s.pivot.objects) == (PivotStep.TRANSFERRING, 10)
    assert "attempt 1" in (s.message or "")
    s = pivot_flow.pivot_step(s, PivotStep.IMPORTING, NOW)
    assert s.pivot is not None
    assert s.pivot.objects == 10
    s = pivot_flow.pivot_succeeded(s, NOW)
    assert s.phase is Phase.READY
    assert pivot_flow.pivoted_away(s)
    assert {c.type: c.status.value for c in s.conditions}["Pivoted"] == "True"


def test_a_failed_bootstrap_is_a_condition_naming_the_object_then_success_clears_it() -> None:
    s = status(Phase.BOOTSTRAPPING)
    error = "applying CiliumLoadBalancerIPPool default: spec.blocks[0].cidr: Invalid value"
    s = pivot_flow.bootstrap_failed(s, error, NOW)
    assert s.phase is Phase.BOOTSTRAPPING
    assert s.message == f"bootstrap payload not applied: {error}"
    (cond,) = [c for c in s.conditions if c.type == "Bootstrapped"]
    assert (cond.status.value, cond.reason, cond.message) == ("False", "ApplyFailed", error)
    long = pivot_flow.bootstrap_failed(s, "x" * 5000, NOW)
    (cond,) = [c for c in long.conditions if c.type == "Bootstrapped"]
    assert len(cond.message or "") == pivot_flow.BOOTSTRAP_MESSAGE_LIMIT
    blank = pivot_flow.bootstrap_failed(s, " ", NOW)
    assert "without a reason" in (blank.message or "")
    s = pivot_flow.bootstrap_completed(s, NOW)
    (cond,) = [c for c in s.conditions if c.type == "Bootstrapped"]
    assert (cond.status.value, cond.reason) == ("True", "Applied")
    with pytest.raises(pivot_flow.StepRejected):
        pivot_flow.bootstrap_failed(s, error, NOW)


def test_failures_retry_then_abandon() -> None:
    s = pivot_flow.bootstrap_completed(status(Phase.BOOTSTRAPPING), NOW)
    for attempt in range(1, pivot_flow.MAX_PIVOT_ATTEMPTS):
        s = pivot_flow.pivot_failed(s, f"boom {attempt}", NOW)
        assert s.phase is Phase.PIVOTING
        assert s.pivot is not None
        assert (s.pivot.attempt, s.pivot.last_error) == (attempt + 1, f"boom {attempt}")
    s = pivot_flow.pivot_failed(s, "final", NOW)
    assert s.phase is Phase.FAILED
    assert "abandoned" in (s.message or "")


@pytest.mark.parametrize(
    "conds",
    [(), applied(ConditionStatus.FALSE), applied(ConditionStatus.UNKNOWN)],
    ids=["never-applied", "apply-failed", "unknown"],
)
def test_no_bootstrap_before_every_capi_object_is_applied(conds: tuple[models.Condition, ...]) -> None:
    # A pivot started now would export a partial graph (e.g. without the MachineDeployment).
    s = status(Phase.PROVISIONING, conditions=conds)
    assert not pivot_flow.capi_applied(s)
    with pytest.raises(pivot_flow.StepRejected, match="not all applied"):
        pivot_flow.agent_connected(s, NOW)
    assert pivot_flow.capi_applied(status(Phase.PROVISIONING, conditions=applied()))


@pytest.mark.parametrize(
    "call",
    [
        lambda: pivot_flow.agent_connected(status(Phase.DELETING), NOW),
        lambda: pivot_flow.bootstrap_completed(status(Phase.PROVISIONING), NOW),
        lambda: pivot_flow.pivot_step(status(Phase.READY), PivotStep.IMPORTING, NOW),
        lambda: pivot_flow.pivot_failed(status(Phase.PIVOTING), "x", NOW),
    ],
)
def test_steps_out_of_place_are_rejected(call: object) -> None:
    with pytest.raises(pivot_flow.StepRejected):
        call()  # type: ignore[operator]


def test_child_copy_and_imported_status() -> None:
    raw = {"metadata": {"name": "c", "labels": {"a": "b"}, "uid": "u"}, "spec": {"cellRef": "mgmt"}}
    copy = pivot_flow.child_copy(raw, pivot_flow.imported_status())
    assert copy["metadata"] == {
        "name": "c",
        "annotations": {pivot_flow.PIVOTED_ANNOTATION: "mgmt"},
        "labels": {"a": "b"},
    }
    assert copy["status"]["phase"] == "Ready"
    assert pivot_flow.child_copy_file_name("c") == "LatticeCluster__c.json"
    assert pivot_flow.parse_status({"status": {"phase": "Nope"}}) == models.LatticeClusterStatus()
    # The child's operator sees a pivoted-in cluster as Ready even before its status is written.
    imported = {
        **copy,
        "status": {},
        "metadata": {
            **copy["metadata"],
            "generation": 1,
            "resourceVersion": "1",
            "finalizers": [cluster_reconcile.FINALIZER],
        },
    }
    imported["spec"] = {
        "cellRef": "mgmt",
        "provider": {"type": "local", "kubernetes": {"version": "1.36.3"}},
        "nodes": {"controlPlane": 1, "workers": 1},
    }
    plan = cluster_reconcile.plan_cluster(imported, [], cluster_reconcile.OperatorContext(self_name="c"), NOW)
    assert plan.status is not None
    assert plan.status["phase"] == "Ready"


CLUSTER = {
    "apiVersion": "cluster.x-k8s.io/v1beta2",
    "kind": "Cluster",
    "metadata": {"name": "c", "namespace": "capi-c", "uid": "uid-c", "labels": {"lattice.dev/cluster": "c"}},
    "spec": {
        "infrastructureRef": {"apiGroup": "infrastructure.lattice.dev", "kind": "LocalCluster", "name": "c"}
    },
}


def test_install_resource_set_selects_the_cluster_by_its_label() -> None:
    secret, crs = install_plan.agent_resource_set("mgmt", "kind: X\n")
    assert secret["type"] == install_plan.CRS_SECRET_TYPE
    assert crs["spec"]["resources"] == [{"kind": "Secret", "name": "mgmt-lattice-agent"}]
    # Matched by Cluster API's ClusterResourceSet controller against the Cluster's labels
    # (the E2E install runs it), which carry lattice.dev/cluster (lattice.domain.capi).
    assert crs["spec"]["clusterSelector"] == {"matchLabels": {"lattice.dev/cluster": "mgmt"}}


def test_cell_operator_options() -> None:
    assert install_plan.cell_operator_options({}, "/s") == OperatorOptions()
    options = install_plan.cell_operator_options(
        {
            "parentConfig": {"host": "127.0.0.1", "grpcPort": 1, "bootstrapPort": 2},
            "provider": {"type": "local"},
        },
        "/s",
    )
    assert options == OperatorOptions(
        cell_host="127.0.0.1",
        bootstrap_port=2,
        grpc_port=1,
        proxy_port=8444,
        bind_host="127.0.0.1",
        state_dir="/s",
    )
    named = install_plan.cell_operator_options(
        {"parentConfig": {"host": "cell.example"}, "provider": {"type": "aws"}}, "/s"
    )
    assert named.bind_host == "0.0.0.0"
    no_proxy = install_plan.cell_operator_options(
        {"parentConfig": {"host": "cell.example", "proxyPort": 0}, "provider": {"type": "aws"}}, "/s"
    )
    assert no_proxy.proxy_port is None  # off is the operator's default: no --proxy-port
    assert Path("/s").name == "s"


def test_unpivot_steps_in_order_and_out_of_place() -> None:
    done = pivot_flow.imported_status()
    with pytest.raises(pivot_flow.StepRejected):
        pivot_flow.unpivot_requested(status(Phase.PROVISIONING), "w1", NOW)
    requested = pivot_flow.unpivot_requested(done, "w1", NOW)
    assert requested.phase is Phase.DELETING
    assert requested.unpivot == models.UnpivotStatus(step=models.UnpivotStep.REQUESTED)
    assert pivot_flow.unpivot_requested(requested, "w1", NOW).unpivot == requested.unpivot  # idempotent
    waiting = pivot_flow.unpivot_waiting(requested, "w1's agent is not connected to this cell", NOW)
    assert waiting.unpivot is not None
    assert waiting.unpivot.last_error == "w1's agent is not connected to this cell"
    assert pivot_flow.ABANDON_ANNOTATION in (waiting.message or "")
    deleting_condition = next(c for c in waiting.conditions if c.type == conditions.DELETING)
    assert deleting_condition.reason == "UnpivotPending"
    with pytest.raises(pivot_flow.StepRejected):
        pivot_flow.unpivot_released(waiting, NOW)
    imported = pivot_flow.unpivot_imported(waiting, 9, NOW)
    assert imported.unpivot == models.UnpivotStatus(step=models.UnpivotStep.IMPORTED, objects=9)
    assert not pivot_flow.unpivot_done(imported)
    for step in (pivot_flow.unpivot_waiting, lambda s, *_: pivot_flow.unpivot_imported(s, 1, NOW)):
        with pytest.raises(pivot_flow.StepRejected):
            step(imported, "x", NOW)
    with pytest.raises(pivot_flow.StepRejected):
        pivot_flow.unpivot_requested(imported, "w1", NOW)
    released = pivot_flow.unpivot_released(imported, NOW)
    assert pivot_flow.unpivot_done(released)
    assert released.unpivot is not None
    assert released.unpivot.objects == 9
    ready = next(c for c in released.conditions if c.type == conditions.READY)
    assert ready.status is ConditionStatus.FALSE


def test_annotations_and_children() -> None:
    raw = {
        "metadata": {
            "annotations": {pivot_flow.CASCADE_ANNOTATION: "true", pivot_flow.ABANDON_ANNOTATION: "yes"}
        }
    }
    assert pivot_flow.annotated(raw, pivot_flow.CASCADE_ANNOTATION)
    assert not pivot_flow.annotated(raw, pivot_flow.ABANDON_ANNOTATION)  # only "true" counts
    assert not pivot_flow.annotated({"metadata": {}}, pivot_flow.CASCADE_ANNOTATION)
    items = [
        {"metadata": {"name": "c"}, "spec": {"cellRef": "mgmt"}},
        {"metadata": {"name": "mgmt"}, "spec": {"cellRef": "mgmt"}},
        {"metadata": {"name": "a"}, "spec": {"cellRef": "mgmt"}},
        {"metadata": {"name": "x"}, "spec": {"cellRef": "other"}},
        {"metadata": {"name": "y"}},
    ]
    assert pivot_flow.own_children(items, "mgmt") == ["a", "c"]
