from __future__ import annotations

import copy
import datetime as dt
from typing import Any

import pytest

from lattice.domain import capi, cluster_reconcile, conditions, models, pivot_flow, serde, validation
from lattice.domain.cluster_reconcile import FINALIZER, OperatorContext, plan_cluster
from lattice.domain.models import Phase
from lattice.domain.refs import ResourceRef

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)
CELL = OperatorContext(self_name="mgmt", cell_endpoint=capi.ParentEndpoint(host="10.0.0.1"))


def lc(**spec: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "cellRef": "mgmt",
        "provider": {"type": "docker", "kubernetes": {"version": "1.35.0"}},
        "nodes": {"controlPlane": 1, "workers": 2},
    }
    base.update(spec)
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {
            "name": "w1",
            "generation": 1,
            "resourceVersion": "10",
            "uid": "u",
            "finalizers": [FINALIZER],
        },
        "spec": base,
    }


def desired(raw: dict[str, Any], context: OperatorContext = CELL) -> list[dict[str, Any]]:
    cluster = serde.cluster_from_dict(raw)
    assert isinstance(cluster, models.LatticeCluster)
    valid = validation.validate_cluster(cluster)
    assert isinstance(valid, validation.ValidCluster)
    return list(capi.compile_cluster(valid, capi.CompileContext(parent=context.cell_endpoint)))


def with_status(raw: dict[str, Any], plan: cluster_reconcile.Plan) -> dict[str, Any]:
    out = copy.deepcopy(raw)
    assert plan.status is not None
    out["status"] = plan.status
    return out


def test_finalizer_first_then_nothing_else() -> None:
    raw = lc()
    raw["metadata"]["finalizers"] = ["other"]
    plan = plan_cluster(raw, [], CELL, NOW)
    assert plan.finalizers == ("other", FINALIZER)
    assert plan.apply == ()
    assert plan.status is None
    assert plan.requeue_after == 0.0


def test_new_cluster_applies_everything_and_moves_to_provisioning() -> None:
    raw = lc()
    plan = plan_cluster(raw, [], CELL, NOW)
    assert [o["kind"] for o in plan.apply] == [o["kind"] for o in desired(raw)]
    assert plan.status is not None
    assert plan.status["phase"] == "Provisioning"
    assert plan.status["observedGeneration"] == 1
    assert plan.status["capiNamespace"] == "capi-w1"
    types = {c["type"]: c["status"] for c in plan.status["conditions"]}
    assert types == {
        "Ready": "False",
        "SpecValid": "True",
        "CapiApplied": "True",
        "InfrastructureReady": "False",
        "ControlPlaneInitialized": "False",
        "ProvisioningHealthy": "True",
        "RollingOut": "False",
    }
    # One Event for the transition, naming what it applied (not an `Applying` Event as well).
    assert [(e.reason, e.message) for e in plan.events] == [
        ("Provisioning", "applying 8 of 8 Cluster API objects in capi-w1; waiting for the infrastructure")
    ]
    assert plan.requeue_after == cluster_reconcile.PROVISIONING_RECHECK_S


def test_unchanged_spec_makes_no_writes() -> None:
    raw = lc()
    first = plan_cluster(raw, [], CELL, NOW)
    observed = with_status(raw, first)
    # The server echoes what we applied plus fields of its own.
    stored = [{**o, "metadata": {**o["metadata"], "uid": "x", "resourceVersion": "5"}} for o in first.apply]
    second = plan_cluster(observed, stored, CELL, NOW + dt.timedelta(minutes=5))
    assert second.apply == ()
    assert second.status is None
    assert second.events == ()
    assert not second.writes


def test_the_unwatched_namespace_is_not_reapplied_once_it_holds_the_objects() -> None:
    """The operator watches the CAPI kinds, not Namespaces: as the controllers report on
    machines the cluster is reconciled again and again, and none of those passes writes."""
    raw = lc()
    first = plan_cluster(raw, [], CELL, NOW)
    stored = [o for o in first.apply if o["kind"] != "Namespace"]
    again = plan_cluster(with_status(raw, first), stored, CELL, NOW)
    assert again.apply == ()
    nothing_yet = plan_cluster(with_status(raw, first), [], CELL, NOW)
    assert next(o["kind"] for o in nothing_yet.apply) == "Namespace"


def test_workers_change_reapplies_only_the_machine_deployment() -> None:
    raw = lc()
    first = plan_cluster(raw, [], CELL, NOW)
    observed = with_status(raw, first)
    observed["spec"]["nodes"]["workers"] = 3
    observed["metadata"]["generation"] = 2
    plan = plan_cluster(observed, list(first.apply), CELL, NOW)
    assert [o["kind"] for o in plan.apply] == ["MachineDeployment"]
    assert plan.apply[0]["spec"]["replicas"] == 3
    assert plan.status is not None
    assert plan.status["observedGeneration"] == 2


def test_unreadable_capi_state_applies_all_desired() -> None:
    plan = plan_cluster(lc(), None, CELL, NOW)
    assert len(plan.apply) == 8


def test_capi_progress_is_reflected_in_conditions_and_message() -> None:
    raw = lc()
    first = plan_cluster(raw, [], CELL, NOW)
    objects = copy.deepcopy(list(first.apply))
    cluster = next(o for o in objects if o["kind"] == "Cluster")
    cluster["status"] = {
        "initialization": {"infrastructureProvisioned": True, "controlPlaneInitialized": True}
    }
    plan = plan_cluster(with_status(raw, first), objects, CELL, NOW)
    assert plan.status is not None
    conds = {c["type"]: c for c in plan.status["conditions"]}
    assert conds["InfrastructureReady"]["status"] == "True"
    assert conds["ControlPlaneInitialized"]["status"] == "True"
    assert plan.status["message"] == "control plane initialized; waiting for the agent to connect"


def test_capi_failures_surface_as_a_condition_and_one_warning_per_message() -> None:
    raw = lc()
    first = plan_cluster(raw, [], CELL, NOW)
    objects = copy.deepcopy(list(first.apply))
    files = 'Failed to prepare spec.files: secrets "w1-lattice-registration" not found'
    report = {
        "kind": "KubeadmConfig",
        "metadata": {"name": "w1-control-plane-abc"},
        "status": {
            "conditions": [
                {"type": "DataSecretAvailable", "status": "False", "reason": "NotAvailable", "message": files}
            ]
        },
    }
    failing = plan_cluster(with_status(raw, first), objects, CELL, NOW, [report])
    assert failing.status is not None
    health = {c["type"]: c for c in failing.status["conditions"]}["ProvisioningHealthy"]
    assert (health["status"], health["reason"]) == ("False", "BootstrapDataFailed")
    assert health["message"] == f"KubeadmConfig w1-control-plane-abc: {files}"
    assert failing.status["message"] == health["message"]
    warnings = [e for e in failing.events if e.type == "Warning"]
    assert [(e.reason, e.message) for e in warnings] == [("BootstrapDataFailed", health["message"])]

    # The same failure again: the condition stays, no second Warning.
    again = plan_cluster(with_status(raw, failing), objects, CELL, NOW, [report])
    assert not [e for e in again.events if e.type == "Warning"]

    # Many failures: three shown, the rest counted.
    many = [{**report, "metadata": {"name": f"w1-{i}"}} for i in range(5)]
    crowded = plan_cluster(with_status(raw, failing), objects, CELL, NOW, many)
    assert crowded.status is not None
    assert crowded.status["message"].endswith("; and 2 more")

    # Fixed: healthy again.
    healed = plan_cluster(with_status(raw, failing), objects, CELL, NOW, [])
    assert healed.status is not None
    assert {c["type"]: c["status"] for c in healed.status["conditions"]}["ProvisioningHealthy"] == "True"


def test_invalid_spec_fails_with_every_field_named_and_no_apply() -> None:
    raw = lc(nodes={"controlPlane": 2, "workers": -1})
    plan = plan_cluster(raw, [], CELL, NOW)
    assert plan.apply == ()
    assert plan.status is not None
    assert plan.status["phase"] == "Failed"
    spec_valid = next(c for c in plan.status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["status"] == "False"
    assert "spec.nodes.controlPlane" in spec_valid["message"]
    assert "spec.nodes.workers" in spec_valid["message"]
    assert [e.type for e in plan.events] == ["Warning"]
    # Same invalid spec again: nothing new to write, no event spam.
    again = plan_cluster(with_status(raw, plan), [], CELL, NOW)
    assert again.status is None
    assert again.events == ()
    # Fixed spec: back to provisioning.
    fixed = with_status(raw, plan)
    fixed["spec"]["nodes"] = {"controlPlane": 1, "workers": 1}
    recovered = plan_cluster(fixed, [], CELL, NOW)
    assert recovered.status is not None
    assert recovered.status["phase"] == "Provisioning"


def test_structurally_broken_spec_is_reported_not_raised() -> None:
    raw = lc(nodes="three")
    plan = plan_cluster(raw, [], CELL, NOW)
    assert plan.status is not None
    assert "spec.nodes: must be an object" in plan.status["message"]


def test_child_needs_a_cell_endpoint() -> None:
    plan = plan_cluster(lc(), [], OperatorContext(self_name="mgmt"), NOW)
    assert plan.status is not None
    assert plan.status["phase"] == "Failed"
    assert "not configured to accept children" in plan.status["message"]


@pytest.mark.parametrize(
    ("context", "name", "cell_ref", "mine"),
    [
        (OperatorContext(), "w1", "x", True),
        (OperatorContext(self_name="mgmt"), "mgmt", None, True),
        (OperatorContext(self_name="mgmt"), "w1", "mgmt", True),
        (OperatorContext(self_name="mgmt"), "w1", "other", False),
    ],
)
def test_which_clusters_an_operator_owns(
    context: OperatorContext, name: str, cell_ref: str | None, mine: bool
) -> None:
    raw = lc(cellRef=cell_ref)
    raw["metadata"]["name"] = name
    plan = plan_cluster(raw, [], context, NOW)
    assert (plan.ignored is None) is mine


def test_self_and_root_compile_contexts() -> None:
    parent = capi.ParentEndpoint(host="parent.example")
    context = OperatorContext(self_name="w1", self_parent=parent)
    plan = plan_cluster(lc(), [], context, NOW)
    kcp = next(o for o in plan.apply if o["kind"] == "KubeadmControlPlane")
    assert "https://parent.example:8443" in kcp["spec"]["kubeadmConfigSpec"]["postKubeadmCommands"][0]
    root = lc(cellRef=None, parentConfig={"host": "10.0.0.2"})
    plan = plan_cluster(root, [], OperatorContext(), NOW)
    kcp = next(o for o in plan.apply if o["kind"] == "KubeadmControlPlane")
    assert "postKubeadmCommands" not in kcp["spec"]["kubeadmConfigSpec"]


def test_spec_changes_wait_during_a_pivot() -> None:
    raw = lc()
    raw["status"] = {"phase": "Pivoting"}
    plan = plan_cluster(raw, [], CELL, NOW)
    assert plan.apply == ()
    assert plan.status is not None
    assert plan.status["phase"] == "Pivoting"


def abandoned(observed_generation: int) -> dict[str, Any]:
    status = models.LatticeClusterStatus(
        phase=Phase.PIVOTING,
        observed_generation=observed_generation,
        pivot=models.PivotStatus(models.PivotStep.EXPORTING, pivot_flow.MAX_PIVOT_ATTEMPTS),
    )
    return serde.status_to_dict(pivot_flow.pivot_failed(status, "preflight refused", NOW))


def test_an_abandoned_pivot_stays_failed_until_the_spec_changes() -> None:
    raw = lc()
    raw["status"] = abandoned(observed_generation=1)
    assert raw["status"]["phase"] == "Failed"
    # Not Provisioning again (which, with the agent connected, restarts the pivot at attempt 1).
    plan = plan_cluster(raw, desired(raw), CELL, NOW)
    assert not plan.writes
    assert plan.status is None

    raw["metadata"]["generation"] = 2  # the user changed the spec: try again from the start
    plan = plan_cluster(raw, desired(raw), CELL, NOW)
    assert plan.status is not None
    assert plan.status["phase"] == "Provisioning"
    assert plan.status["observedGeneration"] == 2


def test_ready_cluster_reapplies_and_stays_ready() -> None:
    raw = lc()
    raw["status"] = {"phase": "Ready"}
    plan = plan_cluster(raw, [], CELL, NOW)
    assert plan.status is not None
    assert plan.status["phase"] == "Ready"
    assert plan.requeue_after is None
    assert len(plan.apply) == 8


def deleting(raw: dict[str, Any]) -> dict[str, Any]:
    raw["metadata"]["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    return raw


def test_deletion_deletes_the_cluster_first_then_the_rest_then_the_finalizer() -> None:
    raw = deleting(lc())
    objects = desired(lc())
    plan = plan_cluster(raw, objects, CELL, NOW)
    assert [k.kind for k in plan.delete] == ["Cluster"]
    assert plan.status is not None
    assert plan.status["phase"] == "Deleting"
    assert plan.events[0].reason == "Deleting"
    rest = [o for o in objects if o["kind"] not in ("Cluster", "Namespace")]
    plan = plan_cluster(with_status(raw, plan), rest, CELL, NOW)
    assert sorted(k.kind for k in plan.delete) == sorted(o["kind"] for o in rest)
    assert plan.events == ()
    assert not plan.revoke_agent  # until the last pass
    plan = plan_cluster(raw, [], CELL, NOW)
    assert plan.finalizers == ()
    assert plan.events[-1].reason == "Deleted"
    assert plan.revoke_agent  # its agent's certificates go with it
    # The namespace goes with the last pass (with whatever else was kept there for the cluster).
    assert plan.delete == (ResourceRef("v1", "Namespace", "capi-w1", None),)


def test_deletion_waits_for_objects_already_being_deleted() -> None:
    raw = deleting(lc())
    cluster = next(o for o in desired(lc()) if o["kind"] == "Cluster")
    cluster["metadata"]["deletionTimestamp"] = "2026-11-23T12:00:00Z"
    plan = plan_cluster(raw, [cluster], CELL, NOW)
    assert plan.delete == ()
    assert plan.finalizers is None
    assert plan.requeue_after == cluster_reconcile.DELETION_RECHECK_S


def test_deletion_with_unreadable_state_and_without_our_finalizer() -> None:
    raw = deleting(lc())
    plan = plan_cluster(raw, None, CELL, NOW)
    assert plan.delete == ()
    assert plan.finalizers is None
    raw["metadata"]["finalizers"] = []
    assert not plan_cluster(raw, None, CELL, NOW).writes


def test_status_after_failure_keeps_observed_generation() -> None:
    raw = lc()
    raw["status"] = {"phase": "Provisioning", "observedGeneration": 0}
    raw["metadata"]["generation"] = 3
    plan = plan_cluster(raw, [], CELL, NOW)
    status = cluster_reconcile.status_after_failure(raw, plan, "Invalid: boom", NOW)
    assert status["observedGeneration"] == 0
    applied = next(c for c in status["conditions"] if c["type"] == "CapiApplied")
    assert (applied["status"], applied["reason"], applied["message"]) == (
        "False",
        "ApplyFailed",
        "Invalid: boom",
    )
    assert (
        cluster_reconcile.status_after_failure(raw, cluster_reconcile.Plan(), "x", NOW)["message"]
        == "error: x"
    )


def test_is_subset() -> None:
    assert cluster_reconcile.is_subset({"a": [1, {"b": 2}]}, {"a": [1, {"b": 2, "c": 3}], "d": 4})
    assert not cluster_reconcile.is_subset({"a": [1]}, {"a": [1, 2]})
    assert not cluster_reconcile.is_subset({"a": 1}, None)
    assert (
        ResourceRef.of({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "n"}}).namespace is None
    )


def test_condition_transition_time_moves_only_when_status_flips() -> None:
    later = NOW + dt.timedelta(hours=1)
    conds = conditions.set_condition(
        (), "Ready", models.ConditionStatus.FALSE, "A", "", now=NOW, generation=1
    )
    same = conditions.set_condition(
        conds, "Ready", models.ConditionStatus.FALSE, "B", "m", now=later, generation=2
    )
    assert same[0].last_transition_time == conds[0].last_transition_time
    assert (same[0].reason, same[0].observed_generation) == ("B", 2)
    flipped = conditions.set_condition(
        same, "Ready", models.ConditionStatus.TRUE, "C", "", now=later, generation=2
    )
    assert flipped[0].last_transition_time == conditions.rfc3339(later)
    custom = conditions.set_condition(
        flipped, "Zeta", models.ConditionStatus.TRUE, "Z", "", now=NOW, generation=None
    )
    assert [c.type for c in custom] == ["Ready", "Zeta"]
    assert conditions.get(custom, "Zeta") is not None
    assert conditions.get(custom, "Nope") is None
    assert Phase.READY.value == "Ready"


def pivoted(raw: dict[str, Any], **status: Any) -> dict[str, Any]:
    raw["status"] = {"phase": "Ready", "pivot": {"step": "Complete", "attempt": 1}, **status}
    return raw


def test_a_deleted_pivoted_child_waits_for_its_objects_to_come_back() -> None:
    raw = deleting(pivoted(lc()))
    # Nothing of it is on the cell: that is not "all gone", the child holds the objects.
    plan = plan_cluster(raw, [], CELL, NOW)
    assert plan.unpivot
    assert plan.finalizers is None
    assert plan.delete == ()
    assert plan.status is not None
    assert plan.status["phase"] == "Deleting"
    deleting_condition = next(c for c in plan.status["conditions"] if c["type"] == "Deleting")
    assert deleting_condition["reason"] == "Unpivoting"
    assert [e.reason for e in plan.events] == ["Unpivoting"]
    # Once the cell's driver records the unpivot, it owns the Deleting condition: no writes.
    raw["status"]["unpivot"] = {"step": "Imported", "objects": 9}
    plan = plan_cluster(raw, desired(lc()), CELL, NOW)
    assert plan.unpivot
    assert not plan.writes
    # Released: the imported objects are deleted as for any cluster.
    raw["status"]["unpivot"] = {"step": "Released", "objects": 9}
    plan = plan_cluster(raw, desired(lc()), CELL, NOW)
    assert not plan.unpivot
    assert [k.kind for k in plan.delete] == ["Cluster"]


def test_a_deletion_during_a_pivot_waits_for_the_pivot_and_keeps_its_phase() -> None:
    raw = deleting(lc())
    raw["status"] = {"phase": "Pivoting", "pivot": {"step": "Importing", "attempt": 1}}
    plan = plan_cluster(raw, desired(lc()), CELL, NOW)
    assert plan.delete == ()
    assert plan.finalizers is None
    assert plan.status is not None
    assert plan.status["phase"] == "Pivoting"
    assert plan.status["pivot"]["step"] == "Importing"
    assert "pivot in progress" in plan.status["message"]


def test_abandoning_the_infrastructure_drops_the_finalizer_and_deletes_nothing() -> None:
    raw = deleting(pivoted(lc()))
    raw["metadata"]["annotations"] = {pivot_flow.ABANDON_ANNOTATION: "true"}
    plan = plan_cluster(raw, desired(lc()), CELL, NOW)
    assert plan.finalizers == ()
    assert plan.delete == ()
    assert plan.events[0].type == "Warning"
    assert plan.events[0].reason == "InfrastructureAbandoned"
    assert plan.revoke_agent  # the machines stay; their agent is refused from now on


SELF = OperatorContext(self_name="w1", self_parent=capi.ParentEndpoint(host="10.0.0.1"))


def test_a_cluster_never_deletes_its_own_infrastructure() -> None:
    raw = deleting(pivoted(lc()))
    plan = plan_cluster(raw, desired(lc()), SELF, NOW)
    assert plan.delete == ()
    assert plan.finalizers is None
    assert not plan.unpivot
    assert plan.status is not None
    assert plan.status["phase"] == "Deleting"
    assert "parent cell" in plan.status["message"]
    # The agent marks it once the parent holds the objects: the finalizer goes.
    raw["metadata"]["annotations"] = {pivot_flow.UNPIVOTED_ANNOTATION: "true"}
    plan = plan_cluster(raw, desired(lc()), SELF, NOW)
    assert plan.finalizers == ()
    assert plan.delete == ()
    assert plan.events[0].reason == "Unpivoted"


def test_a_root_cluster_refuses_to_delete_itself_with_the_steps() -> None:
    root = OperatorContext(self_name="w1")
    plan = plan_cluster(deleting(lc()), desired(lc()), root, NOW)
    assert plan.delete == ()
    assert plan.finalizers is None
    assert plan.status is not None
    condition = next(c for c in plan.status["conditions"] if c["type"] == "Deleting")
    assert condition["reason"] == "NoParent"
    assert pivot_flow.ABANDON_ANNOTATION in condition["message"]
    # The same message again is not a new event.
    again = plan_cluster(with_status(deleting(lc()), plan), desired(lc()), root, NOW)
    assert again.events == ()
    assert again.status is None


def test_the_version_last_applied_is_kept_and_a_downgrade_is_refused() -> None:
    raw = lc()
    plan = plan_cluster(raw, [], CELL, NOW)
    assert plan.status is not None
    assert plan.status["version"] == "1.35.0"
    older = with_status(lc(provider={"type": "docker", "kubernetes": {"version": "1.34.2"}}), plan)
    refused = plan_cluster(older, [], CELL, NOW)
    assert refused.apply == ()
    assert refused.status is not None
    assert "downgrading from 1.35.0 to 1.34.2" in refused.status["message"]
    assert refused.events[0].reason == "InvalidSpec"
    newer = with_status(lc(provider={"type": "docker", "kubernetes": {"version": "1.36.0"}}), plan)
    upgraded = plan_cluster(newer, desired(newer), CELL, NOW)
    assert upgraded.status is not None
    assert upgraded.status["version"] == "1.36.0"


def test_an_edit_of_a_self_managing_childs_copy_is_not_applied_and_says_where_to_edit() -> None:
    raw = pivoted(lc(), observedGeneration=1)
    assert plan_cluster(raw, [], CELL, NOW) == cluster_reconcile.Plan()
    raw["metadata"]["generation"] = 2
    plan = plan_cluster(raw, [], CELL, NOW)
    assert plan.apply == ()
    assert plan.status is not None
    spec_valid = next(c for c in plan.status["conditions"] if c["type"] == "SpecValid")
    assert spec_valid["reason"] == "ManagedByCluster"
    assert "edit the LatticeCluster w1 on the cluster itself" in spec_valid["message"]
    assert [e.reason for e in plan.events] == ["ManagedByCluster"]
    assert plan_cluster(with_status(raw, plan), [], CELL, NOW).writes is False


def rolling(obj: dict[str, Any], up_to_date: int, replicas: int, **messages: str) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    out["status"] = {
        "replicas": replicas,
        "upToDateReplicas": up_to_date,
        "conditions": [
            {"type": kind, "status": "True", "reason": kind, "message": message}
            for kind, message in {"RollingOut": "", **messages}.items()
        ],
    }
    return out


def test_a_rollout_is_shown_with_capis_own_words_then_its_end() -> None:
    raw = pivoted(lc(), observedGeneration=1)
    objects = list(plan_cluster(raw, [], SELF, NOW).apply)  # as compiled for the cluster itself
    kcp = next(o for o in objects if o["kind"] == "KubeadmControlPlane")
    md = next(o for o in objects if o["kind"] == "MachineDeployment")
    others = [o for o in objects if o not in (kcp, md)]
    blocked = rolling(kcp, 0, 1, ScalingUp="* waiting for etcd to become healthy")
    plan = plan_cluster(raw, [*others, blocked, rolling(md, 1, 2)], SELF, NOW)
    assert plan.status is not None
    condition = next(c for c in plan.status["conditions"] if c["type"] == "RollingOut")
    assert condition["status"] == "True"
    assert condition["message"].startswith(
        "rolling out v1.35.0: control plane 0/1 and workers 1/2 Machines up to date"
    )
    assert "KubeadmControlPlane w1-control-plane ScalingUp: * waiting for etcd" in condition["message"]
    assert plan.status["message"] == condition["message"]
    assert [e.reason for e in plan.events] == ["RollingOut"]
    done = plan_cluster(with_status(raw, plan), objects, SELF, NOW)
    assert done.status is not None
    assert next(c for c in done.status["conditions"] if c["type"] == "RollingOut")["status"] == "False"
    assert [e.reason for e in done.events] == ["RolledOut"]


def _certificate(raw: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in raw["status"]["conditions"] if c["type"] == "AgentCertificate")


@pytest.mark.parametrize("pivot", [True, False], ids=["pivoted child", "child being provisioned"])
def test_the_agents_certificate_expiry_is_a_condition_that_rechecks_itself(pivot: bool) -> None:
    not_after = NOW + dt.timedelta(days=20)
    agent = {"connected": True, "certificateNotAfter": "2026-12-13T12:00:00Z"}
    raw = pivoted(lc(), observedGeneration=1, agent=agent) if pivot else lc()
    if not pivot:
        raw = with_status(raw, plan_cluster(raw, None, CELL, NOW))
        raw["status"]["agent"] = agent
    plan = plan_cluster(raw, [] if pivot else desired(raw), CELL, NOW)
    raw = with_status(raw, plan)
    assert _certificate(raw)["status"] == "True"
    assert _certificate(raw)["reason"] == "Valid"
    assert plan.requeue_after is not None
    assert plan.requeue_after <= (not_after - dt.timedelta(days=7) - NOW).total_seconds()
    assert not [e for e in plan.events if e.reason.startswith("AgentCert")]  # no Event for Valid
    assert plan_cluster(raw, [] if pivot else desired(raw), CELL, NOW).status is None  # settled

    later = NOW + dt.timedelta(days=14)
    plan = plan_cluster(raw, [] if pivot else desired(raw), CELL, later)
    raw = with_status(raw, plan)
    assert (_certificate(raw)["status"], _certificate(raw)["reason"]) == ("False", "ExpiringSoon")
    assert [e.reason for e in plan.events if e.reason.startswith("AgentCert")] == [
        "AgentCertificateExpiringSoon"
    ]
    again = plan_cluster(raw, [] if pivot else desired(raw), CELL, later + dt.timedelta(hours=1))
    assert again.status is None
    assert not again.events  # one Event per transition

    plan = plan_cluster(raw, [] if pivot else desired(raw), CELL, not_after)
    raw = with_status(raw, plan)
    assert _certificate(raw)["reason"] == "Expired"
    assert "registers again" in _certificate(raw)["message"]
    assert [e.type for e in plan.events] == ["Warning"]

    raw["status"]["agent"]["certificateNotAfter"] = "2027-01-30T12:00:00Z"  # renewed
    raw = with_status(raw, plan_cluster(raw, [] if pivot else desired(raw), CELL, not_after))
    assert (_certificate(raw)["status"], _certificate(raw)["reason"]) == ("True", "Valid")


def test_no_certificate_condition_before_an_agent_connects() -> None:
    raw = pivoted(lc(), observedGeneration=1, agent={"connected": False})
    assert plan_cluster(raw, [], CELL, NOW) == cluster_reconcile.Plan()
