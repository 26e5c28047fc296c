from __future__ import annotations

from syrupy.assertion import SnapshotAssertion

from lattice.app import yamlio
from lattice.domain.discovery.plan import (
    DependencyState,
    DependencyStatus,
    ExposedService,
    plan_service_resources,
    route_port,
    unknown_dependencies,
)
from tests.unit.discovery.factories import HTTP, context, entry, svc

FRONTEND = svc(
    "frontend",
    ports={"http": {"port": 3000, "protocol": "HTTP"}},
    outbound=("api", "cart", "ledger", "db"),
    inbound=("*",),
)
CART = svc("cart", ports=HTTP, inbound=("frontend",))
REMOTE = {
    ("prod", "api"): entry("api", allowed=("frontend",)),
    ("prod", "ledger"): entry("ledger", cluster="cluster-c", allowed=("billing",)),
}


def test_cluster_b_plan_golden(yaml_snapshot: SnapshotAssertion) -> None:
    plan = plan_service_resources(
        [FRONTEND, CART], REMOTE, context("cluster-b", gateway_address="172.18.255.20")
    )
    assert yamlio.dump_all(list(plan.objects)) == yaml_snapshot


def test_dependency_states() -> None:
    plan = plan_service_resources([FRONTEND, CART], REMOTE, context("cluster-b"))
    assert plan.for_caller("shop", "frontend") == (
        DependencyStatus("shop", "frontend", "prod", "api", DependencyState.REMOTE, "cluster-a"),
        DependencyStatus("shop", "frontend", "prod", "cart", DependencyState.LOCAL),
        DependencyStatus("shop", "frontend", "prod", "db", DependencyState.UNKNOWN),
        DependencyStatus("shop", "frontend", "prod", "ledger", DependencyState.NOT_ALLOWED, "cluster-c"),
    )
    assert [d.dependency for d in plan.unresolved] == ["db", "ledger"]
    assert plan.exposed == (
        ExposedService("shop", "cart", "cart.prod.cluster-b.lattice.example.com", 8080),
        ExposedService("shop", "frontend", "frontend.prod.cluster-b.lattice.example.com", 3000),
    )


def test_without_bilateral_agreement_nothing_lets_traffic_through() -> None:
    caller = svc("intruder", outbound=("api",))
    plan = plan_service_resources([caller], {("prod", "api"): entry("api", allowed=("frontend",))}, context())
    assert plan.objects == ()
    # ... and without the caller declaring the dependency, an allowing callee is not wired either.
    quiet = svc("frontend")
    assert (
        plan_service_resources([quiet], {("prod", "api"): entry("api", allowed=("*",))}, context()).objects
        == ()
    )


def test_remote_without_ports_is_not_wired() -> None:
    plan = plan_service_resources(
        [svc("a", outbound=("w",))], {("prod", "w"): entry("w", ports=())}, context()
    )
    assert plan.objects == ()
    assert plan.dependencies[0].state is DependencyState.NO_PORTS


def test_service_entries_are_shared_per_namespace_policies_are_per_caller() -> None:
    callers = [
        svc("a", outbound=("api",)),
        svc("b", outbound=("api",)),
        svc("c", namespace="other", outbound=("api",)),
    ]
    plan = plan_service_resources(callers, {("prod", "api"): entry("api")}, context())
    kinds = [(o["kind"], o["metadata"]["namespace"], o["metadata"]["name"]) for o in plan.objects]
    assert kinds == [
        ("ServiceEntry", "other", "remote-cluster-a-api"),
        ("ServiceEntry", "shop", "remote-cluster-a-api"),
        ("AuthorizationPolicy", "other", "allow-c-to-remote-api"),
        ("AuthorizationPolicy", "shop", "allow-a-to-remote-api"),
        ("AuthorizationPolicy", "shop", "allow-b-to-remote-api"),
        ("CiliumNetworkPolicy", "other", "c-remote-egress"),
        ("CiliumNetworkPolicy", "shop", "a-remote-egress"),
        ("CiliumNetworkPolicy", "shop", "b-remote-egress"),
    ]


def test_callee_side_only_for_services_that_allow_callers_and_have_ports() -> None:
    plan = plan_service_resources(
        [svc("closed", ports=HTTP), svc("portless", inbound=("*",)), svc("open", ports=HTTP, inbound=("x",))],
        {},
        context("cluster-a"),
    )
    assert [(o["kind"], o["metadata"]["name"]) for o in plan.objects] == [
        ("Gateway", "shop-cross-cluster-gateway"),
        ("HTTPRoute", "open-cross-cluster-route"),
        ("DNSEndpoint", "open-prod-dns"),
    ]
    dns = plan.objects[2]["spec"]["endpoints"][0]
    assert (dns["recordType"], dns["targets"]) == ("CNAME", ["gateway.cluster-a.lattice.example.com"])


def test_conflicting_duplicate_is_not_exposed_twice() -> None:
    plan = plan_service_resources(
        [svc("api", ports=HTTP, inbound=("*",)), svc("api", namespace="zz", ports=HTTP, inbound=("*",))],
        {},
        context(),
    )
    assert [e.namespace for e in plan.exposed] == ["shop"]


def test_route_port_prefers_http_like_ports() -> None:
    mixed = svc(
        "m", ports={"a-tcp": {"port": 5000, "protocol": "TCP"}, "b-grpc": {"port": 9000, "protocol": "GRPC"}}
    )
    tcp = svc("t", ports={"db": {"port": 5432}})
    assert route_port(mixed) == 9000
    assert route_port(tcp) == 5432
    assert route_port(svc("none")) is None


def test_unknown_dependencies_lists_what_to_query() -> None:
    assert unknown_dependencies([FRONTEND, CART]) == [
        ("prod", "api", ("frontend",)),
        ("prod", "db", ("frontend",)),
        ("prod", "ledger", ("frontend",)),
    ]


def test_plan_is_deterministic_whatever_the_input_order() -> None:
    one = plan_service_resources([FRONTEND, CART], REMOTE, context())
    two = plan_service_resources([CART, FRONTEND], dict(reversed(list(REMOTE.items()))), context())
    assert one == two
