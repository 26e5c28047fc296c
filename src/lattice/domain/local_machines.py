"""Pure decisions of the local infrastructure provider (see docs/local-provider.md).

The provider stands in for what cannot run here: cloud machines, kubeadm, and the parts of
Cluster API's controllers that would otherwise react to them. These functions compute the
objects and patches it writes; ``lattice.app.local_provider`` does the I/O.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from lattice.domain import capi, local_provider, pivot
from lattice.domain.conditions import rfc3339

FIELD_MANAGER = "lattice-local-provider"
BOOTSTRAPPED = f"{local_provider.GROUP}/post-kubeadm-commands"
KUBECONFIG_SECRET_TYPE = "cluster.x-k8s.io/secret"  # noqa: S105 - a Secret type

Obj = dict[str, Any]


def is_local(cluster: Mapping[str, Any]) -> bool:
    ref = cluster.get("spec", {}).get("infrastructureRef", {})
    return bool(ref.get("apiGroup") == local_provider.GROUP and ref.get("kind") == "LocalCluster")


def is_paused(cluster: Mapping[str, Any]) -> bool:
    meta = cluster.get("metadata", {})
    return bool(cluster.get("spec", {}).get("paused")) or "cluster.x-k8s.io/paused" in (
        meta.get("annotations") or {}
    )


def moving(obj: Mapping[str, Any]) -> bool:
    """Deleted by a move: the infrastructure must be left running (clusterctl's contract)."""
    return pivot.DELETE_FOR_MOVE in (obj.get("metadata", {}).get("annotations") or {})


def owner_ref(owner: Mapping[str, Any], *, controller: bool = True) -> Obj:
    meta = owner["metadata"]
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": controller,
        "blockOwnerDeletion": True,
    }


def owner_patch(obj: Mapping[str, Any], owner: Mapping[str, Any]) -> Obj | None:
    """The merge patch that makes ``owner`` the controller owner of ``obj`` (None if it is)."""
    current = list(obj.get("metadata", {}).get("ownerReferences") or [])
    if any(ref.get("uid") == owner["metadata"]["uid"] for ref in current):
        return None
    others = [ref for ref in current if not ref.get("controller")]
    return {"metadata": {"ownerReferences": [*others, owner_ref(owner)]}}


def owned_by_cluster(objects: Sequence[Obj]) -> list[Obj]:
    """What CAPI's controllers would make the Cluster own: everything Lattice compiled for it."""
    return [o for o in objects if o["kind"] not in ("Cluster", "Namespace", "Machine", "LocalMachine")]


def kubeconfig_secret(cluster: Mapping[str, Any], kubeconfig: bytes) -> Obj:
    meta = cluster["metadata"]
    name = meta["name"]
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": f"{name}-kubeconfig",
            "namespace": meta["namespace"],
            "labels": {capi.LABEL_CLUSTER_NAME: name},
            "ownerReferences": [owner_ref(cluster, controller=True)],
        },
        "type": KUBECONFIG_SECRET_TYPE,
        "data": {"value": base64.b64encode(kubeconfig).decode()},
    }


def provisioned_elsewhere(local_cluster: Mapping[str, Any], *, booted_here: bool) -> bool:
    """A LocalCluster that is provisioned although this provider never booted it."""
    status = local_cluster.get("status") or {}
    return bool((status.get("initialization") or {}).get("provisioned")) and not booted_here


def local_cluster_status() -> Obj:
    return {"initialization": {"provisioned": True}}


def cluster_status(now: dt.datetime) -> Obj:
    """What CAPI's Cluster controller would write once infrastructure and control plane are up."""
    stamp = rfc3339(now)
    return {
        "initialization": {"infrastructureProvisioned": True, "controlPlaneInitialized": True},
        "conditions": [
            {
                "type": condition,
                "status": "True",
                "reason": reason,
                "message": "",
                "lastTransitionTime": stamp,
            }
            for condition, reason in (
                ("InfrastructureReady", "Ready"),
                ("ControlPlaneInitialized", "Initialized"),
            )
        ],
    }


def control_plane_machines(
    cluster: Mapping[str, Any], kcp: Mapping[str, Any], version: str
) -> tuple[Obj, Obj]:
    """The Machine and LocalMachine of the (one) booted control-plane machine."""
    meta = cluster["metadata"]
    name, namespace = meta["name"], meta["namespace"]
    machine_name = f"{name}-control-plane-0"
    labels = {
        capi.LABEL_CLUSTER_NAME: name,
        "cluster.x-k8s.io/control-plane": "",
        capi.LABEL_LATTICE_CLUSTER: name,
    }
    local_machine: Obj = {
        "apiVersion": local_provider.API_VERSION,
        "kind": "LocalMachine",
        "metadata": {"name": machine_name, "namespace": namespace, "labels": labels},
        "spec": {"providerID": f"local://{name}/{machine_name}"},
    }
    machine: Obj = {
        "apiVersion": f"{capi.CLUSTER_API}/v1beta2",
        "kind": "Machine",
        "metadata": {
            "name": machine_name,
            "namespace": namespace,
            "labels": labels,
            "ownerReferences": [owner_ref(kcp)],
        },
        "spec": {
            "clusterName": name,
            "version": version,
            "bootstrap": {"dataSecretName": f"{name}-kubeconfig"},
            "infrastructureRef": {
                "apiGroup": local_provider.GROUP,
                "kind": "LocalMachine",
                "name": machine_name,
            },
            "providerID": f"local://{name}/{machine_name}",
        },
    }
    return machine, local_machine


def machine_status(node_name: str) -> Obj:
    return {
        "nodeRef": {"name": node_name},
        "initialization": {"infrastructureProvisioned": True, "bootstrapDataSecretCreated": True},
        "phase": "Running",
    }


def bootstrap_files(kcp: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """(path, secret name, key) of every kubeadm ``files`` entry sourced from a Secret."""
    files = kcp.get("spec", {}).get("kubeadmConfigSpec", {}).get("files") or []
    out = []
    for entry in files:
        secret = (entry.get("contentFrom") or {}).get("secret")
        if secret:
            out.append((entry["path"], secret["name"], secret["key"]))
    return out


def post_kubeadm_commands(kcp: Mapping[str, Any]) -> list[str]:
    return list(kcp.get("spec", {}).get("kubeadmConfigSpec", {}).get("postKubeadmCommands") or [])
