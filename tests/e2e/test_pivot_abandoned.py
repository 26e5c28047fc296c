"""A pivot that keeps failing is abandoned after its attempts, with the source left in charge
(real control planes, the real Cluster API controllers)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from lattice.adapters.binaries import Toolchain
from lattice.app.operator.child_driver import RETRY_DELAY_S
from lattice.domain import pivot_flow as cell_flow
from tests.e2e.conftest import Cell, child_kubeconfig, local_cluster, wait_for
from tests.e2e.test_pivot_faults import moved_objects

pytestmark = pytest.mark.e2e


def stray_machine(cluster: str) -> dict[str, Any]:
    """A Machine of ``cluster`` that never gets a node (its LocalMachine does not exist), and that
    Lattice does not own (no Lattice labels, so the pivot does not wait for it): clusterctl's move
    preflight refuses every export while it is there ("still provisioning the node")."""
    name = f"{cluster}-stray-0"
    return {
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "Machine",
        "metadata": {
            "name": name,
            "namespace": f"capi-{cluster}",
            "labels": {"cluster.x-k8s.io/cluster-name": cluster},
        },
        "spec": {
            "clusterName": cluster,
            "bootstrap": {"dataSecretName": f"{cluster}-kubeconfig"},
            "infrastructureRef": {
                "apiGroup": "infrastructure.lattice.dev",
                "kind": "LocalMachine",
                "name": name,
            },
        },
    }


def test_a_pivot_that_keeps_failing_is_abandoned_with_the_source_unpaused(
    cell: Cell, toolchain: Toolchain
) -> None:
    name = "fault-3"
    cell.control_plane.apply([local_cluster(name, cell.name, workers=1)])
    wait_for(
        lambda: f"namespace/capi-{name}" in cell.kubectl("get", "namespaces", "-o", "name"),
        60,
        "the CAPI namespace",
        cell.log,
    )
    cell.control_plane.apply([stray_machine(name)])

    wait_for(lambda: cell.lc(name).get("status", {}).get("phase") == "Failed", 300, "abandoned", cell.log)
    # It stays abandoned: no new round of attempts (the agent is still connected).
    time.sleep(4 * RETRY_DELAY_S)
    status = cell.lc(name)["status"]
    assert status["phase"] == "Failed"
    attempts = [
        line
        for line in cell.log.read_text().splitlines()
        if '"pivot attempt failed"' in line and f'"cluster": "{name}"' in line
    ]
    assert len(attempts) == cell_flow.MAX_PIVOT_ATTEMPTS
    print(f"\n{name}: {status['message']}")
    assert status["message"].startswith(f"pivot abandoned after {cell_flow.MAX_PIVOT_ATTEMPTS} attempts")
    assert status["pivot"]["attempt"] == cell_flow.MAX_PIVOT_ATTEMPTS
    assert "fault-3-stray-0 is still provisioning the node" in status["pivot"]["lastError"]
    pivoted = next(c for c in status["conditions"] if c["type"] == "Pivoted")
    assert (pivoted["status"], pivoted["reason"]) == ("False", "PivotFailed")
    # The source stays in charge: all of it still on the cell, the Cluster not paused...
    source = moved_objects(toolchain, cell.kubeconfig, name)
    assert {o["kind"] for o in source} >= {"Cluster", "KubeadmControlPlane", "MachineDeployment", "Machine"}
    cluster = next(o for o in source if o["kind"] == "Cluster")
    assert not cluster["spec"].get("paused")
    assert "cluster.x-k8s.io/paused" not in (cluster["metadata"].get("annotations") or {})
    # ...and nothing of it was imported into the child.
    assert not moved_objects(toolchain, child_kubeconfig(cell, name), name)
