"""The installation flow's pure parts: the ClusterResourceSet that delivers the agent to the
management cluster (the only place Lattice uses ClusterResourceSets), and the steps.

A root cluster has no cell to register with, so ``lattice install`` signs its agent certificate
itself (with the temporary bootstrap cell's CA) and hands the agent's manifests to CAPI's
ClusterResourceSet mechanism, which applies them once the cluster is up.
"""

from __future__ import annotations

import base64
import enum
import ipaddress
from typing import Any

from lattice.domain import addons, capi, deploy, models

CRS_API = "addons.cluster.x-k8s.io/v1beta2"
CRS_SECRET_TYPE = "addons.cluster.x-k8s.io/resource-set"  # noqa: S105 - a Secret type


class Step(enum.StrEnum):
    BOOTSTRAP_CLUSTER = "bootstrap cluster"
    CRDS = "CRDs"
    BOOTSTRAP_OPERATOR = "bootstrap operator"
    MANAGEMENT_CLUSTER = "management cluster"
    AGENT_DELIVERY = "agent via ClusterResourceSet"
    PIVOT = "provision and pivot"
    CLEANUP = "delete the bootstrap cluster"


STEPS = tuple(Step)


class Via(enum.StrEnum):
    """How ``lattice install`` renders the operator's objects (its CRDs, RBAC and Deployment):
    from ``lattice.domain.deploy`` as ``lattice crds`` and ``lattice deploy-manifests`` print
    them, or from the Helm chart ``charts/lattice`` with ``helm template``. The same objects
    either way; both are applied the same way (server-side apply, no Helm release)."""

    MANIFESTS = "manifests"
    HELM = "helm"


def agent_resource_set(cluster_name: str, manifests_yaml: str) -> list[dict[str, Any]]:
    """A Secret holding the agent's manifests and the ClusterResourceSet applying it once."""
    namespace = models.capi_namespace(cluster_name)
    name = f"{cluster_name}-lattice-agent"
    labels = {capi.LABEL_CLUSTER_NAME: cluster_name, capi.LABEL_MANAGED_BY: "lattice"}
    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "type": CRS_SECRET_TYPE,
            "data": {"agent.yaml": base64.b64encode(manifests_yaml.encode()).decode()},
        },
        {
            "apiVersion": CRS_API,
            "kind": "ClusterResourceSet",
            "metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {
                "clusterSelector": {"matchLabels": {capi.LABEL_LATTICE_CLUSTER: cluster_name}},
                "resources": [{"kind": "Secret", "name": name}],
                "strategy": "ApplyOnce",
            },
        },
    ]


def selector_matches(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """``matchLabels`` and ``matchExpressions`` (In, NotIn, Exists, DoesNotExist)."""
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    for expression in selector.get("matchExpressions") or []:
        key, operator, values = expression["key"], expression["operator"], expression.get("values") or []
        present = key in labels
        if operator == "In" and (not present or labels[key] not in values):
            return False
        if operator == "NotIn" and present and labels[key] in values:
            return False
        if operator == "Exists" and not present:
            return False
        if operator == "DoesNotExist" and present:
            return False
    return bool(selector.get("matchLabels") or selector.get("matchExpressions"))


def _bind_host(spec: dict[str, Any]) -> str:
    """Where a cell's servers bind: the pod's own address when its LoadBalancer Service carries
    ``parentConfig.host`` (``lattice.domain.addons.cell_service``); the host itself when it is
    an address of the machine; every interface for a name."""
    host = str(spec["parentConfig"]["host"])
    if addons.load_balancer_carries_host(spec):
        return "$(POD_IP)"  # the kubelet expands it (deploy.operator_manifests sets POD_IP)
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return "0.0.0.0"  # noqa: S104 - a named cell serves its children on every interface
    return host


def is_local(spec: dict[str, Any]) -> bool:
    """Whether the cluster's provider is ``local``."""
    return bool((spec.get("provider") or {}).get("type") == models.ProviderType.LOCAL.value)


def parent_operator_args(spec: dict[str, Any], parent: capi.ParentEndpoint) -> list[str]:
    """``--parent-endpoint`` of a child's own operator when the child has a cell (``cellRef``):
    it compiles its own KubeadmControlPlane exactly as its cell did."""
    return ["--parent-endpoint", str(parent)] if spec.get("cellRef") else []


def proxy_args(parent: dict[str, Any]) -> list[str]:
    """``--proxy-port`` of a cell's operator: the Kubernetes API proxy is on unless
    ``parentConfig.proxyPort`` is 0 (docs/api-proxy.md)."""
    port = int(parent.get("proxyPort", models.DEFAULT_PROXY_PORT))
    return ["--proxy-port", str(port)] if port else []


def cell_operator_args(spec: dict[str, Any], state_dir: str) -> list[str]:
    """Arguments that make a child's own operator a cell (when its spec has parentConfig)."""
    parent = spec.get("parentConfig")
    if not parent:
        return []
    return [
        "--cell-host",
        parent["host"],
        "--bootstrap-port",
        str(parent.get("bootstrapPort", models.DEFAULT_BOOTSTRAP_PORT)),
        "--grpc-port",
        str(parent.get("grpcPort", models.DEFAULT_GRPC_PORT)),
        *proxy_args(parent),
        "--bind-host",
        _bind_host(spec),
        "--state-dir",
        state_dir,
    ]


def child_operator(
    cluster_name: str,
    spec: dict[str, Any],
    parent: capi.ParentEndpoint | None,
    image: str,
    infra_args: tuple[str, ...] = (),
) -> deploy.OperatorInstall:
    """The operator a cell delivers to a child before its pivot (one replica): it compiles its
    own control plane with ``parent`` as its cell when it has one (``cellRef``), is a cell
    itself when its spec has ``parentConfig`` (then with the state volume), plus
    ``infra_args`` (the local provider's, which need the state volume too)."""
    cell_args = cell_operator_args(spec, deploy.STATE_DIR)
    parent_args = parent_operator_args(spec, parent) if parent is not None else []
    # The local provider's Cluster API managers keep their certificates and logs in the state
    # directory too: it must be the writable volume (the image's root is read-only), not the
    # default relative to the working directory.
    state_args = ["--state-dir", deploy.STATE_DIR] if infra_args and not cell_args else []
    return deploy.OperatorInstall(
        image=image,
        cluster_name=cluster_name,
        replicas=1,
        extra_args=(*parent_args, *cell_args, *state_args, *infra_args),
        state_volume=bool(cell_args or infra_args),
    )
