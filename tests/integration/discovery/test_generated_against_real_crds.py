"""Every kind of object the discovery compilers generate, server-side dry-run applied with strict
field validation against the real upstream CRDs (Istio, Cilium, Gateway API, external-dns; fetched
from their Go modules by scripts/fetch-mesh-crds.sh) on a real kube-apiserver.

kubectl's server-side apply sends ``fieldValidation=Strict``, so an unknown or misspelled field is
an error here, not a silently pruned field."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from lattice.adapters.controlplane import ControlPlane
from lattice.domain.discovery.plan import plan_service_resources
from tests.unit.discovery.factories import HTTP, context, entry, svc

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

GRPC = {"grpc": {"port": 9090, "protocol": "GRPC"}}


@pytest.fixture(scope="module")
def mesh_apiserver(cell_control_plane: ControlPlane) -> ControlPlane:
    cell_control_plane.install_mesh_crds()
    cell_control_plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "shop"}}])
    return cell_control_plane


def _plans() -> list[list[dict[str, Any]]]:
    remote = {e.key: e for e in (entry("api", allowed=("frontend",)), entry("grpc-api", allowed=("*",)))}
    local = [
        svc("frontend", ports=HTTP, outbound=("api", "grpc-api")),
        svc("web", ports=HTTP, inbound=("*",)),
        svc("rpc", ports=GRPC, inbound=("frontend",)),
    ]
    return [
        list(plan_service_resources(local, remote, ctx).objects)
        for ctx in (
            context(gateway_address="10.0.0.7"),  # A record
            context(gateway_address="gw.lb.example.net", gateway_port=8443),  # CNAME, other port
            context(),  # no observed address
        )
    ]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["a-record", "cname", "no-address"])
def test_every_generated_object_is_accepted(mesh_apiserver: ControlPlane, index: int) -> None:
    objects = _plans()[index]
    kinds = Counter(o["kind"] for o in objects)
    assert set(kinds) >= {"ServiceEntry", "AuthorizationPolicy", "CiliumNetworkPolicy", "HTTPRoute"}
    assert kinds["Gateway"] == 1
    if index < 2:
        assert kinds["DNSEndpoint"] >= 1
    result = mesh_apiserver.apply(objects, dry_run=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == "", result.stderr  # no warnings (unknown fields would warn)


def test_a_misspelled_field_is_refused_so_the_check_is_real(mesh_apiserver: ControlPlane) -> None:
    objects = _plans()[0]
    entry_obj = next(o for o in objects if o["kind"] == "ServiceEntry")
    broken = {**entry_obj, "spec": {**entry_obj["spec"], "resolutoin": "DNS"}}
    result = mesh_apiserver.apply([broken], dry_run=True, check=False)
    assert result.returncode != 0
    assert "resolutoin" in result.stderr
