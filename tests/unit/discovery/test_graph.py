from __future__ import annotations

from lattice.domain.discovery.graph import Edge, NameConflict, NodeKind, ServiceGraph
from tests.unit.discovery.factories import HTTP, svc


def test_missing_dependencies_are_unknown_nodes() -> None:
    graph = ServiceGraph.build(
        [
            svc("frontend", outbound=("api", "cart")),
            svc("cart", ports=HTTP, inbound=("frontend",)),
            svc("checkout", outbound=("api",)),
        ]
    )
    api = graph.get("prod", "api")
    assert api is not None
    assert api.kind is NodeKind.UNKNOWN
    assert api.service is None
    assert api.callers == ("checkout", "frontend")
    assert [n.name for n in graph.unknown()] == ["api"]
    assert [n.name for n in graph.local()] == ["cart", "checkout", "frontend"]
    cart = graph.get("prod", "cart")
    assert cart is not None
    assert cart.kind is NodeKind.LOCAL
    assert cart.key == ("prod", "cart")
    assert [n.name for n in graph.dependencies_of("prod", "frontend")] == ["api", "cart"]
    assert graph.get("prod", "nothing") is None


def test_local_edges_need_bilateral_agreement() -> None:
    graph = ServiceGraph.build(
        [
            svc("a", outbound=("b", "c", "d")),
            svc("b", inbound=("a",)),
            svc("c", inbound=("someone-else",)),
            svc("d", inbound=("*",)),
        ]
    )
    assert graph.edges == (
        Edge("prod", "a", "b", True),
        Edge("prod", "a", "c", False),
        Edge("prod", "a", "d", True),
    )
    assert graph.is_allowed("prod", "a", "b")
    assert not graph.is_allowed("prod", "a", "c")
    assert not graph.is_allowed("prod", "b", "a")  # allowing is not calling


def test_environments_are_separate() -> None:
    graph = ServiceGraph.build(
        [svc("web", environment="staging", outbound=("api",)), svc("api", inbound=("*",))]
    )
    staging_api = graph.get("staging", "api")
    assert staging_api is not None
    assert staging_api.kind is NodeKind.UNKNOWN
    assert graph.edges[0].allowed is None


def test_same_name_in_two_namespaces_is_a_conflict() -> None:
    graph = ServiceGraph.build([svc("api", namespace="team-b"), svc("api", namespace="team-a")])
    node = graph.get("prod", "api")
    assert node is not None
    assert node.service is not None
    assert node.service.namespace == "team-a"
    assert graph.conflicts == (NameConflict("prod", "api", ("team-a", "team-b")),)
