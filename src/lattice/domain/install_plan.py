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

import attrs

from lattice.domain import addons, capi, deploy, models
from lattice.domain.operator_command import OperatorOptions

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


def parent_endpoint(spec: dict[str, Any], parent: capi.ParentEndpoint | None) -> capi.ParentEndpoint | None:
    """``--parent-endpoint`` of a child's own operator when the child has a cell (``cellRef``):
    it compiles its own KubeadmControlPlane exactly as its cell did."""
    return parent if spec.get("cellRef") else None


def cell_operator_options(spec: dict[str, Any], state_dir: str) -> OperatorOptions:
    """The flags that make a child's own operator a cell (when its spec has parentConfig; none
    otherwise). The Kubernetes API proxy is on unless ``parentConfig.proxyPort`` is 0
    (docs/api-proxy.md), and off is the operator's default: no ``--proxy-port`` then."""
    parent = spec.get("parentConfig")
    if not parent:
        return OperatorOptions()
    return OperatorOptions(
        cell_host=str(parent["host"]),
        bootstrap_port=int(parent.get("bootstrapPort", models.DEFAULT_BOOTSTRAP_PORT)),
        grpc_port=int(parent.get("grpcPort", models.DEFAULT_GRPC_PORT)),
        proxy_port=int(parent.get("proxyPort", models.DEFAULT_PROXY_PORT)) or None,
        bind_host=_bind_host(spec),
        state_dir=state_dir,
    )


def child_operator(
    cluster_name: str,
    spec: dict[str, Any],
    parent: capi.ParentEndpoint | None,
    image: str,
    local_machines_dir: str | None = None,
) -> deploy.OperatorInstall:
    """The operator a cell delivers to a child before its pivot (one replica): it compiles its
    own control plane with ``parent`` as its cell when it has one (``cellRef``), is a cell
    itself when its spec has ``parentConfig`` (then with the state volume), and runs the local
    provider with the real Cluster API managers when ``local_machines_dir`` is given (where the
    local machines live; the state volume too)."""
    cell = cell_operator_options(spec, deploy.STATE_DIR)
    local = local_machines_dir is not None
    # The local provider's Cluster API managers keep their certificates and logs in the state
    # directory too: it must be the writable volume (the image's root is read-only), not the
    # default relative to the working directory.
    state_volume = cell.cell_host is not None or local
    options = attrs.evolve(
        cell,
        parent_endpoint=parent_endpoint(spec, parent),
        state_dir=deploy.STATE_DIR if state_volume else None,
        machines_dir=local_machines_dir,
        local_infra=local,
        capi_managers=local,
    )
    return deploy.OperatorInstall(
        image=image, cluster_name=cluster_name, replicas=1, options=options, state_volume=state_volume
    )
