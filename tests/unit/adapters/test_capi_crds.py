"""Unit tests for the clusterctl labels of the collected Cluster API CRDs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lattice.adapters import capi_crds
from lattice.adapters.capi_crds import CRDError

METADATA = """\
apiVersion: clusterctl.cluster.x-k8s.io/v1alpha3
kind: Metadata
releaseSeries:
  - major: 1
    minor: 13
    contract: v1beta2
  - major: 1
    minor: 14
    contract: v1beta2
  - major: 2
    minor: 11
    contract: v1beta1
"""


def _crd(name: str, *versions: tuple[str, bool]) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"versions": [{"name": v, "served": served} for v, served in versions]},
    }


def _provider(root: Path, name: str, version: str, kustomization: str | None, files: list[str]) -> Path:
    directory = root / name
    (directory / "bases").mkdir(parents=True)
    (directory / "VERSION").write_text(version + "\n")
    (directory / "metadata.yaml").write_text(METADATA)
    if kustomization is not None:
        (directory / "kustomization.yaml").write_text(kustomization)
    for f in files:
        (directory / "bases" / f).write_text("kind: CustomResourceDefinition\n")
    return directory


@pytest.mark.parametrize(
    ("version", "contract"), [("v1.14.2", "v1beta2"), ("1.13.0", "v1beta2"), ("v2.11.1", "v1beta1")]
)
def test_contract_for_version(version: str, contract: str) -> None:
    assert capi_crds.contract_for_version(METADATA, version) == contract


def test_contract_for_unknown_versions() -> None:
    with pytest.raises(CRDError, match=r"1\.99"):
        capi_crds.contract_for_version(METADATA, "v1.99.0")
    with pytest.raises(CRDError, match="semantic version"):
        capi_crds.contract_for_version(METADATA, "latest")
    with pytest.raises(CRDError, match="release series"):
        capi_crds.contract_for_version("", "v1.0.0")


def test_kustomization_contract_labels_both_forms() -> None:
    common = "commonLabels:\n  cluster.x-k8s.io/v1beta1: v1beta1_v1beta2\n  other: x\n"
    assert capi_crds.kustomization_contract_labels(common) == {"cluster.x-k8s.io/v1beta1": "v1beta1_v1beta2"}
    labels = (
        "labels:\n- pairs:\n    cluster.x-k8s.io/v1beta1: v1beta1\n"
        "    cluster.x-k8s.io/v1beta2: v1beta2\n    cluster.x-k8s.io/provider: no\n"
        "- includeSelectors: true\n"
    )
    assert capi_crds.kustomization_contract_labels(labels) == {
        "cluster.x-k8s.io/v1beta1": "v1beta1",
        "cluster.x-k8s.io/v1beta2": "v1beta2",
    }
    assert capi_crds.kustomization_contract_labels("resources: []\n") == {}
    assert capi_crds.kustomization_contract_labels("") == {}


def test_load_and_label(tmp_path: Path) -> None:
    _provider(tmp_path, "cluster-api", "v1.14.2", None, ["cluster.x-k8s.io_clusters.yaml"])
    _provider(
        tmp_path,
        "bootstrap-kubeadm",
        "v1.14.2",
        "labels:\n- pairs:\n    cluster.x-k8s.io/v1beta2: v1beta2\n",
        ["bootstrap.cluster.x-k8s.io_kubeadmconfigs.yaml"],
    )
    _provider(
        tmp_path,
        "clusterctl",
        "v1.14.2",
        None,
        ["clusterctl.cluster.x-k8s.io_metadata.yaml", "clusterctl.cluster.x-k8s.io_providers.yaml"],
    )
    _provider(
        tmp_path,
        "infrastructure-azure",
        "v2.11.1",
        "resources: []\n",
        ["infrastructure.cluster.x-k8s.io_azureclusters.yaml"],
    )
    loaded = capi_crds.load_providers(
        tmp_path, ["infrastructure-azure", "cluster-api", "clusterctl", "bootstrap-kubeadm"]
    )
    assert [p.name for p in loaded] == [
        "cluster-api",
        "bootstrap-kubeadm",
        "clusterctl",
        "infrastructure-azure",
    ]
    core, kubeadm, clusterctl, azure = loaded
    assert [p.kind for p in loaded] == ["core", "bootstrap", "clusterctl", "infrastructure"]
    assert [f.name for f in clusterctl.files] == ["clusterctl.cluster.x-k8s.io_providers.yaml"]

    cluster = _crd("clusters.cluster.x-k8s.io", ("v1beta1", True), ("v1beta2", True))
    assert capi_crds.crd_labels(core, cluster) == {
        "clusterctl.cluster.x-k8s.io": "",
        "cluster.x-k8s.io/provider": "cluster-api",
    }
    assert capi_crds.crd_labels(kubeadm, _crd("k", ("v1beta2", True))) == {
        "clusterctl.cluster.x-k8s.io": "",
        "cluster.x-k8s.io/provider": "bootstrap-kubeadm",
        "cluster.x-k8s.io/v1beta2": "v1beta2",
    }
    assert capi_crds.crd_labels(clusterctl, _crd("p", ("v1alpha3", True))) == {
        "clusterctl.cluster.x-k8s.io": "",
        "clusterctl.cluster.x-k8s.io/core": "inventory",
    }
    # No contract label in the kustomization: the served versions, as CAPZ's patches say.
    assert azure.contract == "v1beta1"
    azure_crd = _crd("a", ("v1alpha1", False), ("v1beta1", True))
    assert capi_crds.crd_labels(azure, azure_crd)["cluster.x-k8s.io/v1beta1"] == "v1beta1"
    with pytest.raises(CRDError, match="serves no version"):
        capi_crds.crd_labels(azure, _crd("none", ("v1", False)))


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(CRDError, match="unknown providers"):
        capi_crds.load_providers(tmp_path, ["infrastructure-nope"])
    with pytest.raises(CRDError, match="VERSION is missing"):
        capi_crds.load_providers(tmp_path, ["cluster-api"])
    _provider(tmp_path, "cluster-api", "v1.14.2", None, [])
    with pytest.raises(CRDError, match="no CRD files"):
        capi_crds.load_providers(tmp_path, ["cluster-api"])


def test_unknown_provider_kind() -> None:
    odd = capi_crds.ProviderCRDs(
        name="addon-helm", version="v1", contract="v1beta2", files=(), contract_labels={}
    )
    with pytest.raises(CRDError, match="unknown provider kind"):
        _ = odd.kind
