from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from syrupy.assertion import SnapshotAssertion

from lattice.app import yamlio
from lattice.domain.discovery import compilers
from lattice.domain.discovery.messages import ServicePort
from tests.unit.discovery.factories import BASE_DOMAIN, entry

API = entry(
    "api",
    allowed=("frontend",),
    ports=(ServicePort("http", 8080, "http"), ServicePort("grpc", 9090, "GRPC")),
)
API_BY_IP = entry("api", cluster="cluster-c", gateway="10.20.30.40:8443")
NO_PORTS = entry("worker", ports=())

CASES: dict[str, Callable[[], dict[str, Any]]] = {
    "service-entry": lambda: compilers.compile_remote_service_entry(API, "shop"),
    "service-entry-no-ports": lambda: compilers.compile_remote_service_entry(NO_PORTS, "shop"),
    "authorization-policy": lambda: compilers.compile_remote_access_policy("frontend", API, "shop"),
    "authorization-policy-no-ports": lambda: compilers.compile_remote_access_policy(
        "frontend", NO_PORTS, "shop", trust_domain="cluster-b.lattice"
    ),
    "cilium-egress": lambda: compilers.compile_remote_egress_policy(
        "frontend", [API, API_BY_IP, entry("cart")], "shop"
    ),
    "dns-a": lambda: compilers.compile_a_record(
        "api", "prod", "shop", "cluster-a", BASE_DOMAIN, "172.18.255.10"
    ),
    "dns-aaaa": lambda: compilers.compile_a_record(
        "api", "prod", "shop", "cluster-a", BASE_DOMAIN, "fd00::10"
    ),
    "dns-cname": lambda: compilers.compile_cname_record(
        "api", "prod", "shop", "cluster-a", BASE_DOMAIN, "gateway.cluster-a.lattice.example.com"
    ),
    "gateway": lambda: compilers.compile_cross_cluster_gateway("shop", "cluster-a", BASE_DOMAIN, 443),
    "http-route": lambda: compilers.compile_cross_cluster_route(
        "api", "shop", "api.prod.cluster-a.lattice.example.com", 8080
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_golden(case: str, yaml_snapshot: SnapshotAssertion) -> None:
    assert yamlio.dump_all([CASES[case]()]) == yaml_snapshot


def _empties(value: Any, path: str = "") -> list[str]:
    if isinstance(value, dict):
        return ([path] if not value else []) + [
            p for k, v in value.items() for p in _empties(v, f"{path}.{k}")
        ]
    if isinstance(value, list):
        return ([path] if not value else []) + [
            p for i, v in enumerate(value) for p in _empties(v, f"{path}[{i}]")
        ]
    return [path] if value in ("", None) else []


@pytest.mark.parametrize("case", sorted(CASES))
def test_no_empty_values_and_deterministic(case: str) -> None:
    first, second = CASES[case](), CASES[case]()
    assert _empties(first) == []
    assert first == second
    assert first["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "lattice"


def test_exact_fields_the_spec_requires() -> None:
    se = compilers.compile_remote_service_entry(API, "shop")
    assert se["apiVersion"] == "networking.istio.io/v1"
    assert se["metadata"]["name"] == "remote-cluster-a-api"
    assert se["spec"]["location"] == "MESH_INTERNAL"
    assert se["spec"]["resolution"] == "DNS"
    assert se["spec"]["hosts"] == ["api.prod.cluster-a.lattice.example.com"]
    assert [p["protocol"] for p in se["spec"]["ports"]] == ["GRPC", "HTTP"]
    assert se["metadata"]["labels"]["istio.io/use-waypoint"] == "shop-waypoint"
    ap = compilers.compile_remote_access_policy("frontend", API, "shop")
    assert ap["spec"]["targetRefs"] == [
        {"group": "networking.istio.io", "kind": "ServiceEntry", "name": "remote-cluster-a-api"}
    ]
    assert ap["spec"]["rules"][0]["from"][0]["source"]["principals"] == ["cluster.local/ns/shop/sa/frontend"]
    assert ap["spec"]["rules"][0]["to"][0]["operation"]["ports"] == ["9090", "8080"]
    gw = compilers.compile_cross_cluster_gateway("shop", "cluster-a", BASE_DOMAIN)
    listener = gw["spec"]["listeners"][0]
    assert listener["tls"]["options"] == {"gateway.istio.io/tls-terminate-mode": "MUTUAL"}
    assert listener["hostname"] == "*.cluster-a.lattice.example.com"
    dns = compilers.compile_service_dns("api", "prod", "shop", "cluster-a", BASE_DOMAIN, "1.2.3.4")
    assert dns["spec"]["endpoints"][0]["recordTTL"] == 300
    assert dns["metadata"]["name"] == "api-prod-dns"


def test_egress_only_to_the_remote_gateway() -> None:
    assert compilers.remote_egress_rule(API) == {
        "toFQDNs": [{"matchName": "gateway.cluster-a.lattice.example.com"}],
        "toPorts": [{"ports": [{"port": "443", "protocol": "TCP"}]}],
    }
    assert compilers.remote_egress_rule(API_BY_IP)["toCIDR"] == ["10.20.30.40/32"]
    policy = compilers.compile_remote_egress_policy("frontend", [API, entry("cart")], "shop")
    assert len(policy["spec"]["egress"]) == 2  # DNS + the one shared gateway


def test_dns_record_type_follows_the_target() -> None:
    def record(target: str) -> str:
        dns = compilers.compile_service_dns("api", "prod", "shop", "cluster-a", BASE_DOMAIN, target)
        return str(dns["spec"]["endpoints"][0]["recordType"])

    assert [record(t) for t in ("10.0.0.1", "fd00::1", "lb.example.com")] == ["A", "AAAA", "CNAME"]


def test_sort_manifests_orders_by_kind_namespace_name() -> None:
    objs = [
        compilers.compile_remote_service_entry(API, "b"),
        compilers.compile_cross_cluster_route("z", "a", "z.example.com", 80),
        compilers.compile_cross_cluster_route("y", "a", "y.example.com", 80),
        compilers.compile_cross_cluster_gateway("a", "c", BASE_DOMAIN),
    ]
    assert [(m["kind"], m["metadata"]["name"]) for m in compilers.sort_manifests(objs)] == [
        ("Gateway", "a-cross-cluster-gateway"),
        ("HTTPRoute", "y-cross-cluster-route"),
        ("HTTPRoute", "z-cross-cluster-route"),
        ("ServiceEntry", "remote-cluster-a-api"),
    ]
