"""Failures the CAPI controllers and the local provider report, found among watched objects."""

from __future__ import annotations

from typing import Any

from lattice.domain import capi_reports


def obj(kind: str, name: str, *conds: dict[str, Any], deleting: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-06T00:00:00Z"
    return {"kind": kind, "metadata": meta, "status": {"conditions": list(conds)}}


def cond(kind: str, status: str, reason: str = "R", message: str = "") -> dict[str, Any]:
    return {"type": kind, "status": status, "reason": reason, "message": message}


FILES = 'Failed to prepare spec.files: secrets "x-registration" not found'


def test_a_kubeadm_config_that_cannot_render_is_a_failure() -> None:
    found = capi_reports.failures(
        [obj("KubeadmConfig", "cp-1", cond("DataSecretAvailable", "False", "NotAvailable", FILES))]
    )
    assert found == (capi_reports.CapiFailure("KubeadmConfig", "cp-1", "BootstrapDataFailed", FILES),)
    assert found[0].describe() == f"KubeadmConfig cp-1: {FILES}"


def test_waiting_and_healthy_are_not_failures() -> None:
    objects = [
        obj(
            "KubeadmConfig",
            "a",
            cond(
                "DataSecretAvailable",
                "False",
                "NotAvailable",
                "Waiting for Cluster control plane to be initialized",
            ),
        ),
        obj("KubeadmConfig", "b", cond("DataSecretAvailable", "True", "Available")),
        obj("KubeadmConfig", "c", cond("DataSecretAvailable", "False", "NotAvailable", "")),
        obj("KubeadmConfig", "d"),
        obj("LocalMachine", "e", cond("Ready", "False", "Waiting", "not yet")),
        obj("LocalMachine", "f", cond("Ready", "True", "Booted")),
        obj("Machine", "g", cond("Ready", "False", "BootFailed", "not ours to read")),
        {"kind": "KubeadmConfig", "metadata": {"name": "h"}, "status": {"conditions": ["garbage"]}},
    ]
    assert capi_reports.failures(objects) == ()


def test_boot_failures_sorted_and_deleting_objects_skipped() -> None:
    objects = [
        obj("LocalMachine", "m2", cond("Ready", "False", "BootFailed", "runcmd[1] exited with code 3")),
        obj("LocalMachine", "m1", cond("Ready", "False", "BootFailed", "runcmd[0] exited with code 1")),
        obj("KubeadmConfig", "k", cond("DataSecretAvailable", "False", "NotAvailable", FILES)),
        obj("LocalMachine", "gone", cond("Ready", "False", "BootFailed", "x"), deleting=True),
    ]
    assert [(f.kind, f.name, f.reason) for f in capi_reports.failures(objects)] == [
        ("KubeadmConfig", "k", "BootstrapDataFailed"),
        ("LocalMachine", "m1", "MachineBootFailed"),
        ("LocalMachine", "m2", "MachineBootFailed"),
    ]


def test_move_blockers_follow_clusterctls_preflight() -> None:
    cluster = {"kind": "Cluster", "metadata": {"name": "c"}, "status": {}}
    machine = {"kind": "Machine", "metadata": {"name": "m"}, "status": {}}
    assert capi_reports.move_blockers([cluster, machine]) == (
        "Cluster c: the control plane is not initialized yet",
        "Cluster c: the infrastructure is not provisioned yet",
        "Machine m: no Node yet",
    )
    ready = {
        **cluster,
        "status": {"initialization": {"infrastructureProvisioned": True, "controlPlaneInitialized": True}},
    }
    with_node = {**machine, "status": {"nodeRef": {"name": "m"}}}
    leaving = {"kind": "Machine", "metadata": {"name": "x", "deletionTimestamp": "t"}, "status": {}}
    assert capi_reports.move_blockers([ready, with_node, leaving, obj("KubeadmConfig", "k")]) == ()
    assert capi_reports.move_blockers([]) == ()


def _owner(kind: str, name: str, conditions: list[dict[str, str]], **status: int) -> dict[str, object]:
    return {
        "kind": kind,
        "metadata": {"name": name},
        "spec": {"version": "v1.36.4"} if kind == "KubeadmControlPlane" else {},
        "status": {"conditions": conditions, **status},
    }


def test_rollout_is_none_until_a_controller_reports_one() -> None:
    idle = _owner("KubeadmControlPlane", "c", [{"type": "RollingOut", "status": "False"}], replicas=1)
    assert capi_reports.rollout([idle]) is None
    assert capi_reports.rollout([]) is None


def test_rollout_counts_and_the_controllers_messages() -> None:
    kcp = _owner(
        "KubeadmControlPlane",
        "c",
        [
            {
                "type": "RollingOut",
                "status": "True",
                "message": "Rolling out 1 Machine\n* version v1.36.3 -> v1.36.4",
            },
            {"type": "ScalingUp", "status": "False", "message": "not scaling"},
        ],
        replicas=1,
        upToDateReplicas=0,
    )
    md_a = _owner(
        "MachineDeployment", "a", [{"type": "RollingOut", "status": "False"}], replicas=2, upToDateReplicas=2
    )
    md_b = _owner("MachineDeployment", "b", [], replicas=1)
    found = capi_reports.rollout([md_b, kcp, md_a, {"kind": "Cluster", "metadata": {"name": "c"}}])
    assert found == capi_reports.Rollout(
        version="v1.36.4",
        control_plane=(0, 1),
        workers=(2, 3),
        details=("KubeadmControlPlane c RollingOut: Rolling out 1 Machine * version v1.36.3 -> v1.36.4",),
    )
    assert found.describe() == (
        "rolling out v1.36.4: control plane 0/1 and workers 2/3 Machines up to date "
        "(KubeadmControlPlane c RollingOut: Rolling out 1 Machine * version v1.36.3 -> v1.36.4)"
    )
    assert capi_reports.Rollout("v1", (1, 1), (0, 1)).describe().endswith("Machines up to date")


def test_rollout_says_why_it_waits_blocked_machine_sets_and_the_control_plane() -> None:
    kcp = _owner(
        "KubeadmControlPlane",
        "c",
        [
            {"type": "RollingOut", "status": "True", "message": "Rolling out 1 not up-to-date replicas"},
            {
                "type": "Available",
                "status": "False",
                "message": "Waiting for etcd to report the list of members",
            },
        ],
        replicas=1,
    )
    blocked = _owner(
        "MachineSet",
        "w-new",
        [
            {
                "type": "ScalingUp",
                "status": "True",
                "message": "Scaling up from 0 to 1 replicas is blocked because:\n"
                '* "ControlPlaneIsStable" preflight check failed',
            }
        ],
    )
    scaling = _owner(
        "MachineSet", "w-old", [{"type": "ScalingUp", "status": "True", "message": "Scaling up from 1 to 2"}]
    )
    found = capi_reports.rollout([kcp, blocked, scaling])
    assert found is not None
    assert found.details == (
        "KubeadmControlPlane c RollingOut: Rolling out 1 not up-to-date replicas",
        "KubeadmControlPlane c Available: Waiting for etcd to report the list of members",
        "MachineSet w-new ScalingUp: Scaling up from 0 to 1 replicas is blocked because: "
        '* "ControlPlaneIsStable" preflight check failed',
    )
