"""The Cluster API CRDs collected by scripts/build-k8s.sh, and the labels clusterctl gives them.

The collected files are the upstream ``config/crd/bases`` CRDs, which carry no labels.
``clusterctl init`` installs them with:

* ``clusterctl.cluster.x-k8s.io: ""`` on every object (``clusterctl move`` discovers only
  the kinds whose CRD has this label key);
* ``cluster.x-k8s.io/provider: <provider>`` (for example ``infrastructure-aws``);
* the contract label ``cluster.x-k8s.io/<contract>: <api versions>`` (added by each
  provider's kustomization), which Cluster API reads to pick the API version of a
  referenced object. The contract of a release comes from its ``metadata.yaml``.

Only the inventory CRD (``providers.clusterctl.cluster.x-k8s.io``) is labelled differently:
``clusterctl.cluster.x-k8s.io/core: inventory``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from lattice.domain import yaml_text

__all__ = [
    "CLUSTERCTL_LABEL",
    "CONTRACT_LABEL_PREFIX",
    "LOCAL_CAPI_PROVIDERS",
    "PROVIDERS",
    "PROVIDER_LABEL",
    "ProviderCRDs",
    "contract_for_version",
    "crd_labels",
    "kustomization_contract_labels",
    "load_providers",
]

CLUSTERCTL_LABEL = "clusterctl.cluster.x-k8s.io"
CLUSTERCTL_CORE_LABEL = "clusterctl.cluster.x-k8s.io/core"
PROVIDER_LABEL = "cluster.x-k8s.io/provider"
CONTRACT_LABEL_PREFIX = "cluster.x-k8s.io/"
INVENTORY_CRD_FILE = "clusterctl.cluster.x-k8s.io_providers.yaml"

# What a cluster managed through the local provider needs of Cluster API (no cloud providers).
LOCAL_CAPI_PROVIDERS = ("cluster-api", "bootstrap-kubeadm", "control-plane-kubeadm", "clusterctl")
PROVIDERS: tuple[str, ...] = (
    "cluster-api",
    "bootstrap-kubeadm",
    "control-plane-kubeadm",
    "clusterctl",
    "infrastructure-docker",
    "infrastructure-aws",
    "infrastructure-gcp",
    "infrastructure-azure",
)
"""Every provider directory scripts/build-k8s.sh collects, in install order."""

_CONTRACT_KEY = re.compile(r"^cluster\.x-k8s\.io/v\d+(?:(?:alpha|beta)\d+)?$")


class CRDError(ValueError):
    """A collected provider directory that does not look as scripts/build-k8s.sh leaves it."""


def _yaml_load(text: str) -> Any:
    return yaml_text.load(text)


def contract_for_version(metadata_yaml: str, version: str) -> str:
    """The contract (e.g. ``v1beta2``) a provider release implements, from its metadata.yaml."""
    match = re.fullmatch(r"v?(\d+)\.(\d+)\.\d+(?:[-+].*)?", version)
    if match is None:
        raise CRDError(f"not a semantic version: {version!r}")
    major, minor = int(match.group(1)), int(match.group(2))
    metadata = _yaml_load(metadata_yaml) or {}
    for series in metadata.get("releaseSeries") or []:
        if int(series.get("major", -1)) == major and int(series.get("minor", -1)) == minor:
            contract = series.get("contract")
            if isinstance(contract, str) and contract:
                return contract
    raise CRDError(f"metadata.yaml has no release series {major}.{minor} with a contract")


def kustomization_contract_labels(kustomization_yaml: str) -> dict[str, str]:
    """The contract labels a provider's ``config/crd/kustomization.yaml`` adds to its CRDs.

    Both forms are understood: ``commonLabels: {k: v}`` and ``labels: [{pairs: {k: v}}]``.
    """
    data = _yaml_load(kustomization_yaml) or {}
    pairs: dict[str, str] = {}
    common = data.get("commonLabels") or {}
    pairs.update({str(k): str(v) for k, v in common.items()})
    for entry in data.get("labels") or []:
        pairs.update({str(k): str(v) for k, v in (entry.get("pairs") or {}).items()})
    return {k: v for k, v in pairs.items() if _CONTRACT_KEY.match(k)}


@attrs.frozen
class ProviderCRDs:
    """One provider's collected CRD files and what clusterctl would label them with."""

    name: str
    version: str
    contract: str
    files: tuple[Path, ...]
    contract_labels: Mapping[str, str]

    @property
    def kind(self) -> str:
        """``core``, ``bootstrap``, ``control-plane``, ``infrastructure`` or ``clusterctl``."""
        if self.name == "cluster-api":
            return "core"
        if self.name == "clusterctl":
            return "clusterctl"
        for prefix in ("bootstrap", "control-plane", "infrastructure"):
            if self.name.startswith(prefix + "-"):
                return prefix
        raise CRDError(f"unknown provider kind for {self.name!r}")


def _load_provider(directory: Path) -> ProviderCRDs:
    name = directory.name
    try:
        version = (directory / "VERSION").read_text().strip()
        metadata = (directory / "metadata.yaml").read_text()
    except FileNotFoundError as exc:
        raise CRDError(f"{directory} is incomplete: {exc.filename} is missing") from exc
    kustomization = directory / "kustomization.yaml"
    labels = kustomization_contract_labels(kustomization.read_text()) if kustomization.is_file() else {}
    files = sorted((directory / "bases").glob("*.yaml"))
    if name == "clusterctl":
        # Only the provider inventory is a cluster object; the Metadata type is a file format.
        files = [f for f in files if f.name == INVENTORY_CRD_FILE]
    if not files:
        raise CRDError(f"{directory} holds no CRD files")
    return ProviderCRDs(
        name=name,
        version=version,
        contract=contract_for_version(metadata, version),
        files=tuple(files),
        contract_labels=labels,
    )


def load_providers(crd_dir: Path, names: Iterable[str] | None = None) -> list[ProviderCRDs]:
    """The collected providers (default: all of :data:`PROVIDERS`), in install order."""
    wanted = list(PROVIDERS if names is None else names)
    unknown = [n for n in wanted if n not in PROVIDERS]
    if unknown:
        raise CRDError(f"unknown providers {unknown}; known: {', '.join(PROVIDERS)}")
    return [_load_provider(crd_dir / name) for name in PROVIDERS if name in wanted]


def _served_versions(crd: Mapping[str, Any]) -> list[str]:
    versions: Sequence[Mapping[str, Any]] = crd.get("spec", {}).get("versions", [])
    return [str(v["name"]) for v in versions if v.get("served", True)]


def crd_labels(provider: ProviderCRDs, crd: Mapping[str, Any]) -> dict[str, str]:
    """The labels ``clusterctl init`` leaves on ``crd`` (a CRD object) of ``provider``.

    Contract labels come from the provider's kustomization. A bootstrap, control-plane or
    infrastructure provider whose kustomization declares none for its contract (CAPZ adds
    them through per-CRD patches) gets ``cluster.x-k8s.io/<contract>`` set to the CRD's
    served API versions joined by ``_``, which is what those patches say.
    """
    if provider.kind == "clusterctl":
        return {CLUSTERCTL_LABEL: "", CLUSTERCTL_CORE_LABEL: "inventory"}
    labels = {CLUSTERCTL_LABEL: "", PROVIDER_LABEL: provider.name}
    labels.update(provider.contract_labels)
    contract_key = CONTRACT_LABEL_PREFIX + provider.contract
    if provider.kind != "core" and contract_key not in labels:
        served = _served_versions(crd)
        if not served:
            name = crd.get("metadata", {}).get("name", "?")
            raise CRDError(f"CRD {name} serves no version")
        labels[contract_key] = "_".join(served)
    return labels
