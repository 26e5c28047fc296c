from __future__ import annotations

from typing import Any

from syrupy.assertion import SnapshotAssertion

from lattice.app import yamlio
from lattice.domain import crds


def _nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        out += _nodes(sub, f"{path}.{key}")
    if "items" in schema:
        out += _nodes(schema["items"], f"{path}[]")
    return out


def test_crd_golden(yaml_snapshot: SnapshotAssertion) -> None:
    assert yamlio.dump_all(crds.all_crds()) == yaml_snapshot


def test_schema_is_structural_and_described() -> None:
    crd = crds.lattice_cluster_crd()
    version = crd["spec"]["versions"][0]
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root["properties"]["spec"], "spec"):
        assert "type" in node, path
        if path != "spec" and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"
    assert crd["spec"]["scope"] == "Cluster"
    assert crd["spec"]["names"]["shortNames"] == ["lc"]
    assert version["subresources"] == {"status": {}}
    columns = [c["name"] for c in version["additionalPrinterColumns"]]
    assert columns[:6] == ["Phase", "Provider", "Version", "Control-Plane", "Workers", "Cell"]


def test_cel_rules_have_messages() -> None:
    crd = crds.lattice_cluster_crd()
    root = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [r for _, node in _nodes(root) for r in node.get("x-kubernetes-validations", [])]
    messages = {r.get("message") for r in rules}
    assert "provider type is immutable" in messages
    assert all(r["rule"] and (r.get("message") or r.get("messageExpression")) for r in rules)


def test_enums_bounds_and_defaults_come_from_the_models() -> None:
    crd = crds.lattice_cluster_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    provider = spec["properties"]["provider"]
    assert provider["properties"]["type"]["enum"] == ["docker", "local", "aws", "gcp", "azure"]
    nodes = spec["properties"]["nodes"]["properties"]
    assert nodes["controlPlane"]["minimum"] == 1
    assert spec["properties"]["parentConfig"]["properties"]["grpcPort"]["default"] == 50051
    assert provider["required"] == ["type", "kubernetes"]


def test_local_provider_crds_are_labelled_like_clusterctl_init_would() -> None:
    local = crds.local_provider_crds()
    assert [c["spec"]["names"]["kind"] for c in local] == [
        "LocalCluster",
        "LocalMachineTemplate",
        "LocalMachine",
    ]
    for crd in local:
        labels = crd["metadata"]["labels"]
        assert "clusterctl.cluster.x-k8s.io" in labels
        assert labels["cluster.x-k8s.io/v1beta2"] == "v1alpha1"
        assert crd["spec"]["group"] == "infrastructure.lattice.dev"
    assert crds.all_crds()[0]["metadata"]["name"] == "latticeclusters.lattice.dev"


def test_required_fields_have_no_default() -> None:
    crd = crds.lattice_cluster_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    for path, node in _nodes(spec, "spec"):
        for name in node.get("required", []):
            assert "default" not in node["properties"][name], f"{path}.{name}"
