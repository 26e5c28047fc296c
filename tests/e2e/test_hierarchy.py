"""A child that is a cell creates its own children, whose agents dial their direct parent (real
control planes, the real Cluster API controllers in every cluster)."""

from __future__ import annotations

import json
import queue
import subprocess
import sys
import threading
import time
from pathlib import Path
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
    grpc, bootstrap, proxy = free_port(), free_port(), free_port()
    child_cell = local_cluster(
        "region-1",
        cell.name,
        workers=1,
        parentConfig={
            "host": REGION_ADDRESS,
            "grpcPort": grpc,
            "bootstrapPort": bootstrap,
            "proxyPort": proxy,
        },
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
    # the cell serves the Kubernetes API proxy by default (parentConfig.proxyPort)
    assert {p["port"] for p in service["spec"]["ports"]} == {grpc, bootstrap, proxy}
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

    started = time.monotonic()
    _reach_both_through_the_root_proxy(cell, toolchain, region)
    print(f"API proxy checks through the root cell took {time.monotonic() - started:.1f} s")

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


# ------------------------------------------------------------------ the Kubernetes API proxy

PROXY_NS = "proxy-e2e"


def _apply(toolchain: Toolchain, kubeconfig: Path, objects: list[dict[str, Any]]) -> None:
    """Set-up applied straight to a cluster (not through the proxy): retried while its API server
    is still busy (a child's just rewrote its CAPI CRDs: kubectl's OpenAPI download timed out once
    under load), and a failure says what kubectl said."""
    body = json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    errors: list[str] = []
    for _ in range(5):
        done = subprocess.run(
            [str(toolchain.kubectl), f"--kubeconfig={kubeconfig}", "apply", "-f", "-"],
            input=body,
            text=True,
            check=False,
            capture_output=True,
        )
        if done.returncode == 0:
            return
        errors.append(done.stderr.strip())
        time.sleep(5)
    raise AssertionError(f"kubectl apply to {kubeconfig} failed 5 times: {errors}")


def _binding(name: str, role: str, *accounts: str) -> dict[str, Any]:
    # a ServiceAccount of the root is this user on every cluster below it (impersonated)
    users = [f"system:serviceaccount:{PROXY_NS}:{account}" for account in accounts]
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": u} for u in users],
    }


def _configmap(name: str, value: str) -> str:
    metadata = {"name": name, "namespace": "default"}
    return json.dumps({"apiVersion": "v1", "kind": "ConfigMap", "metadata": metadata, "data": {"v": value}})


def _token(cell: Cell, account: str) -> str:
    return cell.kubectl("create", "token", account, "-n", PROXY_NS, "--duration=1h").strip()


def _proxy_kubeconfig(cell: Cell, path: str, account: str, out: Path) -> Path:
    token = _token(cell, account)
    via = ("--via", str(cell.kubeconfig))
    made = subprocess.run(
        [sys.executable, "-m", "lattice.app.cli", "kubeconfig", path, *via, "--token", token],
        capture_output=True,
        text=True,
        check=True,
    )
    out.write_text(made.stdout)
    return out


def _run(
    toolchain: Toolchain, kubeconfig: Path, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(toolchain.kubectl), f"--kubeconfig={kubeconfig}", "--request-timeout=60s", *args],
        input=stdin,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _watch_sees_a_change(toolchain: Toolchain, kubeconfig: Path, name: str, value: str) -> list[str]:
    """A watch streamed through the proxy: kubectl prints the ConfigMap as listed, then watches
    from that list's resourceVersion, so a change made after the first line is its next line;
    then the client goes (killed), which cancels the watch down the tree."""
    kubectl_at = (str(toolchain.kubectl), f"--kubeconfig={kubeconfig}")
    printed = "jsonpath={.data.v}{'\\n'}"
    watch = subprocess.Popen(
        [*kubectl_at, "get", "configmap", name, "-n", "default", "--watch", "-o", printed],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()
    out = watch.stdout
    assert out is not None

    def read() -> None:
        for line in out:
            lines.put(line.strip())

    threading.Thread(target=read, daemon=True).start()
    try:
        listed = lines.get(timeout=60)
        changed = _run(toolchain, kubeconfig, "apply", "-f", "-", stdin=_configmap(name, value))
        assert changed.returncode == 0, changed.stderr
        return [listed, lines.get(timeout=60)]
    except queue.Empty:
        watch.kill()
        raise AssertionError(
            f"the watch through the proxy reported nothing: {watch.communicate()[1]}"
        ) from None
    finally:
        watch.kill()
        watch.wait(10)


def _reach_both_through_the_root_proxy(cell: Cell, toolchain: Toolchain, region: Path) -> None:
    """From the root cell's proxy, with `lattice kubeconfig` and the real kubectl: get, apply,
    delete and a watch on region-1 and on edge-1 (relayed by region-1's agent to region-1's own
    cell) for an allowed caller; 403 from the root for a caller without the proxy permission; the
    child's own 403 for a caller allowed on the root but granted nothing on the child."""
    edge = child_kubeconfig(cell, "edge-1")
    proxy_rule = {
        "apiGroups": ["lattice.dev"],
        "resources": ["latticeclusters/proxy"],
        "verbs": ["get", "create", "update", "patch", "delete"],
    }
    proxy_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": "proxy-e2e"},
        "rules": [proxy_rule],
    }
    accounts = [
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": a, "namespace": PROXY_NS}}
        for a in ("alice", "bob", "carol")
    ]
    cell.kubectl("create", "namespace", PROXY_NS)
    # the root: alice and carol may use the proxy, bob may not
    _apply(
        toolchain,
        cell.kubeconfig,
        [*accounts, proxy_role, _binding("proxy-e2e", "proxy-e2e", "alice", "carol")],
    )
    # region-1 (whose cell checks the proxy permission for edge-1 in turn) and edge-1: alice only
    _apply(toolchain, region, [_binding("proxy-e2e-alice", "cluster-admin", "alice")])
    _apply(toolchain, edge, [_binding("proxy-e2e-alice", "cluster-admin", "alice")])
    work = cell.state_dir / "proxy-e2e"
    work.mkdir(exist_ok=True)
    for path in ("region-1", "region-1/edge-1"):
        started = time.monotonic()
        alice = _proxy_kubeconfig(cell, path, "alice", work / f"alice-{path.replace('/', '-')}.kubeconfig")
        server = _yaml(alice)["clusters"][0]["cluster"]["server"]
        assert server.endswith("/clusters/" + "/clusters/".join(path.split("/"))), server

        def listed(kubeconfig: Path = alice) -> str:
            got = _run(toolchain, kubeconfig, "get", "namespaces", "-o", "name")
            assert got.returncode == 0, got.stderr
            return got.stdout

        # a binding just applied on the child is enforced once its API server's cache has it
        assert "namespace/kube-system" in wait_for(listed, 60, f"kubectl get through the proxy to {path}")
        applied = _run(toolchain, alice, "apply", "-f", "-", stdin=_configmap("proxy-e2e", path))
        assert applied.returncode == 0, applied.stderr
        direct = edge if path.endswith("edge-1") else region
        # the object is on that cluster (read directly with its admin kubeconfig)
        value = kubectl(
            toolchain, direct, "get", "cm", "proxy-e2e", "-n", "default", "-o", "jsonpath={.data.v}"
        )
        assert value == path
        assert _watch_sees_a_change(toolchain, alice, "proxy-e2e", "changed") == [path, "changed"]
        deleted = _run(toolchain, alice, "delete", "configmap", "proxy-e2e", "-n", "default")
        assert deleted.returncode == 0, deleted.stderr
        gone = kubectl(toolchain, direct, "get", "cm", "proxy-e2e", "-n", "default", "--ignore-not-found")
        assert not gone.strip()

        bob = _as(cell, alice, "bob", work / "bob.kubeconfig")
        refused = _run(toolchain, bob, "get", "configmaps", "-n", "default")
        assert refused.returncode != 0
        # the root refuses, naming its own subresource and region-1 (its child on the path)
        assert 'cannot get resource "latticeclusters/proxy"' in refused.stderr, refused.stderr
        assert "region-1" in refused.stderr, refused.stderr
        took = time.monotonic() - started
        print(f"API proxy: get, apply, watch, delete and a refusal on {path} in {took:.1f} s")

    carol = _as(cell, work / "alice-region-1.kubeconfig", "carol", work / "carol.kubeconfig")
    denied = _run(toolchain, carol, "get", "configmaps", "-n", "default")
    assert denied.returncode != 0
    # region-1's own API server refuses carol, whom its agent impersonated
    expected = f'User "system:serviceaccount:{PROXY_NS}:carol" cannot list resource "configmaps"'
    assert expected in denied.stderr, denied.stderr


def _as(cell: Cell, kubeconfig: Path, account: str, out: Path) -> Path:
    """``kubeconfig`` (printed by lattice kubeconfig) with another account's token."""
    config = _yaml(kubeconfig)
    config["users"][0]["user"]["token"] = _token(cell, account)
    out.write_text(json.dumps(config))
    return out


def _yaml(path: Path) -> Any:
    from ruamel.yaml import YAML  # noqa: PLC0415 - only these checks read YAML

    return YAML(typ="safe", pure=True).load(path.read_text())
