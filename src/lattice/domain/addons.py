"""What a new cluster receives besides its agent, and in which order it is applied (pure).

Spec 000's runtime flow: at registration the child gets its agent **and Cilium** (a kubeadm
cluster has no pod network until a CNI is installed); then, over the agent's stream, the
bootstrap step (``ApplyManifestsCommand``) brings the rest: the Lattice CRDs and operator, the
Cluster API CRDs the pivot needs, the Cilium CRDs with the cluster's LB-IPAM pool
(``spec.networking.default``) and its L2 announcement policy, and Flux's source and kustomize
controllers, so every cluster is ready for GitOps before it is pivoted.

Here: the Helm values Cilium is rendered with (by the release's own chart), the Lattice-made
Cilium objects, the cell's ``Service`` (``spec.parentConfig.service``), and the apply order of
a payload (:func:`apply_steps`): Namespaces, then CRDs, then everything built in, then a wait
until the payload's CRDs are Established, then the custom resources.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen

from lattice.domain import models

Obj = Mapping[str, Any]

CILIUM_RELEASE = "cilium"
CILIUM_NAMESPACE = "kube-system"
LB_POOL_NAME = "default"
L2_POLICY_NAME = "default"
CELL_SERVICE_NAME = "lattice-cell"
CELL_NAMESPACE = "lattice-system"
OPERATOR_SELECTOR = {"app.kubernetes.io/name": "lattice-operator"}
"""The operator's pods (see :mod:`lattice.domain.deploy`): the cell's Service selects them."""
LBIPAM_IPS_ANNOTATION = "lbipam.cilium.io/ips"
"""Cilium LB-IPAM: the address a LoadBalancer Service asks for (one of its pools')."""

FLUX_NAMESPACE = "flux-system"
FLUX_CONTROLLERS = ("source-controller", "kustomize-controller")


def _labels(cluster_name: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/part-of": "lattice",
        "app.kubernetes.io/managed-by": "lattice",
        "lattice.dev/cluster": cluster_name,
    }


# --------------------------------------------------------------------------- Cilium


def control_plane_endpoint(objs: Iterable[Obj]) -> tuple[str, int] | None:
    """``spec.controlPlaneEndpoint`` of the Cluster API ``Cluster`` among ``objs`` (the
    infrastructure provider sets it), or ``None`` while it is not set."""
    for obj in objs:
        if obj.get("kind") != "Cluster" or not str(obj.get("apiVersion", "")).startswith("cluster.x-k8s.io/"):
            continue
        endpoint = (obj.get("spec") or {}).get("controlPlaneEndpoint") or {}
        host, port = endpoint.get("host"), endpoint.get("port")
        if isinstance(host, str) and host and isinstance(port, int) and port > 0:
            return host, port
    return None


def cilium_values(
    cluster_name: str, networking: models.NetworkingSpec | None, api_server: tuple[str, int]
) -> dict[str, Any]:
    """The values Cilium's chart is rendered with for one kubeadm cluster.

    * Pod addresses: Cilium's cluster-pool IPAM over the cluster's pod CIDRs (the same blocks
      CAPI's ``Cluster.spec.clusterNetwork.pods`` carries).
    * kube-proxy replacement on (L2 announcements need it); kubeadm skips its kube-proxy addon
      (see :mod:`lattice.domain.capi`). Without kube-proxy, Cilium reaches the API server at
      the cluster's control-plane endpoint (``api_server``). (The chart's ``auto`` would look
      the endpoint up at render time, which needs the cluster; the cell renders offline.)
    * LB-IPAM is always on in Cilium; L2 announcements are turned on so a LoadBalancer address
      from the pool is answered on the nodes' network, with external IPs.
    * One operator replica (a new cluster may have one node).
    * Hubble's certificates come from Cilium's certgen CronJob, not from the chart: a render is
      then the same every time, so re-applying a payload changes nothing (the chart's default
      generates a new CA on every render).
    """
    pods = list(networking.pods) if networking and networking.pods else [models.DEFAULT_POD_CIDR]
    return {
        "cluster": {"name": cluster_name},
        "ipam": {"mode": "cluster-pool", "operator": {"clusterPoolIPv4PodCIDRList": pods}},
        "kubeProxyReplacement": True,
        "k8sServiceHost": api_server[0],
        "k8sServicePort": api_server[1],
        "l2announcements": {"enabled": True},
        "externalIPs": {"enabled": True},
        "operator": {"replicas": 1},
        "hubble": {"tls": {"auto": {"method": "cronJob"}}},
    }


def lb_ip_pool(cluster_name: str, cidr: str) -> dict[str, Any]:
    """The cluster's Cilium LB-IPAM pool: ``spec.networking.default.cidr``."""
    return {
        "apiVersion": "cilium.io/v2",
        "kind": "CiliumLoadBalancerIPPool",
        "metadata": {"name": LB_POOL_NAME, "labels": _labels(cluster_name)},
        "spec": {"blocks": [{"cidr": cidr}]},
    }


def l2_announcement_policy(cluster_name: str) -> dict[str, Any]:
    """Announce every LoadBalancer address from the pool on every node (ARP/NDP)."""
    return {
        "apiVersion": "cilium.io/v2alpha1",
        "kind": "CiliumL2AnnouncementPolicy",
        "metadata": {"name": L2_POLICY_NAME, "labels": _labels(cluster_name)},
        "spec": {"loadBalancerIPs": True, "externalIPs": True},
    }


def network_objects(
    cluster_name: str, networking: models.NetworkingSpec | None
) -> tuple[dict[str, Any], ...]:
    """The Lattice-made Cilium objects of a cluster: its pool and L2 policy, if it has a pool."""
    if networking is None or networking.default is None:
        return ()
    return (lb_ip_pool(cluster_name, networking.default.cidr), l2_announcement_policy(cluster_name))


# --------------------------------------------------------------------------- the cell's Service


def cell_service(cluster_name: str, spec: models.LatticeClusterSpec) -> dict[str, Any] | None:
    """The Service that exposes a cell's registration webhook, gRPC and API proxy ports (no proxy
    port with ``proxyPort: 0``), or ``None`` for a cluster that is not a cell.

    Its type is ``spec.parentConfig.service.type``. A LoadBalancer asks Cilium's LB-IPAM for
    ``parentConfig.host`` when that host is an address of the cluster's pool, so the address
    children are compiled to dial is the one the Service gets."""
    parent = spec.parent_config
    if parent is None:
        return None
    kind = parent.service.type if parent.service is not None else models.ServiceType.LOAD_BALANCER
    pool = spec.networking.default.cidr if spec.networking and spec.networking.default else None
    annotations: dict[str, str] = {}
    if _asks_for_host(str(kind), parent.host, pool):
        annotations[LBIPAM_IPS_ANNOTATION] = parent.host
    metadata: dict[str, Any] = {
        "name": CELL_SERVICE_NAME,
        "namespace": CELL_NAMESPACE,
        "labels": _labels(cluster_name),
    }
    if annotations:
        metadata["annotations"] = annotations
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": metadata,
        "spec": {
            "type": str(kind),
            "selector": dict(OPERATOR_SELECTOR),
            "ports": [
                {
                    "name": "https-register",
                    "protocol": "TCP",
                    "port": parent.bootstrap_port,
                    "targetPort": parent.bootstrap_port,
                },
                {
                    "name": "grpc-agent",
                    "protocol": "TCP",
                    "port": parent.grpc_port,
                    "targetPort": parent.grpc_port,
                },
                *(
                    [
                        {
                            "name": "https-api-proxy",
                            "protocol": "TCP",
                            "port": parent.proxy_port,
                            "targetPort": parent.proxy_port,
                        }
                    ]
                    if parent.proxy_port
                    else []
                ),
            ],
        },
    }


def _asks_for_host(kind: str, host: str, pool: str | None) -> bool:
    """A LoadBalancer whose host is an address of the cluster's pool asks LB-IPAM for it."""
    if kind != models.ServiceType.LOAD_BALANCER.value or not pool:
        return False
    try:
        return ipaddress.ip_address(host) in ipaddress.ip_network(pool, strict=False)
    except ValueError:
        return False


def load_balancer_carries_host(spec: Mapping[str, Any]) -> bool:
    """Whether a cell's Service (in a raw ``spec``) is a LoadBalancer that asks LB-IPAM for
    ``parentConfig.host``: then children reach the cell through it, not on the host directly."""
    parent = spec.get("parentConfig") or {}
    kind = (parent.get("service") or {}).get("type", models.ServiceType.LOAD_BALANCER.value)
    cidr = ((spec.get("networking") or {}).get("default") or {}).get("cidr")
    return _asks_for_host(str(kind), str(parent.get("host")), str(cidr) if cidr else None)


def service_address(service: Obj) -> str | None:
    """Where a Service is reached from outside its pods: the first load-balancer ingress (IP or
    host name) of a LoadBalancer, else its cluster IP; ``None`` while it has none."""
    spec = service.get("spec") or {}
    if spec.get("type") == "LoadBalancer":
        for ingress in ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []:
            found = ingress.get("ip") or ingress.get("hostname")
            if found:
                return str(found)
        return None
    cluster_ip = spec.get("clusterIP")
    return str(cluster_ip) if cluster_ip and cluster_ip != "None" else None


# --------------------------------------------------------------------------- apply order


@frozen
class Apply:
    obj: Obj


@frozen
class AwaitEstablished:
    """Wait until these CRDs (``<plural>.<group>``) are Established before going on."""

    crds: tuple[str, ...]


Step = Apply | AwaitEstablished

_FIRST = {"Namespace": 0, "CustomResourceDefinition": 1}
_CUSTOM_RESOURCE_RANK = 3


def describe(obj: Obj) -> str:
    """``Kind namespace/name`` (or ``Kind name``), as errors name an object."""
    meta = obj.get("metadata") or {}
    name = meta.get("name", "?")
    where = f"{meta['namespace']}/{name}" if meta.get("namespace") else str(name)
    return f"{obj.get('kind', '?')} {where}"


def _group(api_version: str) -> str:
    return api_version.rsplit("/", 1)[0] if "/" in api_version else ""


def _defined_kinds(objs: Iterable[Obj]) -> dict[tuple[str, str], str]:
    """(group, kind) → CRD name, for each CRD in the payload."""
    out: dict[tuple[str, str], str] = {}
    for obj in objs:
        if obj.get("kind") != "CustomResourceDefinition":
            continue
        spec = obj.get("spec") or {}
        kind = (spec.get("names") or {}).get("kind")
        if spec.get("group") and kind:
            out[(str(spec["group"]), str(kind))] = str((obj.get("metadata") or {}).get("name"))
    return out


def apply_steps(objs: Sequence[Obj]) -> tuple[Step, ...]:
    """The order a payload is applied in: stable within each rank, CRDs before the objects of
    the kinds they define, with one wait for those CRDs in between."""
    defined = _defined_kinds(objs)

    def rank(obj: Obj) -> int:
        kind = str(obj.get("kind", ""))
        if kind in _FIRST:
            return _FIRST[kind]
        if (_group(str(obj.get("apiVersion", ""))), kind) in defined:
            return _CUSTOM_RESOURCE_RANK
        return 2

    ordered = sorted(objs, key=rank)
    steps: list[Step] = []
    awaited = False
    for obj in ordered:
        if not awaited and rank(obj) == _CUSTOM_RESOURCE_RANK:
            needed = sorted(
                {
                    defined[(_group(str(o.get("apiVersion", ""))), str(o.get("kind")))]
                    for o in ordered
                    if rank(o) == _CUSTOM_RESOURCE_RANK
                }
            )
            steps.append(AwaitEstablished(tuple(needed)))
            awaited = True
        steps.append(Apply(obj))
    return tuple(steps)


def payload_errors(objs: Sequence[Obj]) -> list[str]:
    """Every object that cannot be applied as it stands, by position and field."""
    errors: list[str] = []
    for index, obj in enumerate(objs):
        where = f"object {index}"
        for key in ("apiVersion", "kind"):
            if not isinstance(obj.get(key), str) or not obj.get(key):
                errors.append(f"{where}: {key}: a non-empty string is required")
        meta = obj.get("metadata")
        if not isinstance(meta, Mapping) or not meta.get("name"):
            errors.append(f"{where} ({obj.get('kind', '?')}): metadata.name: required")
    return errors


def established(crd: Obj) -> bool:
    """Whether a CRD's status says the apiserver serves it."""
    for cond in (crd.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Established":
            return bool(cond.get("status") == "True")
    return False
