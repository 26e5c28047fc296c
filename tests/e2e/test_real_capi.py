"""A cell on the real Cluster API: its operator runs the contract-shaped local provider and the
real core, kubeadm bootstrap and kubeadm control-plane managers run against it. A child is
provisioned by them (its machines boot from CABPK's bootstrap data, the registration call is
what CABPK rendered from the compiled KubeadmControlPlane), its agent runs in the child as a pod
with its own ServiceAccount token, and the pivot moves the graph the real controllers own.

After the pivot the child runs its own provider and managers: raising its workers from 1 to 2
on the child gives a second worker Machine and Node, made by the child's own CAPI.

Deleting the child's LatticeCluster on the cell unpivots it: the child's agent hands the graph
back over its outbound stream, the cell's own CAPI deletes the machines, and nothing of the
child is left on either side."""

from __future__ import annotations

import json
import subprocess
import time
from typing import Any

import pytest

from lattice.adapters.binaries import Toolchain
from tests.e2e.conftest import (
    Cell,
    child_kubeconfig,
    kubectl,
    local_cluster,
    machine_pids,
    wait_deleted,
    wait_for,
)

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

MOVED_KINDS = "clusters.cluster.x-k8s.io,machines.cluster.x-k8s.io,kubeadmconfigs,localmachines"


def test_real_capi_provisions_registers_and_pivots_a_child(cell: Cell, toolchain: Toolchain) -> None:
    started = time.monotonic()
    cell.control_plane.apply([local_cluster("rc-1", cell.name, workers=1)])
    seen: list[str] = []

    def phase() -> str:
        current = str(cell.lc("rc-1").get("status", {}).get("phase", ""))
        if current and (not seen or seen[-1] != current):
            seen.append(current)
            print(f"  {time.monotonic() - started:6.1f} s  {current}")
        return current

    try:
        wait_for(lambda: phase() == "Ready", 600, "rc-1 Ready (pivoted) on the cell", cell.log)
    finally:
        print(cell.kubectl("get", "clusters,machines,localmachines", "-A", "-o", "wide", check=False))
    print(f"\nrc-1: applied → Ready in {time.monotonic() - started:.1f} s; phases: {' → '.join(seen)}")
    status = cell.lc("rc-1")["status"]
    assert status["pivot"]["step"] == "Complete"
    assert status["agent"]["connected"] is True

    # The child holds the graph the real controllers built: its Cluster, both Machines with their
    # nodeRefs, the KubeadmConfigs CABPK rendered and their bootstrap Secrets, the LocalMachines.
    child = child_kubeconfig(cell, "rc-1")
    moved: list[dict[str, Any]] = json.loads(
        kubectl(toolchain, child, "get", MOVED_KINDS, "-n", "capi-rc-1", "-o", "json")
    )["items"]
    kinds = sorted(o["kind"] for o in moved)
    assert kinds == [
        "Cluster",
        "KubeadmConfig",
        "KubeadmConfig",
        "LocalMachine",
        "LocalMachine",
        "Machine",
        "Machine",
    ]
    machines = [o for o in moved if o["kind"] == "Machine"]

    def node_refs_recomputed() -> bool:
        # The import drops status; the child's own controllers set each nodeRef again.
        found = json.loads(kubectl(toolchain, child, "get", "machines", "-n", "capi-rc-1", "-o", "json"))[
            "items"
        ]
        return len(found) == 2 and all(
            (m.get("status") or {}).get("nodeRef", {}).get("name") == m["metadata"]["name"] for m in found
        )

    wait_for(node_refs_recomputed, 120, "the child's CAPI to set the nodeRefs again")
    nodes = json.loads(kubectl(toolchain, child, "get", "nodes", "-o", "json"))["items"]
    assert {n["metadata"]["name"] for n in nodes} == {m["metadata"]["name"] for m in machines}
    secrets = kubectl(toolchain, child, "get", "secrets", "-n", "capi-rc-1", "-o", "name")
    for config in (o for o in moved if o["kind"] == "KubeadmConfig"):
        assert f"secret/{config['metadata']['name']}" in secrets

    # The agent runs in the child as a pod, with its own ServiceAccount's token.
    pods = json.loads(kubectl(toolchain, child, "get", "pods", "-n", "lattice-system", "-o", "json"))["items"]
    agent = next(p for p in pods if p["metadata"]["name"].startswith("lattice-agent"))
    assert agent["status"]["phase"] == "Running"

    # The cell no longer holds them; the machines run on (the child is alive).
    assert "rc-1" not in cell.kubectl("get", MOVED_KINDS, "-A", "-o", "name", check=False)
    assert "rc-1" in kubectl(toolchain, child, "get", "lc", "-o", "name")

    # The child manages itself with its own CAPI: one more worker, by the child's controllers.
    kubectl(toolchain, child, "patch", "lc", "rc-1", "--type=merge", "-p", '{"spec":{"nodes":{"workers":2}}}')

    def two_workers() -> list[dict[str, Any]] | None:
        found = json.loads(kubectl(toolchain, child, "get", "machines", "-n", "capi-rc-1", "-o", "json"))[
            "items"
        ]
        workers = [m for m in found if "cluster.x-k8s.io/control-plane" not in m["metadata"]["labels"]]
        # a Machine the MachineSet just created has no status yet
        statuses = [m.get("status") or {} for m in workers]
        running = [s for s in statuses if s.get("phase") == "Running" and s.get("nodeRef")]
        return workers if len(running) == 2 else None

    scaled_at = time.monotonic()
    try:
        workers = wait_for(two_workers, 300, "a second worker Machine Running on the child")
    finally:
        print(kubectl(toolchain, child, "get", "machines,localmachines", "-A", "-o", "wide", check=False))
    print(f"rc-1 scaled 1 → 2 workers by its own CAPI in {time.monotonic() - scaled_at:.1f} s")
    nodes = json.loads(kubectl(toolchain, child, "get", "nodes", "-o", "json"))["items"]
    assert {w["metadata"]["name"] for w in workers} <= {n["metadata"]["name"] for n in nodes}
    assert "rc-1" not in cell.kubectl("get", MOVED_KINDS, "-A", "-o", "name", check=False)

    # Deleting it on the cell: the child's agent sends its graph back (ClusterDeleting), the
    # cell imports it, and the cell's CAPI deletes the Machines and releases the machines.
    assert machine_pids(cell, "rc-1")
    cell.kubectl("delete", "lc", "rc-1", "--wait=false")
    took = wait_deleted(cell, "rc-1")
    print(f"rc-1 deleted from the cell (unpivot and machines released) in {took:.1f} s")


def test_an_upgrade_of_a_pivoted_child_reaches_its_own_capi_which_says_why_it_waits(
    cell: Cell, toolchain: Toolchain
) -> None:
    """A version change on the child's own LatticeCluster reaches its KubeadmControlPlane and
    MachineDeployment, and its own controllers start the rollout; the LatticeCluster shows it in
    CAPI's words, and the cell's copy shows what the child reports. On the local provider the
    rollout cannot finish: KCP waits for etcd (its member checks need a kubelet API the stand-in
    does not serve) and CAPI's MachineSet preflight holds the workers while the control plane
    upgrades. A downgrade is refused at admission."""
    cell.control_plane.apply([local_cluster("up-1", cell.name, workers=1)])
    wait_for(lambda: cell.lc("up-1").get("status", {}).get("phase") == "Ready", 600, "up-1 Ready", cell.log)
    child = child_kubeconfig(cell, "up-1")

    def child_lc() -> dict[str, Any]:
        found: dict[str, Any] = json.loads(kubectl(toolchain, child, "get", "lc", "up-1", "-o", "json"))
        return found

    wait_for(
        lambda: child_lc().get("status", {}).get("version") == "1.36.3", 120, "the child's own reconcile"
    )
    downgrade = '{"spec":{"provider":{"kubernetes":{"version":"1.35.0"}}}}'
    refused = subprocess.run(
        [
            str(toolchain.kubectl),
            f"--kubeconfig={child}",
            "patch",
            "lc",
            "up-1",
            "--type=merge",
            "-p",
            downgrade,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert refused.returncode != 0
    assert "downgrading from 1.36.3 to 1.35.0 is not supported" in refused.stderr
    upgraded_at = time.monotonic()
    upgrade = '{"spec":{"provider":{"kubernetes":{"version":"1.36.4"}}}}'
    kubectl(toolchain, child, "patch", "lc", "up-1", "--type=merge", "-p", upgrade)
    seen: list[str] = []

    def rollout_explained() -> str:
        conditions = {c["type"]: c for c in child_lc().get("status", {}).get("conditions", [])}
        rollout = conditions.get("RollingOut") or {}
        message = str(rollout.get("message", ""))
        if message and (not seen or seen[-1] != message):
            seen.append(message)
            print(f"  {time.monotonic() - upgraded_at:6.1f} s  {message}")
        # KCP, the MachineDeployment and its new MachineSet each report at their own pace (under
        # load, the MachineSet's blocked scale-up was seen before KCP recounted its Machines).
        explained = all(
            part in message
            for part in (
                "control plane 0/1",
                "KubeadmControlPlane up-1-control-plane RollingOut",
                "Waiting for etcd",
                "ControlPlaneIsStable",
            )
        )
        return message if rollout.get("status") == "True" and explained else ""

    try:
        message = wait_for(
            rollout_explained, 240, "the child's LatticeCluster to show the rollout and why it waits"
        )
    finally:
        print(kubectl(toolchain, child, "get", "kcp,md,ms,machines", "-A", "-o", "wide", check=False))
    assert message.startswith("rolling out v1.36.4: control plane 0/1 and workers 0/1 Machines up to date")
    kcp = json.loads(kubectl(toolchain, child, "get", "kcp", "-n", "capi-up-1", "-o", "json"))["items"][0]
    assert kcp["spec"]["version"] == "v1.36.4"
    md = json.loads(kubectl(toolchain, child, "get", "md", "-n", "capi-up-1", "-o", "json"))["items"][0]
    assert md["spec"]["template"]["spec"]["version"] == "v1.36.4"
    # The cell's copy of the child is left alone (the child is the source of truth), and shows
    # what the child reports about itself over its stream: the version applied and the rollout.
    assert cell.lc("up-1")["spec"]["provider"]["kubernetes"]["version"] == "1.36.3"

    def reported_on_the_cell() -> list[str]:
        found = list(((cell.lc("up-1").get("status") or {}).get("agent") or {}).get("reported") or [])
        rolling = any(r.startswith("LatticeCluster.RollingOut=True: rolling out v1.36.4") for r in found)
        return found if rolling and "LatticeCluster.version=1.36.4" in found else []

    print(wait_for(reported_on_the_cell, 60, "the cell's copy to show the child's rollout"))
