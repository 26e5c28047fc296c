"""The agent bootstrap payload the registration webhook returns: pure manifest generation.

The objects, in apply order:

1. Namespace ``lattice-system``;
2. ServiceAccount ``lattice-agent``;
3. ClusterRole and ClusterRoleBinding ``lattice-agent``. The agent applies arbitrary bootstrap
   manifests and imports CAPI objects of any kind (pivot), so the role grants every verb on
   every resource: the agent is its cluster's administrator, like the operator it becomes;
4. Secret ``lattice-agent-tls`` (Opaque) with ``tls.crt`` (the signed client certificate) and
   ``ca.crt`` (the cell CA bundle). The private key never travels: the child's registration
   script stores the ``tls.key`` it generated in the Secret ``lattice-agent-key``;
5. Deployment ``lattice-agent`` running ``lattice agent --parent HOST:PORT ...``. It uses the
   host network and tolerates the control-plane and not-ready taints, because it starts right
   after ``kubeadm init``, before any CNI; it has no probes and no ports, because an agent never
   listens. The three PEM files are mounted from one projected volume (mode 0440, group
   ``fsGroup``, readable by the non-root agent only); the pod waits (the volume is not
   optional) until ``lattice-agent-key`` exists.

Not guaranteed: anything about the image (it must contain the ``lattice`` program).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

from attrs import frozen

from lattice.domain import yaml_text

NAMESPACE = "lattice-system"
AGENT_NAME = "lattice-agent"
TLS_SECRET = "lattice-agent-tls"  # noqa: S105 - a Secret's name, not a password
KEY_SECRET = "lattice-agent-key"  # noqa: S105 - a Secret's name, not a password
TLS_DIR = "/etc/lattice/tls"
CERT_FILE = f"{TLS_DIR}/tls.crt"
KEY_FILE = f"{TLS_DIR}/tls.key"
CA_FILE = f"{TLS_DIR}/ca.crt"
FIELD_MANAGER = "lattice-bootstrap"


@frozen
class AgentPayloadParams:
    cluster_name: str
    grpc_endpoint: str
    """``HOST:PORT`` of the cell's gRPC server, as the agent dials it: ``str`` of an
    :class:`~lattice.domain.endpoint.Endpoint`, so an IPv6 host is in brackets (``[fd00::1]:50051``)."""
    image: str
    certificate_pem: str
    ca_bundle_pem: str
    tls_server_name: str | None = None
    """Name to verify in the cell's certificate when it differs from the endpoint's host."""
    require_fips: bool = False
    extra_args: tuple[str, ...] = ()
    """Further ``lattice agent`` flags for this cluster (e.g. :func:`discovery_agent_args`)."""


def discovery_agent_args(discovery: Mapping[str, Any] | None) -> tuple[str, ...]:
    """The agent flags that turn on service discovery for a cluster whose (validated)
    ``spec.discovery`` is ``discovery``; none when it is absent or not enabled."""
    if not discovery or not discovery.get("enabled") or not discovery.get("baseDomain"):
        return ()
    args = ["--discovery-base-domain", str(discovery["baseDomain"])]
    port = discovery.get("gatewayPort")
    if port is not None:
        args += ["--gateway-port", str(port)]
    return tuple(args)


def _labels(cluster_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": AGENT_NAME,
        "app.kubernetes.io/part-of": "lattice",
        "app.kubernetes.io/managed-by": "lattice",
        "lattice.dev/cluster": cluster_name,
    }


def _b64(text: str) -> str:
    return base64.b64encode(text.encode("utf-8")).decode("ascii")


def agent_args(params: AgentPayloadParams) -> list[str]:
    args = [
        "agent",
        "--parent",
        params.grpc_endpoint,
        "--cluster-name",
        params.cluster_name,
        "--cert",
        CERT_FILE,
        "--key",
        KEY_FILE,
        "--ca",
        CA_FILE,
    ]
    if params.tls_server_name:
        args += ["--tls-server-name", params.tls_server_name]
    if params.require_fips:
        args.append("--require-fips")
    args += params.extra_args
    return args


def agent_manifests(params: AgentPayloadParams) -> tuple[dict[str, Any], ...]:
    """The agent's Kubernetes objects, in the order they must be applied."""
    labels = _labels(params.cluster_name)
    meta = {"name": AGENT_NAME, "namespace": NAMESPACE, "labels": labels}
    namespace = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": NAMESPACE, "labels": dict(labels)},
    }
    service_account = {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": dict(meta)}
    cluster_role = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": AGENT_NAME, "labels": dict(labels)},
        "rules": [
            {"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]},
            {"nonResourceURLs": ["*"], "verbs": ["*"]},
        ],
    }
    binding = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": AGENT_NAME, "labels": dict(labels)},
        "roleRef": {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "ClusterRole",
            "name": AGENT_NAME,
        },
        "subjects": [{"kind": "ServiceAccount", "name": AGENT_NAME, "namespace": NAMESPACE}],
    }
    secret = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": TLS_SECRET, "namespace": NAMESPACE, "labels": dict(labels)},
        "type": "Opaque",
        "data": {
            "tls.crt": _b64(params.certificate_pem),
            "ca.crt": _b64(params.ca_bundle_pem),
        },
    }
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": dict(meta),
        "spec": {
            "replicas": 1,
            "strategy": {"type": "Recreate"},
            "selector": {"matchLabels": {"app.kubernetes.io/name": AGENT_NAME}},
            "template": {
                "metadata": {"labels": dict(labels)},
                "spec": {
                    "serviceAccountName": AGENT_NAME,
                    "hostNetwork": True,
                    "dnsPolicy": "Default",
                    "tolerations": [
                        {
                            "key": "node-role.kubernetes.io/control-plane",
                            "operator": "Exists",
                            "effect": "NoSchedule",
                        },
                        {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoSchedule"},
                        {
                            "key": "node.cloudprovider.kubernetes.io/uninitialized",
                            "operator": "Exists",
                            "effect": "NoSchedule",
                        },
                    ],
                    "securityContext": {
                        "runAsNonRoot": True,
                        "runAsUser": 65532,
                        "runAsGroup": 65532,
                        "fsGroup": 65532,
                        "seccompProfile": {"type": "RuntimeDefault"},
                    },
                    "containers": [
                        {
                            "name": "agent",
                            "image": params.image,
                            "command": ["lattice"],
                            "args": agent_args(params),
                            "resources": {
                                "requests": {"cpu": "50m", "memory": "64Mi"},
                                "limits": {"memory": "256Mi"},
                            },
                            "securityContext": {
                                "allowPrivilegeEscalation": False,
                                "readOnlyRootFilesystem": True,
                                "capabilities": {"drop": ["ALL"]},
                            },
                            "volumeMounts": [
                                {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
                                {"name": "tmp", "mountPath": "/tmp"},  # noqa: S108 - an emptyDir
                            ],
                        }
                    ],
                    "volumes": [
                        {
                            "name": "tls",
                            "projected": {
                                "defaultMode": 0o440,
                                "sources": [
                                    {
                                        "secret": {
                                            "name": TLS_SECRET,
                                            "items": [
                                                {"key": "tls.crt", "path": "tls.crt"},
                                                {"key": "ca.crt", "path": "ca.crt"},
                                            ],
                                        }
                                    },
                                    {
                                        "secret": {
                                            "name": KEY_SECRET,
                                            "items": [
                                                {"key": "tls.key", "path": "tls.key"},
                                            ],
                                        }
                                    },
                                ],
                            },
                        },
                        {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
                    ],
                },
            },
        },
    }
    return (namespace, service_account, cluster_role, binding, secret, deployment)


def render_yaml_stream(documents: Sequence[Mapping[str, Any]]) -> str:
    """A multi-document YAML stream, each document starting with ``---``."""
    return yaml_text.dump_all(documents)


def render_agent_manifests(params: AgentPayloadParams) -> str:
    return render_yaml_stream(agent_manifests(params))
