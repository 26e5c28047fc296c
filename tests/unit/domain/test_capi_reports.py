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
