"""What a local machine's kubelet stand-in is told, and what it reports back (pure).

A local machine (:mod:`lattice.adapters.local_machine_host`) is a directory plus one process of
its own, ``lattice local-kubelet``, standing in for the kubelet: on a control-plane machine it
runs the static pods (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) as real
processes; on every machine it registers the Node with the node's own credentials and keeps
its Lease, Ready condition and mirror pods current. The machine therefore outlives the
provider process that booted it, as a VM outlives its cloud controller.

The host writes :class:`KubeletConfig` to ``kubelet.json`` in the machine's directory and keeps
its own :class:`MachineRecord` in ``machine.json``; the kubelet writes :class:`KubeletStatus` to
``kubelet-status.json`` as it goes. All three are JSON documents read and written here; reading
one that is malformed gives every problem at once, by field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from attrs import field, frozen

CONFIG_FILE = "kubelet.json"
STATUS_FILE = "kubelet-status.json"
MACHINE_FILE = "machine.json"


class KubeletFileError(ValueError):
    """A kubelet config or status document that cannot be used; the message names each field."""


@frozen
class StaticControlPlane:
    """The static pods of a control-plane machine: where they keep their data, the certificates
    kubeadm laid out (``/etc/kubernetes/pki`` under the machine's root) and the apiserver port
    (the cluster's control-plane endpoint)."""

    dir: str
    pki_dir: str
    apiserver_port: int


@frozen
class KubeletConfig:
    node: str
    provider_id: str
    version: str
    kubeconfig: str  # kubelet.conf: the node's own client certificate
    labels: Mapping[str, str] = field(factory=dict)
    heartbeat_seconds: float = 10.0
    control_plane: StaticControlPlane | None = None


class Phase(StrEnum):
    STARTING = "Starting"
    CONTROL_PLANE_READY = "ControlPlaneReady"  # the static pods serve; admin kubeconfig written
    NODE_REGISTERED = "NodeRegistered"
    FAILED = "Failed"


@frozen
class KubeletStatus:
    phase: Phase
    message: str = ""
    admin_kubeconfig: str = ""  # control planes: the admin kubeconfig of the static apiserver
    node_uid: str = ""


def _text(doc: Mapping[str, Any], key: str, errors: list[str], *, where: str = "") -> str:
    value = doc.get(key)
    if not isinstance(value, str) or not value:
        errors.append(f"{where}{key}: a non-empty string is required")
        return ""
    return value


def _document(text: str, what: str) -> Mapping[str, Any]:
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise KubeletFileError(f"{what}: not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise KubeletFileError(f"{what}: a JSON object is required")
    return doc


def parse_config(text: str) -> KubeletConfig:
    doc = _document(text, CONFIG_FILE)
    errors: list[str] = []
    node = _text(doc, "node", errors)
    provider_id = _text(doc, "providerID", errors)
    version = _text(doc, "version", errors)
    kubeconfig = _text(doc, "kubeconfig", errors)
    labels = doc.get("labels", {})
    if not isinstance(labels, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        errors.append("labels: a map of strings to strings is required")
        labels = {}
    heartbeat = doc.get("heartbeatSeconds", 10.0)
    if isinstance(heartbeat, bool) or not isinstance(heartbeat, int | float) or heartbeat <= 0:
        errors.append("heartbeatSeconds: a positive number is required")
        heartbeat = 10.0
    control_plane: StaticControlPlane | None = None
    raw_cp = doc.get("controlPlane")
    if raw_cp is not None:
        if not isinstance(raw_cp, dict):
            errors.append("controlPlane: an object is required")
        else:
            cp_dir = _text(raw_cp, "dir", errors, where="controlPlane.")
            pki_dir = _text(raw_cp, "pkiDir", errors, where="controlPlane.")
            port = raw_cp.get("apiserverPort")
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                errors.append("controlPlane.apiserverPort: a port number (1-65535) is required")
                port = 0
            control_plane = StaticControlPlane(dir=cp_dir, pki_dir=pki_dir, apiserver_port=port)
    if errors:
        raise KubeletFileError(f"{CONFIG_FILE}: " + "; ".join(errors))
    return KubeletConfig(
        node=node,
        provider_id=provider_id,
        version=version,
        kubeconfig=kubeconfig,
        labels=dict(labels),
        heartbeat_seconds=float(heartbeat),
        control_plane=control_plane,
    )


def dump_config(config: KubeletConfig) -> str:
    doc: dict[str, Any] = {
        "node": config.node,
        "providerID": config.provider_id,
        "version": config.version,
        "kubeconfig": config.kubeconfig,
        "labels": dict(config.labels),
        "heartbeatSeconds": config.heartbeat_seconds,
    }
    if config.control_plane is not None:
        doc["controlPlane"] = {
            "dir": config.control_plane.dir,
            "pkiDir": config.control_plane.pki_dir,
            "apiserverPort": config.control_plane.apiserver_port,
        }
    return json.dumps(doc, indent=2, sort_keys=True) + "\n"


def parse_status(text: str) -> KubeletStatus:
    doc = _document(text, STATUS_FILE)
    errors: list[str] = []
    try:
        phase = Phase(str(doc.get("phase")))
    except ValueError:
        errors.append(f"phase: one of {', '.join(p.value for p in Phase)} is required")
        phase = Phase.FAILED
    values = {}
    for key in ("message", "adminKubeconfig", "nodeUID"):
        value = doc.get(key, "")
        if not isinstance(value, str):
            errors.append(f"{key}: a string is required")
            value = ""
        values[key] = value
    if errors:
        raise KubeletFileError(f"{STATUS_FILE}: " + "; ".join(errors))
    return KubeletStatus(
        phase=phase,
        message=values["message"],
        admin_kubeconfig=values["adminKubeconfig"],
        node_uid=values["nodeUID"],
    )


def dump_status(status: KubeletStatus) -> str:
    return (
        json.dumps(
            {
                "phase": status.phase.value,
                "message": status.message,
                "adminKubeconfig": status.admin_kubeconfig,
                "nodeUID": status.node_uid,
            },
            sort_keys=True,
        )
        + "\n"
    )


class MachineState(StrEnum):
    BOOTING = "booting"
    BOOTED = "booted"
    FAILED = "failed"  # as a VM whose cloud-init failed: it stays failed until it is deleted


@frozen
class MachineRecord:
    """The host's record of one machine: its kubelet stand-in's pid, how far its boot got, and
    why it failed. Any host sharing the machines directory reads it to find the machines."""

    state: MachineState | None = None
    pid: int | None = None
    message: str = ""
    control_plane: bool = False


def parse_record(text: str) -> MachineRecord:
    doc = _document(text, MACHINE_FILE)
    errors: list[str] = []
    state: MachineState | None = None
    if doc.get("state") is not None:
        try:
            state = MachineState(str(doc["state"]))
        except ValueError:
            errors.append(f"state: one of {', '.join(s.value for s in MachineState)} is required")
    pid = doc.get("pid")
    if pid is not None and (not isinstance(pid, int) or isinstance(pid, bool) or pid <= 0):
        errors.append("pid: a positive integer is required")
        pid = None
    message = doc.get("message", "")
    if not isinstance(message, str):
        errors.append("message: a string is required")
    control_plane = doc.get("controlPlane", False)
    if not isinstance(control_plane, bool):
        errors.append("controlPlane: true or false is required")
    if errors:
        raise KubeletFileError(f"{MACHINE_FILE}: " + "; ".join(errors))
    return MachineRecord(state=state, pid=pid, message=message, control_plane=control_plane)


def dump_record(record: MachineRecord) -> str:
    doc: dict[str, Any] = {"message": record.message, "controlPlane": record.control_plane}
    if record.state is not None:
        doc["state"] = record.state.value
    if record.pid is not None:
        doc["pid"] = record.pid
    return json.dumps(doc, sort_keys=True) + "\n"
