"""The load-balancer stand-in of local clusters: which address each LoadBalancer Service gets
from the cluster's Cilium LB-IPAM pools, and what traffic is forwarded where (pure).

On a real cluster Cilium does this: its operator's LB-IPAM allocates an address from a
``CiliumLoadBalancerIPPool`` and writes it to the Service's ``status.loadBalancer``; its agents
announce the address (L2 announcements) and deliver its traffic to the Service's endpoints
(kube-proxy replacement). Cilium cannot run without a kubelet and a container runtime, so in
local clusters the stand-in kubelet runs ``lattice local-lb`` for the cilium-operator pod, with
that pod's own ServiceAccount and RBAC (``lattice.adapters.local_lb``). It keeps LB-IPAM's
rules:

* an address already in a Service's status stays while a pool still holds it;
* ``lbipam.cilium.io/ips`` asks for addresses; the first one a pool holds and no other Service
  has is taken;
* otherwise the first free address of the pools, in pool-name order (the network and broadcast
  addresses of blocks larger than /31 are skipped);
* no pool address left: the Service stays pending (no status).

Only the delivery is narrower: an address is reachable only when it is a loopback address
(127.0.0.0/8, reachable on this host without changing its interfaces); traffic to it goes to
the first Ready pod the Service selects, on the port's ``targetPort`` (a number, or the name of
a container port). The endpoints come from the pods, as the EndpointSlice controller computes
them, because local pods have the host's loopback address, which an EndpointSlice refuses.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from attrs import frozen

Obj = Mapping[str, Any]
IPS_ANNOTATION = "lbipam.cilium.io/ips"


@frozen(order=True)
class Forward:
    """Listen on ``address:port``; deliver to ``target_host:target_port``."""

    address: str
    port: int
    target_host: str
    target_port: int


def _key(obj: Obj) -> tuple[str, str]:
    meta = obj.get("metadata") or {}
    return str(meta.get("namespace", "")), str(meta.get("name", ""))


def load_balancers(services: Iterable[Obj]) -> list[Obj]:
    return sorted((s for s in services if (s.get("spec") or {}).get("type") == "LoadBalancer"), key=_key)


def pool_networks(pools: Iterable[Obj]) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    """The blocks of every enabled pool, pools in name order; unparsable blocks are skipped."""
    out: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
    for pool in sorted(pools, key=lambda p: str((p.get("metadata") or {}).get("name", ""))):
        spec = pool.get("spec") or {}
        if spec.get("disabled"):
            continue
        for block in spec.get("blocks") or []:
            try:
                out.append(ipaddress.ip_network(str(block.get("cidr")), strict=False))
            except ValueError:
                continue
    return out


def _in_pools(address: str, networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in networks)


def _candidates(networks: Sequence[ipaddress.IPv4Network | ipaddress.IPv6Network]) -> Iterator[str]:
    for net in networks:
        hosts = net.hosts() if net.prefixlen < net.max_prefixlen - 1 else iter(net)
        for ip in hosts:
            yield str(ip)


def current(service: Obj) -> list[str]:
    ingress = ((service.get("status") or {}).get("loadBalancer") or {}).get("ingress") or []
    return [str(i["ip"]) for i in ingress if i.get("ip")]


def allocate(services: Iterable[Obj], pools: Iterable[Obj]) -> dict[tuple[str, str], str | None]:
    """(namespace, name) → the address each LoadBalancer Service holds, ``None`` for pending."""
    networks = pool_networks(pools)
    balancers = load_balancers(services)
    taken: set[str] = set()
    out: dict[tuple[str, str], str | None] = {}
    for service in balancers:  # keep what is held first, so a restart moves nothing
        held = [a for a in current(service) if _in_pools(a, networks) and a not in taken]
        if held:
            out[_key(service)] = held[0]
            taken.add(held[0])
    for service in balancers:
        if _key(service) in out:
            continue
        annotations = (service.get("metadata") or {}).get("annotations") or {}
        wanted = [a.strip() for a in str(annotations.get(IPS_ANNOTATION, "")).split(",") if a.strip()]
        choice = next((a for a in wanted if _in_pools(a, networks) and a not in taken), None)
        if choice is None and not wanted:
            choice = next((a for a in _candidates(networks) if a not in taken), None)
        out[_key(service)] = choice
        if choice is not None:
            taken.add(choice)
    return out


def status_patch(service: Obj, address: str | None) -> dict[str, Any] | None:
    """The status to write, or ``None`` when the Service already shows ``address``."""
    if current(service) == ([address] if address else []):
        return None
    namespace, name = _key(service)
    ingress = [{"ip": address, "ipMode": "VIP"}] if address else []
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": namespace},
        "status": {"loadBalancer": {"ingress": ingress}},
    }


def _ready(pod: Obj) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def endpoints(service: Obj, pods: Iterable[Obj]) -> list[Obj]:
    """The Ready pods with an address that the Service selects, by name."""
    selector = (service.get("spec") or {}).get("selector") or {}
    namespace = _key(service)[0]
    if not selector:
        return []
    return sorted(
        (
            p
            for p in pods
            if _key(p)[0] == namespace
            and all(((p.get("metadata") or {}).get("labels") or {}).get(k) == v for k, v in selector.items())
            and (p.get("status") or {}).get("podIP")
            and _ready(p)
        ),
        key=_key,
    )


def _target_port(pod: Obj, port: Obj) -> int | None:
    target = port.get("targetPort", port.get("port"))
    if isinstance(target, int):
        return target
    for container in (pod.get("spec") or {}).get("containers") or []:
        for declared in container.get("ports") or []:
            if declared.get("name") == target and isinstance(declared.get("containerPort"), int):
                return int(declared["containerPort"])
    return None


def forwards(
    services: Iterable[Obj], assigned: Mapping[tuple[str, str], str | None], pods: Sequence[Obj]
) -> set[Forward]:
    """What to listen on and where to deliver, for loopback addresses with a Ready pod."""
    out: set[Forward] = set()
    for service in load_balancers(services):
        address = assigned.get(_key(service))
        if address is None or not ipaddress.ip_address(address).is_loopback:
            continue
        ready = endpoints(service, pods)
        for port in (service.get("spec") or {}).get("ports") or []:
            if str(port.get("protocol", "TCP")) != "TCP" or not isinstance(port.get("port"), int):
                continue
            for pod in ready:
                target = _target_port(pod, port)
                if target is not None:
                    out.add(Forward(address, int(port["port"]), str(pod["status"]["podIP"]), target))
                    break
    return out
