"""A child that is a cell creates its own children, whose agents dial their direct parent (real
control planes, the real Cluster API controllers in every cluster)."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from lattice.adapters.binaries import Toolchain
from lattice.adapters.controlplane import free_port
from tests.e2e.conftest import (
    Cell,
    agent_log,
    check_addons,
    child_kubeconfig,
    kubectl,
    local_cluster,
    machine_pids,
    machines_dir,
    wait_deleted,
    wait_for,
)

pytestmark = pytest.mark.e2e


# region-1 is reached through its LoadBalancer Service: LB-IPAM (the stand-in run for Cilium's
# operator pod) gives it the pool address its parentConfig names, on loopback.
REGION_ADDRESS = "127.77.1.1"


def test_a_child_cell_provisions_a_grandchild(cell: Cell, toolchain: Toolchain) -> None:
    grpc, bootstrap = free_port(), free_port()
    child_cell = local_cluster(
        "region-1",
        cell.name,
        workers=1,
        parentConfig={"host": REGION_ADDRESS, "grpcPort": grpc, "bootstrapPort": bootstrap},
        networking={"default": {"cidr": "127.77.1.0/30"}},
    )
    cell.control_plane.apply([child_cell])
    wait_for(
        lambda: cell.lc("region-1").get("status", {}).get("phase") == "Ready", 240, "region-1 Ready", cell.log
    )
    region = child_kubeconfig(cell, "region-1")
    check_addons(toolchain, region, "region-1", "127.77.1.0/30")

    def exposed() -> dict[str, Any] | None:
        found = kubectl(
            toolchain, region, "get", "svc", "-n", "lattice-system", "lattice-cell", "-o", "json", check=False
        )
        service = json.loads(found) if found.strip() else {}
        ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
        return service if ingress else None

    service = wait_for(exposed, 120, "region-1's cell Service to get its LoadBalancer address")
    assert service["spec"]["type"] == "LoadBalancer"
    assert service["status"]["loadBalancer"]["ingress"] == [{"ip": REGION_ADDRESS, "ipMode": "VIP"}]
    assert {p["port"] for p in service["spec"]["ports"]} == {grpc, bootstrap}
    grandchild = json.dumps(local_cluster("edge-1", "region-1", workers=1))
    kubectl_apply = [str(toolchain.kubectl), f"--kubeconfig={region}", "apply", "-f", "-"]
    subprocess.run(kubectl_apply, input=grandchild, text=True, check=True, capture_output=True)

    def edge_ready() -> bool:
        out = json.loads(kubectl(toolchain, region, "get", "lc", "edge-1", "-o", "json"))
        return bool((out.get("status") or {}).get("phase") == "Ready")

    wait_for(edge_ready, 300, "edge-1 Ready on region-1")
    # The grandchild registered and dials its direct parent through region-1's Service address
    # (the load balancer), not the root cell.
    booted = sorted(machines_dir(cell).glob("edge-1-control-plane-*/machine.json"))
    assert booted, "region-1's own local provider booted edge-1 (in the machines directory it shares)"
    edge_agent = agent_log(machines_dir(cell), "edge-1").read_text()
    assert f"{REGION_ADDRESS}:{grpc}" in edge_agent
    assert f"127.0.0.1:{cell.grpc_port}" not in edge_agent
    # The root cell never saw edge-1.
    assert "edge-1" not in cell.kubectl("get", "lc", "-o", "name")

    # Deleting region-1 on the root: a cell with a child refuses, naming it...
    cell.kubectl("delete", "lc", "region-1", "--wait=false")

    def refused() -> str:
        return str(cell.lc("region-1").get("status", {}).get("message", "")) if _has(cell, "region-1") else ""

    message = wait_for(lambda: "edge-1" in refused() and refused(), 120, "region-1 to refuse, naming edge-1")
    assert "a cell with children (edge-1)" in message
    assert "cascade-delete" in message
    # ...until asked for a cascade: region-1 deletes edge-1 (its own unpivot, on region-1), then
    # hands itself back to the root, whose CAPI deletes its machines.
    cell.kubectl("annotate", "lc", "region-1", "lattice.dev/cascade-delete=true")
    took = wait_deleted(cell, "region-1", timeout=420)
    print(f"region-1 and edge-1 deleted in cascade in {took:.1f} s")
    assert not machine_pids(cell, "edge-1")
    assert not list(machines_dir(cell).glob("edge-1-*"))


def _has(cell: Cell, name: str) -> bool:
    return bool(cell.kubectl("get", "lc", name, "--ignore-not-found", "-o", "name").strip())
