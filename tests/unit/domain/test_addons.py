from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st
from syrupy.assertion import SnapshotAssertion

from lattice.app import yamlio
from lattice.domain import addons, install_plan, models, serde

EXAMPLES = Path(__file__).parents[3] / "examples" / "clusters"


def _cluster(file: str) -> models.LatticeCluster:
    doc = yamlio.load_documents((EXAMPLES / file).read_text())[0]
    cluster = serde.cluster_from_dict(yamlio.to_plain(doc.data))  # type: ignore[union-attr]
    assert isinstance(cluster, models.LatticeCluster), cluster
    return cluster


def _crd(group: str, kind: str, plural: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}"},
        "spec": {"group": group, "names": {"kind": kind, "plural": plural}},
    }


def _obj(api_version: str, kind: str, name: str, namespace: str | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {"apiVersion": api_version, "kind": kind, "metadata": meta}


@pytest.mark.parametrize("file", ["mgmt-docker.yaml", "workload-aws.yaml"])
def test_golden_addons_for_a_cell_and_a_leaf(file: str, yaml_snapshot: SnapshotAssertion) -> None:
    """The Lattice-made part of the payload: Cilium's values, the pool, the L2 policy, and the
    cell's Service (the mgmt example is a cell, the AWS one a leaf)."""
    cluster = _cluster(file)
    name = cluster.metadata.name
    spec = cluster.spec
    documents: list[Any] = [
        {"ciliumValues": addons.cilium_values(name, spec.networking, ("10.0.0.10", 6443))},
        *addons.network_objects(name, spec.networking),
    ]
    service = addons.cell_service(name, spec)
    if service is not None:
        documents.append(service)
    assert yamlio.dump_all(documents) == yaml_snapshot


def test_a_leaf_has_no_cell_service_and_a_cell_has_one() -> None:
    assert addons.cell_service("w", _cluster("workload-aws.yaml").spec) is None
    service = addons.cell_service("m", _cluster("mgmt-docker.yaml").spec)
    assert service is not None
    assert service["spec"]["type"] == "LoadBalancer"
    assert {p["name"] for p in service["spec"]["ports"]} == {
        "https-register",
        "grpc-agent",
        "https-api-proxy",
    }


def test_a_cell_without_the_api_proxy_exposes_no_proxy_port() -> None:
    spec = _cluster("mgmt-docker.yaml").spec
    assert spec.parent_config is not None
    off = attrs.evolve(spec, parent_config=attrs.evolve(spec.parent_config, proxy_port=0))
    service = addons.cell_service("m", off)
    assert service is not None
    assert {p["name"] for p in service["spec"]["ports"]} == {"https-register", "grpc-agent"}


def _cell_spec(host: str, cidr: str | None, kind: models.ServiceType | None) -> models.LatticeClusterSpec:
    spec = _cluster("mgmt-docker.yaml").spec
    assert spec.parent_config is not None
    parent = attrs.evolve(
        spec.parent_config, host=host, service=None if kind is None else models.ServiceSpec(type=kind)
    )
    networking = None if cidr is None else models.NetworkingSpec(default=models.AddressPool(cidr=cidr))
    return attrs.evolve(spec, parent_config=parent, networking=networking)


def test_a_load_balancer_asks_lb_ipam_for_the_host_when_the_pool_holds_it() -> None:
    asked = addons.cell_service("m", _cell_spec("172.18.255.10", "172.18.255.0/28", None))
    assert asked is not None
    assert asked["metadata"]["annotations"] == {addons.LBIPAM_IPS_ANNOTATION: "172.18.255.10"}
    for host, cidr in [
        ("cell.example.com", "172.18.255.0/28"),
        ("10.0.0.1", "172.18.255.0/28"),
        ("172.18.255.10", None),
    ]:
        plain = addons.cell_service("m", _cell_spec(host, cidr, None))
        assert plain is not None
        assert "annotations" not in plain["metadata"], (host, cidr)


@pytest.mark.parametrize("kind", [models.ServiceType.NODE_PORT, models.ServiceType.CLUSTER_IP])
def test_the_service_type_is_parent_configs(kind: models.ServiceType) -> None:
    service = addons.cell_service("m", _cell_spec("172.18.255.10", "172.18.255.0/28", kind))
    assert service is not None
    assert service["spec"]["type"] == str(kind)
    assert "annotations" not in service["metadata"]


def test_no_pool_no_network_objects_and_default_pod_cidr() -> None:
    assert addons.network_objects("c", None) == ()
    assert addons.network_objects("c", models.NetworkingSpec()) == ()
    values = addons.cilium_values("c", None, ("h", 1))
    assert values["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == [models.DEFAULT_POD_CIDR]
    pods = addons.cilium_values("c", models.NetworkingSpec(pods=("10.1.0.0/16",)), ("h", 1))
    assert pods["ipam"]["operator"]["clusterPoolIPv4PodCIDRList"] == ["10.1.0.0/16"]


def test_service_address() -> None:
    lb = {"spec": {"type": "LoadBalancer", "clusterIP": "10.0.0.5"}}
    assert addons.service_address(lb) is None
    lb["status"] = {"loadBalancer": {"ingress": [{"hostname": "lb.example"}]}}
    assert addons.service_address(lb) == "lb.example"
    lb["status"] = {"loadBalancer": {"ingress": [{}, {"ip": "172.18.255.10"}]}}
    assert addons.service_address(lb) == "172.18.255.10"
    assert addons.service_address({"spec": {"type": "ClusterIP", "clusterIP": "10.0.0.5"}}) == "10.0.0.5"
    assert addons.service_address({"spec": {"type": "ClusterIP", "clusterIP": "None"}}) is None
    assert addons.service_address({"spec": {}}) is None


def test_apply_steps_puts_crds_first_and_waits_before_their_objects() -> None:
    pool = addons.lb_ip_pool("c", "172.18.255.0/28")
    payload = [
        pool,
        _obj("apps/v1", "Deployment", "d", "ns"),
        _crd("cilium.io", "CiliumLoadBalancerIPPool", "ciliumloadbalancerippools"),
        _obj("v1", "Namespace", "ns"),
        _obj("unknown.example/v1", "Thing", "t"),  # no CRD in the payload: the cluster has it
    ]
    steps = addons.apply_steps(payload)
    described = [addons.describe(s.obj) if isinstance(s, addons.Apply) else f"await {s.crds}" for s in steps]
    assert described == [
        "Namespace ns",
        "CustomResourceDefinition ciliumloadbalancerippools.cilium.io",
        "Deployment ns/d",
        "Thing t",
        "await ('ciliumloadbalancerippools.cilium.io',)",
        "CiliumLoadBalancerIPPool default",
    ]


def test_apply_steps_without_custom_resources_never_waits() -> None:
    steps = addons.apply_steps([_crd("a.example", "A", "as"), _obj("v1", "ConfigMap", "c", "n")])
    assert all(isinstance(s, addons.Apply) for s in steps)


_KINDS = st.sampled_from(
    [
        ("v1", "Namespace"),
        ("v1", "ConfigMap"),
        ("apps/v1", "Deployment"),
        ("a.example/v1", "A"),
        ("b.example/v1", "B"),
        ("apiextensions.k8s.io/v1", "CustomResourceDefinition"),
    ]
)


@given(st.lists(st.tuples(_KINDS, st.integers(0, 3)), max_size=25))
def test_apply_steps_is_an_ordering_of_the_payload(items: list[tuple[tuple[str, str], int]]) -> None:
    payload: list[dict[str, Any]] = []
    for (api_version, kind), n in items:
        if kind == "CustomResourceDefinition":
            group, k = ("a.example", "A") if n % 2 else ("b.example", "B")
            payload.append(_crd(group, k, f"{k.lower()}s{n}"))
        else:
            payload.append(_obj(api_version, kind, f"o{n}"))
    steps = addons.apply_steps(payload)
    applied = [s.obj for s in steps if isinstance(s, addons.Apply)]
    assert sorted(map(repr, applied)) == sorted(map(repr, payload))
    waits = [i for i, s in enumerate(steps) if isinstance(s, addons.AwaitEstablished)]
    assert len(waits) <= 1
    kinds = [str(o["kind"]) for o in applied]
    crd_positions = [i for i, k in enumerate(kinds) if k == "CustomResourceDefinition"]
    ns_positions = [i for i, k in enumerate(kinds) if k == "Namespace"]
    if crd_positions and ns_positions:
        assert max(ns_positions) < min(crd_positions)
    if waits:
        before = [s.obj for s in steps[: waits[0]] if isinstance(s, addons.Apply)]
        names = {str(o["metadata"]["name"]) for o in before if o["kind"] == "CustomResourceDefinition"}
        assert set(steps[waits[0]].crds) <= names  # type: ignore[union-attr]
        after = [s.obj for s in steps[waits[0] + 1 :] if isinstance(s, addons.Apply)]
        assert after
        assert all(o["kind"] in {"A", "B"} for o in after)


def test_payload_errors_name_position_and_field() -> None:
    assert addons.payload_errors([_obj("v1", "ConfigMap", "c", "n")]) == []
    errors = addons.payload_errors([{"kind": "ConfigMap", "metadata": {}}, {"apiVersion": "v1", "kind": ""}])
    assert errors == [
        "object 0: apiVersion: a non-empty string is required",
        "object 0 (ConfigMap): metadata.name: required",
        "object 1: kind: a non-empty string is required",
        "object 1 (): metadata.name: required",
    ]


def test_established() -> None:
    assert not addons.established({})
    assert not addons.established({"status": {"conditions": [{"type": "Established", "status": "False"}]}})
    assert addons.established(
        {
            "status": {
                "conditions": [
                    {"type": "NamesAccepted", "status": "True"},
                    {"type": "Established", "status": "True"},
                ]
            }
        }
    )


def test_control_plane_endpoint_comes_from_the_capi_cluster() -> None:
    cluster = {
        "apiVersion": "cluster.x-k8s.io/v1beta2",
        "kind": "Cluster",
        "spec": {"controlPlaneEndpoint": {"host": "127.0.0.1", "port": 40123}},
    }
    other = {
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta2",
        "kind": "Cluster",
        "spec": {"controlPlaneEndpoint": {"host": "x", "port": 1}},
    }
    assert addons.control_plane_endpoint([other, cluster]) == ("127.0.0.1", 40123)
    assert addons.control_plane_endpoint([other]) is None
    assert (
        addons.control_plane_endpoint(
            [{**cluster, "spec": {"controlPlaneEndpoint": {"host": "", "port": 0}}}]
        )
        is None
    )
    assert addons.control_plane_endpoint([]) is None


def test_a_cell_behind_its_load_balancer_binds_the_pods_address() -> None:
    spec: dict[str, Any] = {
        "parentConfig": {"host": "127.77.1.1", "grpcPort": 1, "bootstrapPort": 2},
        "networking": {"default": {"cidr": "127.77.1.0/30"}},
    }
    assert addons.load_balancer_carries_host(spec)
    assert install_plan.cell_operator_options(spec, "/state").bind_host == "$(POD_IP)"
    spec["parentConfig"]["service"] = {"type": "NodePort"}
    assert not addons.load_balancer_carries_host(spec)
    assert install_plan.cell_operator_options(spec, "/state").bind_host == "127.77.1.1"
    assert not addons.load_balancer_carries_host({"parentConfig": {"host": "127.77.1.1"}})
    named = install_plan.cell_operator_options({"parentConfig": {"host": "cell.example.com"}}, "/state")
    assert named.bind_host == "0.0.0.0"
