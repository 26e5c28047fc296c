"""The local infrastructure provider as CAPI's v1beta2 infrastructure contract sees it: pure plans.

The provider owns ``LocalCluster`` and ``LocalMachine`` and nothing else. For a ``LocalCluster``
it sets ``spec.controlPlaneEndpoint`` and ``status.initialization.provisioned``; for a
``LocalMachine`` it boots the machine from the bootstrap data the real CABPK rendered, then sets
``spec.providerID``, ``status.addresses`` and ``status.initialization.provisioned``. Cluster and
Machine status, ownerReferences, certificates, the kubeconfig Secret: the real controllers.

Each function reads the objects it is given (plain dicts as the API returns them), the facts
the caller observed (what the machine host has booted) and returns what to do. No I/O.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from lattice.domain import conditions, serde
from lattice.domain.models import Condition, ConditionStatus

__all__ = [
    "FINALIZER",
    "AddFinalizer",
    "Boot",
    "ClusterPlan",
    "MachinePlan",
    "Release",
    "Report",
    "Wait",
    "plan_local_cluster",
    "plan_local_machine",
    "provider_id",
    "ready_conditions",
]

FINALIZER = "localmachine.infrastructure.lattice.dev"
PAUSED_ANNOTATION = "cluster.x-k8s.io/paused"
DELETE_FOR_MOVE = "clusterctl.cluster.x-k8s.io/delete-for-move"
CONTROL_PLANE_LABEL = "cluster.x-k8s.io/control-plane"
CLUSTER_NAME_LABEL = "cluster.x-k8s.io/cluster-name"
LOOPBACK = "127.0.0.1"

Obj = Mapping[str, Any]


def _meta(obj: Obj | None) -> Mapping[str, Any]:
    return (obj or {}).get("metadata") or {}


def _paused(cluster: Obj | None, obj: Obj) -> bool:
    if PAUSED_ANNOTATION in (_meta(obj).get("annotations") or {}):
        return True
    return bool(((cluster or {}).get("spec") or {}).get("paused"))


def _owner(obj: Obj, kind: str) -> str | None:
    for ref in _meta(obj).get("ownerReferences") or []:
        if ref.get("kind") == kind and str(ref.get("apiVersion", "")).startswith("cluster.x-k8s.io/"):
            return str(ref.get("name"))
    return None


def provider_id(cluster: str, machine: str) -> str:
    """``local://<cluster>/<machine>``: what the Machine's Node carries in ``spec.providerID``."""
    return f"local://{cluster}/{machine}"


# -- LocalCluster ---------------------------------------------------------------------------


@frozen
class ClusterPlan:
    """What to write on a LocalCluster: a new endpoint (spec), then provisioned (status)."""

    wait: str | None = None
    endpoint: tuple[str, int] | None = None
    provisioned: bool = False


def plan_local_cluster(local_cluster: Obj, cluster: Obj | None, free_port: int) -> ClusterPlan:
    """The endpoint is chosen once (``free_port``, passed in) and never changes: machines come
    and go behind it. Provisioned follows as soon as the endpoint is recorded."""
    if cluster is None:
        return ClusterPlan(wait="waiting for the Cluster to own this LocalCluster")
    if _paused(cluster, local_cluster):
        return ClusterPlan(wait="paused")
    if _meta(local_cluster).get("deletionTimestamp"):
        return ClusterPlan(wait="deleting")
    spec = local_cluster.get("spec") or {}
    endpoint = spec.get("controlPlaneEndpoint") or {}
    if not endpoint.get("host") or not endpoint.get("port"):
        return ClusterPlan(endpoint=(LOOPBACK, free_port))
    initialization = (local_cluster.get("status") or {}).get("initialization") or {}
    if not initialization.get("provisioned"):
        return ClusterPlan(provisioned=True)
    return ClusterPlan()


# -- LocalMachine ---------------------------------------------------------------------------


@frozen
class Wait:
    reason: str


@frozen
class Boot:
    """Boot the machine from the Secret CABPK wrote (once; booting again is a no-op)."""

    cluster: str
    machine: str
    bootstrap_secret: str
    control_plane: bool
    endpoint: tuple[str, int]
    version: str


@frozen
class AddFinalizer:
    """Claim the LocalMachine before anything runs for it, so its deletion waits for the stop."""


@frozen
class Report:
    """Record the booted machine on the LocalMachine (spec.providerID, then status)."""

    provider_id: str
    addresses: tuple[tuple[str, str], ...]


@frozen
class Release:
    """The LocalMachine is being deleted: stop the machine unless clusterctl is moving it, then
    remove the finalizer."""

    machine: str
    stop: bool


MachinePlan = Wait | AddFinalizer | Boot | Report | Release


def plan_local_machine(
    local_machine: Obj,
    machine: Obj | None,
    cluster: Obj | None,
    local_cluster: Obj | None,
    *,
    booted: bool,
) -> MachinePlan:
    """Follow the infra-machine workflow of the contract: an owner Machine, provisioned cluster
    infrastructure and bootstrap data first; then boot; then report."""
    meta = _meta(local_machine)
    name = str(meta.get("name", ""))
    finalized = FINALIZER in (meta.get("finalizers") or [])
    # Paused first, deletion second: while clusterctl moves a cluster its source is paused and
    # then deleted, and that deletion must not stop the machines (clusterctl itself removes
    # the finalizers of what it moved).
    if _paused(cluster, local_machine):
        return Wait("paused")
    if meta.get("deletionTimestamp"):
        if not finalized:
            return Wait("deleting")
        moving = DELETE_FOR_MOVE in (meta.get("annotations") or {})
        return Release(machine=name, stop=not moving)
    if machine is None or _owner(local_machine, "Machine") is None:
        return Wait("waiting for a Machine to own this LocalMachine")
    if not finalized:
        return AddFinalizer()
    if cluster is None or local_cluster is None:
        return Wait("waiting for the Cluster and its LocalCluster")
    cluster_init = (cluster.get("status") or {}).get("initialization") or {}
    if not cluster_init.get("infrastructureProvisioned"):
        return Wait("waiting for the cluster infrastructure")
    endpoint = ((local_cluster.get("spec") or {}).get("controlPlaneEndpoint")) or {}
    if not endpoint.get("host") or not endpoint.get("port"):
        return Wait("waiting for the control-plane endpoint")
    machine_spec = machine.get("spec") or {}
    secret = (machine_spec.get("bootstrap") or {}).get("dataSecretName")
    if not secret:
        return Wait("waiting for the bootstrap data (Machine.spec.bootstrap.dataSecretName)")
    cluster_name = str(_meta(cluster).get("name", ""))
    spec = local_machine.get("spec") or {}
    status = local_machine.get("status") or {}
    provisioned = bool(spec.get("providerID")) and bool(
        (status.get("initialization") or {}).get("provisioned")
    )
    if not booted and provisioned:
        # It runs, booted by another provider (the cell, before this cluster's pivot): a cloud
        # provider finds such a VM by its providerID and never creates a second one.
        return Wait("provisioned by another host")
    if not booted:
        return Boot(
            cluster=cluster_name,
            machine=name,
            bootstrap_secret=str(secret),
            control_plane=CONTROL_PLANE_LABEL in (_meta(machine).get("labels") or {}),
            endpoint=(str(endpoint["host"]), int(endpoint["port"])),
            version=str(machine_spec.get("version") or ""),
        )
    wanted_id = provider_id(cluster_name, name)
    addresses = (("InternalIP", LOOPBACK), ("Hostname", name))
    if spec.get("providerID") == wanted_id and provisioned:
        return Wait("provisioned")
    return Report(provider_id=wanted_id, addresses=addresses)


def ready_conditions(
    local_machine: Obj, status: ConditionStatus, reason: str, message: str, *, now: dt.datetime
) -> list[Any]:
    """The LocalMachine's ``status.conditions`` with ``Ready`` set (its lastTransitionTime kept
    unless the status flips, as :func:`lattice.domain.conditions.set_condition` keeps it).
    Conditions that do not parse are dropped: this provider owns them."""
    current: list[Condition] = []
    for raw in (local_machine.get("status") or {}).get("conditions") or []:
        parsed = serde.structure(raw, Condition)
        if isinstance(parsed, Condition):
            current.append(parsed)
    generation = _meta(local_machine).get("generation")
    updated = conditions.set_condition(
        current,
        conditions.READY,
        status,
        reason,
        message[:32768],
        now=now,
        generation=generation if isinstance(generation, int) else None,
    )
    return [serde.unstructure(c) for c in updated]
