from __future__ import annotations

import base64
import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from syrupy.assertion import SnapshotAssertion

from lattice.app import yamlio
from lattice.domain import capi, models, serde, validation
from tests.unit.strategies import cluster_docs

EXAMPLES = Path(__file__).parents[3] / "examples" / "clusters"


def _valid(doc: dict[str, Any]) -> validation.ValidCluster:
    cluster = serde.cluster_from_dict(doc)
    assert isinstance(cluster, models.LatticeCluster), cluster
    valid = validation.validate_cluster(cluster)
    assert isinstance(valid, validation.ValidCluster), valid
    return valid


def _examples() -> dict[str, validation.ValidCluster]:
    out = {}
    for path in sorted(EXAMPLES.glob("*.yaml")):
        for doc in yamlio.load_documents(path.read_text()):  # type: ignore[union-attr]
            valid = _valid(yamlio.to_plain(doc.data))
            out[valid.name] = valid
    return out


CONTEXT = capi.CompileContext(parent=capi.ParentEndpoint(host="172.18.255.1"))


@pytest.mark.parametrize("name", sorted(_examples()))
def test_golden_manifests_for_every_example(name: str, yaml_snapshot: SnapshotAssertion) -> None:
    valid = _examples()[name]
    context = capi.CompileContext(parent=None) if valid.spec.cell_ref is None else CONTEXT
    objects = [*capi.compile_cluster(valid, context), *capi.compile_workload_manifests(valid)]
    assert yamlio.dump_all(objects) == yaml_snapshot


def _walk(value: Any, path: str = "") -> list[str]:
    """Paths of every empty object or list (v1beta2 schemas reject them)."""
    if isinstance(value, dict):
        found = [path] if not value else []
        for key, item in value.items():
            found += _walk(item, f"{path}.{key}")
        return found
    if isinstance(value, list):
        found = [path] if not value else []
        for index, item in enumerate(value):
            found += _walk(item, f"{path}[{index}]")
        return found
    return []


@given(cluster_docs())
def test_valid_specs_always_compile_deterministically(doc: dict[str, Any]) -> None:
    valid = _valid(doc)
    first = capi.compile_cluster(valid, CONTEXT)
    second = capi.compile_cluster(_valid(copy.deepcopy(doc)), CONTEXT)
    assert first == second
    name = valid.name
    namespace = models.capi_namespace(name)
    assert first[0] == {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": capi._labels(name)},
    }
    kinds = [obj["kind"] for obj in first]
    prefix = capi.INFRA_KIND_PREFIX[valid.spec.provider.type]
    assert kinds == [
        "Namespace",
        "Cluster",
        f"{prefix}Cluster",
        f"{prefix}MachineTemplate",
        "KubeadmControlPlane",
        f"{prefix}MachineTemplate",
        "KubeadmConfigTemplate",
        "MachineDeployment",
    ]
    for obj in first[1:]:
        assert obj["metadata"]["namespace"] == namespace
        assert obj["metadata"]["labels"][capi.LABEL_CLUSTER_NAME] == name
        assert obj["metadata"]["labels"][capi.LABEL_LATTICE_CLUSTER] == name
        assert "ownerReferences" not in obj["metadata"]
    assert _walk(list(first)) == []
    kcp = first[4]
    assert kcp["spec"]["replicas"] == valid.spec.nodes.control_plane
    assert first[7]["spec"]["replicas"] == valid.spec.nodes.workers


def test_registration_only_for_children_with_a_cell() -> None:
    valid = _examples()["prod-us-west"]
    with_parent = capi.compile_cluster(valid, CONTEXT)[4]["spec"]["kubeadmConfigSpec"]
    root = capi.compile_cluster(valid, capi.CompileContext(parent=None))[4]["spec"]["kubeadmConfigSpec"]
    assert "postKubeadmCommands" not in root
    assert "files" not in root
    script = with_parent["postKubeadmCommands"][0]
    assert "https://172.18.255.1:8443/api/clusters/register" in script
    assert "--cacert" in script
    assert "prime256v1" in script
    assert {f["contentFrom"]["secret"]["name"] for f in with_parent["files"]} == {
        "prod-us-west-lattice-registration"
    }
    # The token is never inlined.
    assert all("content" not in f for f in with_parent["files"])


def test_the_registration_secret_holds_what_the_kubeadm_files_read() -> None:
    """One contract: the Secret the operator creates has the name, namespace and keys the
    compiled kubeadm ``files`` reference, and the cluster's labels."""
    valid = _examples()["prod-us-west"]
    compiled = capi.compile_cluster(valid, CONTEXT)
    files = compiled[4]["spec"]["kubeadmConfigSpec"]["files"]
    secret = capi.registration_secret("prod-us-west", "abc.def", "-----BEGIN CERTIFICATE-----\n")
    assert secret["metadata"]["namespace"] == compiled[4]["metadata"]["namespace"]
    assert {(f["contentFrom"]["secret"]["name"], f["contentFrom"]["secret"]["key"]) for f in files} == {
        (secret["metadata"]["name"], key) for key in secret["data"]
    }
    assert secret["metadata"]["labels"][capi.LABEL_CLUSTER_NAME] == "prod-us-west"
    assert base64.b64decode(secret["data"][capi.REGISTRATION_TOKEN_KEY]) == b"abc.def"
    assert base64.b64decode(secret["data"][capi.REGISTRATION_CA_KEY]).startswith(b"-----BEGIN")


def test_ipv6_cell_host_is_bracketed() -> None:
    endpoint = capi.ParentEndpoint(host="fd00::1", bootstrap_port=9443)
    assert endpoint.register_url == "https://[fd00::1]:9443/api/clusters/register"
    assert capi.ParentEndpoint.of(models.ParentConfig(host="h", bootstrap_port=1)).bootstrap_port == 1


def test_workload_manifests_only_with_a_pool() -> None:
    assert capi.compile_workload_manifests(_examples()["prod-eu-west"]) == ()
    pool, l2 = capi.compile_workload_manifests(_examples()["mgmt"])
    assert (pool["kind"], l2["kind"]) == ("CiliumLoadBalancerIPPool", "CiliumL2AnnouncementPolicy")
    assert pool["spec"]["blocks"] == [{"cidr": "172.18.255.1/32"}]
