"""The runtime flow across real control planes: provision → register → stream → bootstrap →
pivot → self-managing; then the cell disappears and the child carries on."""

from __future__ import annotations

import json
import shutil
import time

import pytest

from lattice.adapters.binaries import Toolchain
from tests.e2e.conftest import (
    Cell,
    agent_log,
    check_addons,
    child_kubeconfig,
    kubectl,
    local_cluster,
    machine_conditions,
    machines_dir,
    wait_deleted,
    wait_for,
)

pytestmark = pytest.mark.e2e

CAPI_KINDS = ",".join(
    [
        "clusters.cluster.x-k8s.io",
        "kubeadmcontrolplanes",
        "machinedeployments",
        "kubeadmconfigtemplates",
        "localclusters",
        "localmachinetemplates",
    ]
)


def phase(cell: Cell, name: str) -> str:
    return str(cell.lc(name).get("status", {}).get("phase", ""))


def test_child_is_provisioned_pivoted_and_manages_itself(cell: Cell, toolchain: Toolchain) -> None:
    started = time.monotonic()
    cell.control_plane.apply(
        [local_cluster("child-1", cell.name, workers=2, networking={"default": {"cidr": "172.18.250.0/28"}})]
    )
    seen: list[str] = []

    def ready() -> bool:
        current = phase(cell, "child-1")
        if current and (not seen or seen[-1] != current):
            seen.append(current)
        return current == "Ready"

    wait_for(ready, 240, "child-1 Ready on the cell", cell.log)
    elapsed = time.monotonic() - started
    print(f"\nchild-1: applied → Ready in {elapsed:.1f} s; phases seen: {' → '.join(seen)}")
    assert seen[-1] == "Ready"
    status = cell.lc("child-1")["status"]
    assert status["pivot"]["step"] == "Complete"
    assert status["agent"]["connected"] is True
    conditions = {c["type"]: c["status"] for c in status["conditions"]}
    assert conditions["Pivoted"] == "True"
    assert conditions["Ready"] == "True"
    assert conditions["Bootstrapped"] == "True"

    # The cell no longer holds the child's CAPI objects...
    on_cell = cell.kubectl("get", CAPI_KINDS, "-A", "-o", "name", check=False)
    assert "child-1" not in on_cell
    # ...the child does, and its own controllers recompute the status the import dropped...
    child = child_kubeconfig(cell, "child-1")
    objects = json.loads(kubectl(toolchain, child, "get", CAPI_KINDS, "-n", "capi-child-1", "-o", "json"))[
        "items"
    ]
    assert sorted(o["kind"] for o in objects) == [
        "Cluster",
        "KubeadmConfigTemplate",
        "KubeadmControlPlane",
        "LocalCluster",
        "LocalMachineTemplate",
        "LocalMachineTemplate",
        "MachineDeployment",
    ]
    cluster = next(o for o in objects if o["kind"] == "Cluster")
    assert not cluster["spec"].get("paused")

    def initialized_by_the_childs_own_capi() -> bool:
        found = json.loads(
            kubectl(toolchain, child, "get", "cluster", "-n", "capi-child-1", "child-1", "-o", "json")
        )
        return bool(((found.get("status") or {}).get("initialization") or {}).get("controlPlaneInitialized"))

    wait_for(initialized_by_the_childs_own_capi, 120, "the child's CAPI to recompute its Cluster status")
    check_addons(toolchain, child, "child-1", "172.18.250.0/28")
    # The child's own KCP finds its control-plane Machine up to date: compiling the cluster on
    # the child gives exactly what the cell compiled (no rollout after the pivot).
    for name, up_to_date in machine_conditions(toolchain, child, "capi-child-1", "UpToDate").items():
        assert up_to_date.get("status") == "True", (name, up_to_date)
    # ...and its own LatticeCluster, Ready, shown by kubectl on the child.
    table = kubectl(toolchain, child, "get", "lc")
    assert "child-1" in table
    assert "Ready" in table

    # The child scales itself: its own operator changes its own MachineDeployment.
    kubectl(
        toolchain, child, "patch", "lc", "child-1", "--type=merge", "-p", '{"spec":{"nodes":{"workers":3}}}'
    )

    def scaled() -> bool:
        md = json.loads(
            kubectl(toolchain, child, "get", "md", "-n", "capi-child-1", "child-1-md-0", "-o", "json")
        )
        return bool(md["spec"]["replicas"] == 3)

    wait_for(scaled, 60, "the child's MachineDeployment scaled to 3 by the child's operator")
    # The cell kept its hands off: it never re-created the child's objects.
    assert "child-1" not in cell.kubectl("get", CAPI_KINDS, "-A", "-o", "name", check=False)

    # Deleted on the child itself: its agent tells the cell (ClusterDeleting), which deletes its
    # copy, takes the objects back and deletes the machines; both LatticeClusters go.
    kubectl(toolchain, child, "delete", "lc", "child-1", "--wait=false")
    took = wait_deleted(cell, "child-1")
    print(f"child-1 deleted on itself: gone from the cell with its machines in {took:.1f} s")


def test_child_survives_the_deletion_of_its_cell(own_cell: Cell, toolchain: Toolchain) -> None:
    cell = own_cell
    cell.control_plane.apply([local_cluster("orphan-1", cell.name, workers=1)])
    wait_for(lambda: phase(cell, "orphan-1") == "Ready", 240, "orphan-1 Ready", cell.log)
    child = child_kubeconfig(cell, "orphan-1")
    log_of_agent = agent_log(machines_dir(cell), "orphan-1")

    # The cell goes away entirely: its operator, its control plane, its data.
    cell.stop_operator()
    cell.control_plane.stop()
    shutil.rmtree(cell.control_plane.dir)
    lost_at = time.monotonic()

    # The child's agent notices and keeps retrying with backoff...
    wait_for(
        lambda: (
            log_of_agent.read_text(errors="replace").count("reconnect") >= 2
            or log_of_agent.read_text(errors="replace").count("retry") >= 2
        ),
        60,
        "the agent to log the loss and retry",
    )
    # ...while the child still reconciles its own spec.
    kubectl(
        toolchain, child, "patch", "lc", "orphan-1", "--type=merge", "-p", '{"spec":{"nodes":{"workers":4}}}'
    )

    def scaled() -> bool:
        md = json.loads(
            kubectl(toolchain, child, "get", "md", "-n", "capi-orphan-1", "orphan-1-md-0", "-o", "json")
        )
        return bool(md["spec"]["replicas"] == 4)

    wait_for(scaled, 60, "the orphaned child to scale itself")
    print(
        f"\norphan-1 reconciled its own change {time.monotonic() - lost_at:.1f} s after its cell was deleted"
    )
