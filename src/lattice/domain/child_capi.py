"""The Cluster API CRDs a cell sends a child before its pivot (pure).

``clusterctl move`` imports into a cluster that already serves the CAPI kinds. A cell whose
children use the contract-shaped local provider (``lattice operator --local-infra``) sends
each child the CRDs it runs itself, as ``clusterctl init`` installed them (labels included),
for the core, kubeadm bootstrap and kubeadm control-plane providers plus clusterctl's
inventory. Only what describes the kinds is kept: no status, no server-set metadata, and no
conversion webhook (it points at the cell's own managers; the child's managers register theirs).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

PROVIDER_LABEL = "cluster.x-k8s.io/provider"
INVENTORY_LABEL = "clusterctl.cluster.x-k8s.io/core"
CHILD_PROVIDERS = ("cluster-api", "bootstrap-kubeadm", "control-plane-kubeadm")
# Label selectors (each listed on its own) that find those CRDs in the cell.
SELECTORS = (f"{PROVIDER_LABEL} in ({','.join(CHILD_PROVIDERS)})", f"{INVENTORY_LABEL}=inventory")
_DROPPED_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)


def for_child(crd: Mapping[str, Any]) -> dict[str, Any]:
    meta = crd.get("metadata") or {}
    out_meta: dict[str, Any] = {"name": meta.get("name")}
    if meta.get("labels"):
        out_meta["labels"] = dict(meta["labels"])
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _DROPPED_ANNOTATIONS}
    if annotations:
        out_meta["annotations"] = annotations
    spec = {k: v for k, v in (crd.get("spec") or {}).items() if k != "conversion"}
    spec["conversion"] = {"strategy": "None"}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": out_meta,
        "spec": spec,
    }


def crd_list(crds: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """One ``List`` of the cleaned CRDs, sorted by name (a stable payload)."""
    items = sorted((for_child(c) for c in crds), key=lambda c: str(c["metadata"]["name"]))
    return {"apiVersion": "v1", "kind": "List", "items": items}
