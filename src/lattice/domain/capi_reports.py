"""What the Cluster API controllers and the infrastructure provider report as failed (pure).

The operator compiles and applies a cluster's CAPI objects; the real controllers then render
bootstrap data and boot machines. When one of them cannot (a ``files`` entry of the compiled
KubeadmControlPlane whose Secret does not exist, a machine whose bootstrap commands fail), it
says so in a condition on the object it owns. This module finds those reports among the
objects the operator watches, so the LatticeCluster carries CAPI's own message instead of
waiting in silence.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from attrs import frozen

Obj = Mapping[str, Any]

DATA_SECRET_AVAILABLE = "DataSecretAvailable"  # noqa: S105 - a KubeadmConfig condition (CABPK)
BOOT_FAILED = "BootFailed"  # LocalMachine Ready reason (lattice.domain.local_infra)


@frozen
class CapiFailure:
    kind: str
    name: str
    reason: str
    message: str

    def describe(self) -> str:
        return f"{self.kind} {self.name}: {self.message}"


def _condition(obj: Obj, kind: str) -> Mapping[str, Any] | None:
    for cond in (obj.get("status") or {}).get("conditions") or []:
        if isinstance(cond, Mapping) and cond.get("type") == kind:
            return cond
    return None


def _failure(obj: Obj) -> CapiFailure | None:
    kind = str(obj.get("kind", ""))
    name = str((obj.get("metadata") or {}).get("name", ""))
    if kind == "KubeadmConfig":
        cond = _condition(obj, DATA_SECRET_AVAILABLE)
        # CABPK uses one reason for waiting and failing; its waiting messages say "Waiting".
        if cond is not None and cond.get("status") == "False":
            message = str(cond.get("message") or "")
            if message and not message.startswith("Waiting"):
                return CapiFailure(kind, name, "BootstrapDataFailed", message)
    if kind == "LocalMachine":
        cond = _condition(obj, "Ready")
        if cond is not None and cond.get("status") == "False" and cond.get("reason") == BOOT_FAILED:
            return CapiFailure(kind, name, "MachineBootFailed", str(cond.get("message") or ""))
    return None


def failures(objects: Iterable[Obj]) -> tuple[CapiFailure, ...]:
    """Every failure reported, in a stable order (by kind, then name)."""
    found = [
        f
        for f in (_failure(o) for o in objects if not (o.get("metadata") or {}).get("deletionTimestamp"))
        if f
    ]
    return tuple(sorted(found, key=lambda f: (f.kind, f.name)))


def move_blockers(objects: Iterable[Obj]) -> tuple[str, ...]:
    """Why ``clusterctl move`` would refuse the cluster now (its preflight), if it would.

    clusterctl moves a Cluster only once its infrastructure is provisioned, its control plane
    initialized and every Machine has a Node; a pivot waits for that instead of failing."""
    blockers: list[str] = []
    for obj in objects:
        kind = obj.get("kind")
        meta = obj.get("metadata") or {}
        status = obj.get("status") or {}
        if kind == "Cluster":
            initialization = status.get("initialization") or {}
            if not initialization.get("infrastructureProvisioned"):
                blockers.append(f"Cluster {meta.get('name')}: the infrastructure is not provisioned yet")
            if not initialization.get("controlPlaneInitialized"):
                blockers.append(f"Cluster {meta.get('name')}: the control plane is not initialized yet")
        elif kind == "Machine" and not meta.get("deletionTimestamp") and not status.get("nodeRef"):
            blockers.append(f"Machine {meta.get('name')}: no Node yet")
    return tuple(sorted(blockers))


ROLLING_OUT = "RollingOut"  # CAPI v1beta2 condition on KubeadmControlPlane and MachineDeployment
_EXPLAINING = ("RollingOut", "ScalingUp", "ScalingDown", "Remediating")


def _explanations(obj: Obj) -> list[tuple[str, str]]:
    """What the controller says about the rollout: the true conditions among ``_EXPLAINING``,
    and, for a control plane, why it is not Available (KCP waits for etcd there). A
    MachineSet's scale-up only when it is blocked (CAPI's preflight checks)."""
    out = []
    for kind in _EXPLAINING:
        cond = _condition(obj, kind)
        if cond is not None and cond.get("status") == "True" and cond.get("message"):
            message = str(cond["message"])
            if obj.get("kind") != "MachineSet" or "blocked" in message:
                out.append((kind, message))
    available = _condition(obj, "Available")
    if (
        obj.get("kind") == "KubeadmControlPlane"
        and available is not None
        and available.get("status") != "True"
        and available.get("message")
    ):
        out.append(("Available", str(available["message"])))
    return out


@frozen
class Rollout:
    """A version (or template) rollout as the KubeadmControlPlane and MachineDeployments report
    it: Machines up to date of total, and the controllers' own messages on why it waits."""

    version: str
    control_plane: tuple[int, int]  # up to date, replicas
    workers: tuple[int, int]
    details: tuple[str, ...] = ()

    def describe(self) -> str:
        cp_done, cp_total = self.control_plane
        w_done, w_total = self.workers
        text = (
            f"rolling out {self.version}: control plane {cp_done}/{cp_total} and workers "
            f"{w_done}/{w_total} Machines up to date"
        )
        return f"{text} ({'; '.join(self.details)})" if self.details else text


def _count(obj: Obj, key: str) -> int:
    value = (obj.get("status") or {}).get(key)
    return value if isinstance(value, int) else 0


def rollout(objects: Iterable[Obj]) -> Rollout | None:
    """The rollout in progress, or None when no controller reports one (``RollingOut=True``)."""
    listed = list(objects)
    control_planes = [o for o in listed if o.get("kind") == "KubeadmControlPlane"]
    deployments = sorted(
        (o for o in listed if o.get("kind") == "MachineDeployment"),
        key=lambda o: str((o.get("metadata") or {}).get("name", "")),
    )
    owners = [*control_planes, *deployments]
    rolling = [o for o in owners if (_condition(o, ROLLING_OUT) or {}).get("status") == "True"]
    if not rolling:
        return None
    details = [
        f"{o.get('kind')} {(o.get('metadata') or {}).get('name', '')} {kind}: {' '.join(message.split())}"
        for o in [*owners, *(o for o in listed if o.get("kind") == "MachineSet")]
        for kind, message in _explanations(o)
    ]
    version = next(
        (
            str((o.get("spec") or {}).get("version"))
            for o in control_planes
            if (o.get("spec") or {}).get("version")
        ),
        "",
    )
    return Rollout(
        version=version,
        control_plane=(
            sum(_count(o, "upToDateReplicas") for o in control_planes),
            sum(_count(o, "replicas") for o in control_planes),
        ),
        workers=(
            sum(_count(o, "upToDateReplicas") for o in deployments),
            sum(_count(o, "replicas") for o in deployments),
        ),
        details=tuple(details),
    )
