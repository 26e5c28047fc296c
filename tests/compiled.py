"""What ``lattice compile`` produces for a local cluster (the integration tests and benchmarks
that apply compiled objects to real control planes)."""

from __future__ import annotations

from typing import Any

from lattice.domain import capi, models, serde, validation


def compiled_local(name: str, *, control_plane: int = 1, workers: int = 2) -> tuple[dict[str, Any], ...]:
    """The compiled CAPI objects of a local-provider LatticeCluster ``name`` whose cell is
    reached at 127.0.0.1."""
    raw = {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": name},
        "spec": {
            "cellRef": "mgmt",
            "provider": {"type": "local", "kubernetes": {"version": "1.36.3"}},
            "nodes": {"controlPlane": control_plane, "workers": workers},
        },
    }
    cluster = serde.cluster_from_dict(raw)
    assert isinstance(cluster, models.LatticeCluster)
    valid = validation.validate_cluster(cluster)
    assert isinstance(valid, validation.ValidCluster)
    return capi.compile_cluster(valid, capi.CompileContext(parent=capi.ParentEndpoint(host="127.0.0.1")))


def with_post_kubeadm(objects: tuple[dict[str, Any], ...], commands: list[str]) -> list[dict[str, Any]]:
    """``objects`` with the KubeadmControlPlane's ``postKubeadmCommands`` replaced (where no cell
    is there to register with)."""
    out: list[dict[str, Any]] = []
    for obj in objects:
        if obj["kind"] == "KubeadmControlPlane":
            spec = {**obj["spec"]["kubeadmConfigSpec"], "postKubeadmCommands": commands}
            out.append({**obj, "spec": {**obj["spec"], "kubeadmConfigSpec": spec}})
        else:
            out.append(obj)
    return out
