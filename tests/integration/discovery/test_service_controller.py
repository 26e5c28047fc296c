"""The LatticeService controller on a real kube-apiserver, resolving through a real cell hub over
real agent streams (mutual TLS on loopback).

The API server serves the generated kinds through the real Istio, Cilium, Gateway API and
external-dns CRDs (scripts/fetch-mesh-crds.sh), so every object is checked against the upstream
schemas; what a mesh would do with them is not.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lattice.adapters.clock import SystemClock
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app.discovery.coordinator import DiscoveryConfig, DiscoveryCoordinator
from lattice.app.discovery.service_controller import (
    GENERATED_KINDS,
    MANAGED_SELECTOR,
    ServiceController,
)
from lattice.domain.discovery.cache import CacheChanges
from lattice.domain.discovery.naming import ClusterContext
from lattice.domain.lattice_service import ValidService
from lattice.ports import kube
from lattice.ports.kube import ResourceRef
from tests.integration.agent.conftest import Pki
from tests.unit.discovery.factories import HTTP, service_doc, svc

from .conftest import discovery_agent, discovery_cell, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def apiserver(cell_control_plane: ControlPlane) -> ControlPlane:
    cell_control_plane.install_mesh_crds()
    return cell_control_plane


async def _objects(api: Kr8sKube, namespace: str) -> set[tuple[str, str]]:
    found: set[tuple[str, str]] = set()
    for api_version, kind in GENERATED_KINDS:
        listed = await api.list(api_version, kind, namespace=namespace, label_selector=MANAGED_SELECTOR)
        found |= {(kind, item["metadata"]["name"]) for item in listed.items}
    return found


async def _status(api: Kr8sKube, namespace: str, name: str) -> dict[str, Any]:
    obj = await api.get(ResourceRef("lattice.dev/v1alpha1", "LatticeService", name, namespace))
    status: dict[str, Any] = obj.get("status", {})
    return status


@contextlib.asynccontextmanager
async def _running(controller: ServiceController) -> AsyncIterator[None]:
    stop = asyncio.Event()
    task = asyncio.create_task(controller.run(stop))
    try:
        yield
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def test_reconciles_services_into_generated_objects(apiserver: ControlPlane, cell_pki: Pki) -> None:
    ns = f"shop-{uuid.uuid4().hex[:6]}"
    apiserver.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}])
    api = await Kr8sKube.connect(str(apiserver.kubeconfig))
    controllers: list[ServiceController] = []

    async def local() -> list[ValidService]:
        return await controllers[0].local_services() if controllers else []

    async def requeue(changes: CacheChanges) -> None:
        for c in controllers:
            await c.on_cache_changes(changes)

    api_v1 = svc("api", ports=HTTP, inbound=("frontend",), resource_version="1")
    async with (
        discovery_cell(cell_pki) as cell,
        discovery_agent(cell_pki, "cluster-a", cell.port, [api_v1]) as a,
        discovery_agent(cell_pki, "cluster-b", cell.port, [], local_services=local, on_changes=requeue) as b,
    ):
        await wait_until(lambda: a.discovery.syncs >= 1 and b.discovery.syncs >= 1, what="synced")
        await wait_until(lambda: cell.catalog.get("prod", "api") is not None, what="api in the catalog")
        controller = ServiceController(api, b.coordinator, b.context, resync_s=30)
        controllers.append(controller)
        for doc in (
            service_doc("frontend", namespace=ns, ports=HTTP, outbound=("api",), resource_version=None),
            service_doc("web", namespace=ns, ports=HTTP, inbound=("*",), resource_version=None),
        ):
            await api.create(doc)
        # valid for the CRD, invalid for Lattice (port names are IANA service names)
        await api.create(
            service_doc("bad", namespace=ns, ports={"Bad_Name": {"port": 80}}, resource_version=None)
        )

        async with _running(controller):
            want = {
                ("ServiceEntry", "remote-cluster-a-api"),
                ("AuthorizationPolicy", "allow-frontend-to-remote-api"),
                ("CiliumNetworkPolicy", "frontend-remote-egress"),
                ("Gateway", f"{ns}-cross-cluster-gateway"),
                ("HTTPRoute", "web-cross-cluster-route"),
                ("DNSEndpoint", "web-prod-dns"),
            }
            await _eventually(lambda: _objects(api, ns), lambda got: got == want, "generated objects")
            await _eventually(
                lambda: _status(api, ns, "frontend"), lambda s: s.get("phase") == "Ready", "frontend Ready"
            )
            bad = await _eventually(
                lambda: _status(api, ns, "bad"), lambda s: s.get("phase") == "Failed", "bad Failed"
            )
            assert "spec.service.ports.Bad_Name" in bad["message"]
            # web was announced to the parent from this cluster, over the real stream
            await wait_until(lambda: cell.catalog.get("prod", "web") is not None, what="web announced")
            web = cell.catalog.get("prod", "web")
            assert web is not None
            assert web.source_cluster == "cluster-b"
            assert cell.catalog.get("prod", "bad") is None

            # A narrows api: the push requeues B's controller, which prunes the caller side
            narrowed = svc("api", ports=HTTP, inbound=("admin",), resource_version="2")
            a.local[:] = [narrowed]
            assert await a.coordinator.announce_service(narrowed)
            await _eventually(
                lambda: _objects(api, ns),
                lambda got: (
                    got
                    == want
                    - {
                        ("ServiceEntry", "remote-cluster-a-api"),
                        ("AuthorizationPolicy", "allow-frontend-to-remote-api"),
                        ("CiliumNetworkPolicy", "frontend-remote-egress"),
                    }
                ),
                "caller side pruned",
            )
            frontend = await _eventually(
                lambda: _status(api, ns, "frontend"),
                lambda s: s.get("phase") == "Pending",
                "frontend Pending",
            )
            assert "api: NotAllowed" in frontend["message"]

            # deleting web withdraws it from the parent and prunes the callee side
            await api.delete(ResourceRef("lattice.dev/v1alpha1", "LatticeService", "web", ns))
            await _eventually(lambda: _objects(api, ns), lambda got: got == set(), "callee side pruned")
            await wait_until(lambda: cell.catalog.get("prod", "web") is None, what="web withdrawn")


async def _eventually(probe: Any, check: Any, what: str, within: float = 30.0) -> Any:
    deadline = asyncio.get_running_loop().time() + within
    last: Any = None
    while asyncio.get_running_loop().time() < deadline:
        try:
            last = await probe()
        except kube.KubeError as exc:
            last = exc
        else:
            if check(last):
                return last
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


async def test_kinds_the_server_does_not_serve_are_reported_not_fatal(control_plane_factory: Any) -> None:
    """A fresh API server with the Lattice CRDs only (no mesh, no Gateway API): the pass reports
    every object it could not apply, still writes status, and a cluster without a parent
    (coordinator without a channel) plans its callee side alone."""
    cp: ControlPlane = control_plane_factory.one()
    cp.install_lattice_crds()
    cp.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}])
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    ctx = ClusterContext(cluster_name="root", base_domain="lattice.example.com")
    coordinator = DiscoveryCoordinator(DiscoveryConfig(ctx), None, SystemClock(), lambda: uuid.uuid4().hex)
    controller = ServiceController(api, coordinator, ctx)
    await api.create(service_doc("web", ports=HTTP, inbound=("*",), resource_version=None))
    await api.create(service_doc("frontend", ports=HTTP, outbound=("api",), resource_version=None))

    report = await controller.reconcile()
    assert report.valid == 2
    assert report.applied == 0
    assert {e.split(":")[0] for e in report.errors} == {
        "apply Gateway shop/shop-cross-cluster-gateway",
        "apply HTTPRoute shop/web-cross-cluster-route",
        "apply DNSEndpoint shop/web-prod-dns",
    }
    web = await _status(api, "shop", "web")
    assert web["phase"] == "Ready"
    frontend = await _status(api, "shop", "frontend")
    assert frontend["phase"] == "Pending"
    assert "api: Unknown" in frontend["message"]
    assert sorted(s.name for s in await controller.local_services()) == ["frontend", "web"]
