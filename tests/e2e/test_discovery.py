"""Cross-cluster service discovery end to end (spec 003, section 9): a cell and two children it
provisioned with the local provider, each child's agent streaming to the cell over mutual TLS,
each agent reconciling its cluster's LatticeServices. The children run the real Istio, Cilium,
Gateway API and external-dns CRDs (installed as a platform team's mesh install would).

The four scenarios of the document, on one set of clusters (each test uses its own service
names; the last one kills and restarts the cell):

* basic dependency: ServiceEntry, AuthorizationPolicy and egress rule in the caller's cluster,
  Gateway, HTTPRoute and DNSEndpoint in the callee's;
* bilateral denial: a dependency the callee does not allow gets no ServiceEntry;
* update propagation: the callee narrows its allowed callers, the caller's access is removed;
* parent disconnect: the cell is killed, the child keeps its objects and wires a new dependant
  from cached data; the restarted cell gets a full sync and serves new lookups.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
from attrs import frozen

from lattice.adapters.binaries import Toolchain

from .conftest import Cell, agent_log, child_kubeconfig, install_mesh_crds, kubectl, local_cluster, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

BASE_DOMAIN = "lattice.example.com"
NAMESPACE = "shop"
CALLEE, CALLER = "svc-a", "svc-b"
SE = "serviceentries.networking.istio.io"
AP = "authorizationpolicies.security.istio.io"
CNP = "ciliumnetworkpolicies.cilium.io"
ROUTE = "httproutes.gateway.networking.k8s.io"
GATEWAY = "gateways.gateway.networking.k8s.io"
DNS = "dnsendpoints.externaldns.k8s.io"


@frozen
class Child:
    name: str
    kubeconfig: Path
    toolchain: Toolchain

    def kubectl(self, *args: str, check: bool = True) -> str:
        return kubectl(self.toolchain, self.kubeconfig, *args, check=check)

    def apply(self, *docs: dict[str, Any]) -> None:
        subprocess.run(
            [str(self.toolchain.kubectl), f"--kubeconfig={self.kubeconfig}", "apply", "-f", "-"],
            input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(docs)}),
            text=True,
            check=True,
            capture_output=True,
        )

    def names(self, kind: str) -> set[str]:
        out = self.kubectl("get", kind, "-n", NAMESPACE, "-o", "json")
        return {item["metadata"]["name"] for item in json.loads(out)["items"]}

    def status(self, service: str) -> dict[str, Any]:
        out = self.kubectl("get", "latticeservice", service, "-n", NAMESPACE, "-o", "json")
        status: dict[str, Any] = json.loads(out).get("status") or {}
        return status

    @property
    def agent_log(self) -> Path:
        return agent_log(self.kubeconfig.parents[4], self.name)


@frozen
class Mesh:
    cell: Cell
    callee: Child
    caller: Child


def service(
    name: str, *, ports: bool = True, outbound: tuple[str, ...] = (), inbound: tuple[str, ...] = ()
) -> dict[str, Any]:
    resources = {other: {"type": "service", "direction": "outbound"} for other in outbound}
    resources |= {other: {"type": "service", "direction": "inbound"} for other in inbound}
    spec: dict[str, Any] = {"environment": "prod"}
    if ports:
        spec["service"] = {"ports": {"http": {"port": 8080}}}
    if resources:
        spec["resources"] = resources
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": spec,
    }


NAMESPACE_DOC = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}


@pytest.fixture(scope="module")
def mesh(cell: Cell, toolchain: Toolchain) -> Mesh:
    discovery = {"enabled": True, "baseDomain": BASE_DOMAIN}
    cell.control_plane.apply(
        [local_cluster(name, cell.name, workers=1, discovery=discovery) for name in (CALLEE, CALLER)]
    )
    for name in (CALLEE, CALLER):
        ready = lambda n=name: cell.lc(n).get("status", {}).get("phase") == "Ready"  # noqa: E731
        wait_for(ready, 300, f"{name} Ready", cell.log)
    children = [Child(name, child_kubeconfig(cell, name), toolchain) for name in (CALLEE, CALLER)]
    for child in children:
        install_mesh_crds(toolchain, child.kubeconfig)
        child.apply(NAMESPACE_DOC)
        # the agent the cell's registration payload started runs with discovery on
        wait_for(lambda c=child: "resynchronised with the parent" in _read(c.agent_log), 60, "discovery sync")
    return Mesh(cell, *children)


def _read(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def _eventually(probe: Any, what: str, child: Child, timeout: float = 60) -> Any:
    return wait_for(probe, timeout, what, child.agent_log)


def test_basic_dependency(mesh: Mesh) -> None:
    a, b = mesh.callee, mesh.caller
    a.apply(service("api", inbound=("web",)))
    b.apply(service("web", outbound=("api",)))

    # One pass applies the objects one after the other: wait for all of them, not the first.
    _eventually(lambda: "remote-svc-a-api" in b.names(SE), "ServiceEntry", b)
    _eventually(lambda: "allow-web-to-remote-api" in b.names(AP), "AuthorizationPolicy", b)
    _eventually(lambda: "web-remote-egress" in b.names(CNP), "CiliumNetworkPolicy", b)
    entry = json.loads(b.kubectl("get", "serviceentry", "remote-svc-a-api", "-n", NAMESPACE, "-o", "json"))
    assert entry["spec"]["hosts"] == [f"api.prod.svc-a.{BASE_DOMAIN}"]
    assert entry["spec"]["location"] == "MESH_INTERNAL"
    assert entry["spec"]["resolution"] == "DNS"
    _eventually(lambda: b.status("web").get("phase") == "Ready", "web Ready", b)

    # the callee side: exposed through the cross-cluster gateway, with a DNS record
    _eventually(lambda: "api-cross-cluster-route" in a.names(ROUTE), "route", a)
    assert f"{NAMESPACE}-cross-cluster-gateway" in a.names(GATEWAY)
    assert "api-prod-dns" in a.names(DNS)
    # nothing of the callee side in the caller's cluster, and the reverse
    assert "api-cross-cluster-route" not in b.names(ROUTE)
    assert not a.names(SE)


def test_bilateral_denial(mesh: Mesh) -> None:
    a, b = mesh.callee, mesh.caller
    a.apply(service("vault", inbound=("admin",)))
    b.apply(service("snoop", outbound=("vault",)))

    status = _eventually(lambda: b.status("snoop") if b.status("snoop").get("phase") else None, "status", b)
    assert status["phase"] == "Pending"
    assert "vault: NotAllowed" in status["message"]
    assert "remote-svc-a-vault" not in b.names(SE)
    assert "allow-snoop-to-remote-vault" not in b.names(AP)
    assert "snoop-remote-egress" not in b.names(CNP)


def test_update_propagation(mesh: Mesh) -> None:
    a, b = mesh.callee, mesh.caller
    # spec 003, E2E 4: allowed callers [*], then narrowed to a specific caller
    a.apply(service("orders", inbound=("*",)))
    b.apply(service("checkout", outbound=("orders",)))
    _eventually(lambda: "remote-svc-a-orders" in b.names(SE), "wired", b)
    _eventually(lambda: "allow-checkout-to-remote-orders" in b.names(AP), "allowed", b)

    # orders narrows its allowed callers: catalog updated, dependant re-planned, access removed
    a.apply(service("orders", inbound=("billing",)))
    _eventually(
        lambda: "allow-checkout-to-remote-orders" not in b.names(AP),
        "access removed",
        b,
    )
    assert "remote-svc-a-orders" not in b.names(SE)
    _eventually(
        lambda: "orders: NotAllowed" in b.status("checkout").get("message", ""), "checkout Pending", b
    )


def test_parent_disconnect_keeps_cached_data_and_a_restarted_parent_resyncs(mesh: Mesh) -> None:
    cell, a, b = mesh.cell, mesh.callee, mesh.caller
    a.apply(service("stock", inbound=("*",)))
    b.apply(service("shelf", outbound=("stock",)))
    _eventually(lambda: "remote-svc-a-stock" in b.names(SE), "wired", b)

    assert cell.operator is not None
    lost_before = _read(b.agent_log).count("parent disconnected")
    cell.operator.kill()  # the parent dies without a goodbye
    cell.operator.wait(30)
    cell.operator = None
    _eventually(lambda: _read(b.agent_log).count("parent disconnected") > lost_before, "the agent notices", b)

    # a new dependant is wired from cached data; the existing objects stay
    b.apply(service("shelf2", outbound=("stock",)))
    _eventually(
        lambda: "allow-shelf2-to-remote-stock" in b.names(AP),
        "shelf2 wired from the cache",
        b,
    )
    assert "remote-svc-a-stock" in b.names(SE)
    assert "allow-shelf-to-remote-stock" in b.names(AP)
    assert b.status("shelf2").get("phase") == "Ready"

    # the restarted parent (empty catalog) is filled by the children's full syncs
    cell.start_operator()
    a.apply(service("price", inbound=("tag",)))
    b.apply(service("tag", outbound=("price",)))
    _eventually(
        lambda: "remote-svc-a-price" in b.names(SE),
        "resolved through the restarted parent",
        b,
        timeout=120,
    )
    assert "remote-svc-a-stock" in b.names(SE)
