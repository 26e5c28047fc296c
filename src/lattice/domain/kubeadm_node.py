"""What ``kubeadm init``/``kubeadm join`` and a kubelet leave in a cluster, as objects: pure.

The local machine stand-in replaces only the kubeadm command and the kubelet; these are the
API objects they write, shaped as kubeadm v1beta4 and the kubelet write them, because Cluster
API's controllers read exactly these:

* ``kube-system/kubeadm-config`` with the ``ClusterConfiguration`` (KCP's
  ``controlPlaneInitialized`` is the existence of this ConfigMap; upgrades parse it);
* the bootstrap-token RBAC of kubeadm's ``bootstrap-token`` phase (so that a joining node's
  token can create its certificate signing request and have it auto-approved) and the
  ``kube-public/cluster-info`` ConfigMap joining nodes discover the cluster CA from;
* the Node (name = Machine name, ``spec.providerID`` = the LocalMachine's), with kubeadm's
  control-plane label and taint, the kubelet's conditions, and its Lease heartbeat;
* per control-plane node the mirror pods of the static pods kubeadm writes
  (``kube-system/<component>-<node>``), Running and Ready exactly while the real process runs.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from lattice.domain import yaml_text

__all__ = [
    "CONTROL_PLANE_COMPONENTS",
    "bootstrap_rbac",
    "ca_cert_hash",
    "cluster_info",
    "kubeadm_config",
    "lease",
    "mark_control_plane",
    "mirror_pod",
    "mirror_pod_status",
    "node",
    "node_labels",
    "node_status",
]

CONTROL_PLANE_COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")
CONTROL_PLANE_LABEL = "node-role.kubernetes.io/control-plane"
EXCLUDE_LB_LABEL = "node.kubernetes.io/exclude-from-external-load-balancers"
BOOTSTRAPPERS = "system:bootstrappers:kubeadm:default-node-token"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
FIELD_MANAGER = "lattice-kubeadm"
"""kubeadm's writes (as the cluster admin)."""
KUBELET_FIELD_MANAGER = "lattice-kubelet"
# What the scheduler sees of a local machine; the pods it runs are local processes, unlimited.
NODE_CAPACITY = {"cpu": "2", "memory": "8Gi", "pods": "110", "ephemeral-storage": "20Gi"}
"""The kubelet stand-in's writes (as the node), a manager of their own so neither drops the other's fields."""

Obj = dict[str, Any]


def kubeadm_config(cluster_configuration: Mapping[str, Any]) -> Obj:
    """``kube-system/kubeadm-config`` as ``kubeadm init`` uploads it (phase upload-config)."""
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
        "data": {"ClusterConfiguration": yaml_text.dump(dict(cluster_configuration))},
    }


def _binding(kind: str, name: str, role: str, subject: Obj, namespace: str | None = None) -> Obj:
    meta: Obj = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta,
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": kind.replace("Binding", ""),
            "name": role,
        },
        "subjects": [subject],
    }


def bootstrap_rbac() -> list[Obj]:
    """kubeadm's bootstrap-token phase: what lets a joining node's token create and have
    auto-approved its client certificate request, and read ``cluster-info`` anonymously."""
    group = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": BOOTSTRAPPERS}
    nodes = {"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": "system:nodes"}
    anonymous = {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": "system:anonymous"}
    return [
        _binding("ClusterRoleBinding", "kubeadm:kubelet-bootstrap", "system:node-bootstrapper", group),
        _binding(
            "ClusterRoleBinding",
            "kubeadm:node-autoapprove-bootstrap",
            "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
            group,
        ),
        _binding(
            "ClusterRoleBinding",
            "kubeadm:node-autoapprove-certificate-rotation",
            "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
            nodes,
        ),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "kubeadm:bootstrap-signer-clusterinfo", "namespace": "kube-public"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["configmaps"],
                    "resourceNames": ["cluster-info"],
                    "verbs": ["get"],
                }
            ],
        },
        _binding(
            "RoleBinding",
            "kubeadm:bootstrap-signer-clusterinfo",
            "kubeadm:bootstrap-signer-clusterinfo",
            anonymous,
            "kube-public",
        ),
    ]


def cluster_info(server: str, ca_pem: bytes) -> Obj:
    """``kube-public/cluster-info``: a kubeconfig with the server and CA (the bootstrap signer
    controller adds the token signatures)."""
    kubeconfig = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "",
                "cluster": {
                    "server": server,
                    "certificate-authority-data": base64.b64encode(ca_pem).decode(),
                },
            }
        ],
        "contexts": [],
        "users": [],
    }
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "cluster-info", "namespace": "kube-public"},
        "data": {"kubeconfig": yaml_text.dump(kubeconfig)},
    }


def ca_cert_hash(spki_der: bytes) -> str:
    """kubeadm's ``--discovery-token-ca-cert-hash`` of a CA public key (SubjectPublicKeyInfo)."""
    return "sha256:" + hashlib.sha256(spki_der).hexdigest()


def node_labels(kubelet_extra_args: Sequence[Mapping[str, Any]]) -> dict[str, str]:
    """The labels the kubelet registers with (``--node-labels``)."""
    labels: dict[str, str] = {}
    for arg in kubelet_extra_args:
        if arg.get("name") == "node-labels":
            for pair in str(arg.get("value", "")).split(","):
                key, _, value = pair.partition("=")
                if key.strip():
                    labels[key.strip()] = value.strip()
    return labels


def node(name: str, *, provider_id: str, labels: Mapping[str, str]) -> Obj:
    """The Node as the kubelet registers it (:func:`mark_control_plane` is kubeadm's part)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                **labels,
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock"
            },
        },
        "spec": {"providerID": provider_id},
    }


def mark_control_plane(name: str) -> Obj:
    """kubeadm's mark-control-plane phase, applied as the cluster admin: NodeRestriction forbids a
    kubelet to set ``node-role.kubernetes.io/*`` labels on itself."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name, "labels": {CONTROL_PLANE_LABEL: "", EXCLUDE_LB_LABEL: ""}},
        "spec": {"taints": [{"key": CONTROL_PLANE_LABEL, "effect": "NoSchedule"}]},
    }


def node_status(name: str, *, address: str, version: str, kubelet_port: int, now: str) -> Obj:
    """The kubelet's status report: Ready, no pressure, its address and version."""

    def condition(kind: str, status: str, reason: str, message: str) -> Obj:
        return {
            "type": kind,
            "status": status,
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": now,
            "lastTransitionTime": now,
        }

    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "conditions": [
                condition(
                    "MemoryPressure", "False", "KubeletHasSufficientMemory", "kubelet has sufficient memory"
                ),
                condition(
                    "DiskPressure", "False", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"
                ),
                condition(
                    "PIDPressure", "False", "KubeletHasSufficientPID", "kubelet has sufficient PID available"
                ),
                condition(
                    "Ready", "True", "KubeletReady", "kubelet is posting ready status (lattice stand-in)"
                ),
            ],
            "capacity": dict(NODE_CAPACITY),
            "allocatable": dict(NODE_CAPACITY),
            "addresses": [{"type": "InternalIP", "address": address}, {"type": "Hostname", "address": name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
            "nodeInfo": {
                "kubeletVersion": version,
                "kubeProxyVersion": version,
                "operatingSystem": "linux",
                "architecture": "amd64",
                "containerRuntimeVersion": "none://lattice-local",
                "osImage": "lattice local machine",
                "kernelVersion": "",
                "machineID": "",
                "systemUUID": "",
                "bootID": "",
            },
        },
    }


def lease(name: str, *, now: str, duration_seconds: int = 40) -> Obj:
    """The node's heartbeat Lease in ``kube-node-lease`` (``now`` is a MicroTime:
    ``2006-01-02T15:04:05.000000Z``)."""
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": name, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": name, "leaseDurationSeconds": duration_seconds, "renewTime": now},
    }


def mirror_pod(component: str, node_name: str, *, node_uid: str, command: Sequence[str]) -> Obj:
    """The mirror pod of a static pod kubeadm writes for ``component`` on ``node_name``, owned by
    its Node as the kubelet owns it (NodeRestriction requires that)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": f"{component}-{node_name}",
            "namespace": "kube-system",
            "labels": {"component": component, "tier": "control-plane"},
            "annotations": {
                MIRROR_ANNOTATION: f"lattice-local-{component}",
                "kubernetes.io/config.source": "file",
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": node_name, "uid": node_uid, "controller": True}
            ],
        },
        "spec": {
            "nodeName": node_name,
            "priorityClassName": "system-node-critical",
            "hostNetwork": True,
            "tolerations": [{"operator": "Exists", "effect": "NoExecute"}],
            "containers": [
                {"name": component, "image": f"registry.k8s.io/{component}", "command": list(command)}
            ],
        },
    }


def mirror_pod_status(component: str, node_name: str, *, running: bool, now: str) -> Obj:
    """Running and Ready while the real process runs; Failed and not Ready once it has exited."""
    ready = "True" if running else "False"
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{component}-{node_name}", "namespace": "kube-system"},
        "status": {
            "phase": "Running" if running else "Failed",
            "conditions": [
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": ready, "lastTransitionTime": now},
                {"type": "Ready", "status": ready, "lastTransitionTime": now},
            ],
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "containerStatuses": [
                {
                    "name": component,
                    "image": f"registry.k8s.io/{component}",
                    "imageID": "",
                    "ready": running,
                    "started": running,
                    "restartCount": 0,
                    "state": {"running": {}}
                    if running
                    else {"waiting": {"reason": "ProcessExited", "message": "its process has exited"}},
                }
            ],
        },
    }
