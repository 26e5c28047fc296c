"""Kubernetes objects for cross-cluster traffic, as plain dicts (spec 003 sections 6-8).

Caller side, for a resolved remote dependency (bilateral agreement confirmed):

- Istio ``ServiceEntry`` ``remote-<cluster>-<service>``: the remote's qualified DNS name as a
  ``MESH_INTERNAL`` host with ``DNS`` resolution, labelled with its source cluster and routed
  through the namespace's waypoint;
- Istio ``AuthorizationPolicy`` ``allow-<caller>-to-remote-<service>`` on that ServiceEntry,
  allowing only the caller's SPIFFE principal, on the remote's ports;
- ``CiliumNetworkPolicy`` ``<caller>-remote-egress``: egress to the remote gateways only
  (``toFQDNs`` for names, ``toCIDR`` for IP literals), plus the DNS rule that FQDN policies need.

Callee side, for each local service that allows callers:

- the namespace's cross-cluster ``Gateway`` (class ``istio``, HTTPS, client certificates
  required) and an ``HTTPRoute`` from the service's qualified DNS name to its Service;
- an external-dns ``DNSEndpoint``: an A record when the gateway address is an IP, a CNAME
  otherwise, TTL 300.

Every function is deterministic and never emits an empty object or list.

Deviations from the spec's Rust sketch, each forced by the upstream CRDs (docs/discovery.md):
Istio objects use the GA ``v1`` APIs (the sketch says ``v1beta1``; same schema);
the Gateway listener's hostname is ``*.<cluster>.<baseDomain>`` (``*.<cluster>.*.lattice.local``
is not a valid Gateway API hostname: a wildcard is only allowed as the first label, and it
already matches any number of labels); and ``tls.mode`` is ``Terminate`` with Istio's
``gateway.istio.io/tls-terminate-mode: MUTUAL`` option (Gateway API's mode enum is
Terminate|Passthrough; ``MUTUAL`` there is rejected).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from lattice.domain.discovery.catalog import CatalogEntry
from lattice.domain.discovery.naming import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_TRUST_DOMAIN,
    is_ip,
    parse_gateway_endpoint,
    qualified_dns_name,
    remote_service_entry_name,
    spiffe_principal,
)

Manifest = dict[str, Any]

ISTIO_NETWORKING = "networking.istio.io/v1"
ISTIO_SECURITY = "security.istio.io/v1"
CILIUM = "cilium.io/v2"
EXTERNAL_DNS = "externaldns.k8s.io/v1alpha1"
GATEWAY_API = "gateway.networking.k8s.io/v1"

DEFAULT_TTL = 300
MANAGED_BY = {"app.kubernetes.io/managed-by": "lattice"}
WORKLOAD_LABEL = "app.kubernetes.io/name"
"""Label every Lattice workload's pods carry, with the service name as value."""
ISTIO_TLS_MODE_OPTION = "gateway.istio.io/tls-terminate-mode"


def _metadata(name: str, namespace: str, labels: Mapping[str, str] | None = None) -> Manifest:
    return {
        "name": name,
        "namespace": namespace,
        "labels": dict(sorted({**MANAGED_BY, **(labels or {})}.items())),
    }


# --------------------------------------------------------------------------- caller side


def compile_remote_service_entry(remote: CatalogEntry, namespace: str) -> Manifest:
    """ServiceEntry making ``remote.qualified_dns_name`` a mesh-internal host in ``namespace``."""
    spec: Manifest = {
        "hosts": [remote.qualified_dns_name],
        "location": "MESH_INTERNAL",
        "resolution": "DNS",
    }
    ports = [{"number": p.port, "name": p.name, "protocol": p.protocol.upper()} for p in remote.ports]
    if ports:
        spec["ports"] = ports
    return {
        "apiVersion": ISTIO_NETWORKING,
        "kind": "ServiceEntry",
        "metadata": _metadata(
            remote_service_entry_name(remote.source_cluster, remote.name),
            namespace,
            {
                "lattice.dev/source-cluster": remote.source_cluster,
                "lattice.dev/remote-service": "true",
                "istio.io/use-waypoint": f"{namespace}-waypoint",
            },
        ),
        "spec": spec,
    }


def compile_remote_access_policy(
    caller: str, remote: CatalogEntry, namespace: str, trust_domain: str = DEFAULT_TRUST_DOMAIN
) -> Manifest:
    """AuthorizationPolicy letting only ``caller`` reach the remote's ServiceEntry."""
    rule: Manifest = {
        "from": [{"source": {"principals": [spiffe_principal(trust_domain, namespace, caller)]}}]
    }
    ports = [str(p.port) for p in remote.ports]
    if ports:
        rule["to"] = [{"operation": {"ports": ports}}]
    return {
        "apiVersion": ISTIO_SECURITY,
        "kind": "AuthorizationPolicy",
        "metadata": _metadata(
            f"allow-{caller}-to-remote-{remote.name}", namespace, {"lattice.dev/service": caller}
        ),
        "spec": {
            "targetRefs": [
                {
                    "group": "networking.istio.io",
                    "kind": "ServiceEntry",
                    "name": remote_service_entry_name(remote.source_cluster, remote.name),
                }
            ],
            "action": "ALLOW",
            "rules": [rule],
        },
    }


def remote_egress_rule(remote: CatalogEntry) -> Manifest:
    """One Cilium egress rule: the remote's gateway endpoint (host and port) only."""
    host, port = parse_gateway_endpoint(remote.gateway_endpoint)
    return _egress_rule(host, port)


def _egress_rule(host: str, port: int) -> Manifest:
    rule: Manifest
    if is_ip(host):
        network = ipaddress.ip_network(host)
        rule = {"toCIDR": [str(network)]}
    else:
        rule = {"toFQDNs": [{"matchName": host}]}
    rule["toPorts"] = [{"ports": [{"port": str(port), "protocol": "TCP"}]}]
    return rule


DNS_EGRESS_RULE: Manifest = {
    "toEndpoints": [
        {
            "matchLabels": {
                "k8s:io.kubernetes.pod.namespace": "kube-system",
                "k8s:k8s-app": "kube-dns",
            }
        }
    ],
    "toPorts": [
        {
            "ports": [{"port": "53", "protocol": "ANY"}],
            "rules": {"dns": [{"matchPattern": "*"}]},
        }
    ],
}


def compile_remote_egress_policy(caller: str, remotes: Sequence[CatalogEntry], namespace: str) -> Manifest:
    """CiliumNetworkPolicy: ``caller`` may reach its remotes' gateways (and DNS), nothing else remote.

    Cilium FQDN rules only work when the pod's DNS lookups go through Cilium's DNS proxy, hence
    the DNS rule. Several remotes behind one gateway share one rule.
    """
    gateways = sorted({parse_gateway_endpoint(r.gateway_endpoint) for r in remotes})
    egress = [_copy(DNS_EGRESS_RULE)] + [_egress_rule(host, port) for host, port in gateways]
    return {
        "apiVersion": CILIUM,
        "kind": "CiliumNetworkPolicy",
        "metadata": _metadata(f"{caller}-remote-egress", namespace, {"lattice.dev/service": caller}),
        "spec": {
            "endpointSelector": {"matchLabels": {WORKLOAD_LABEL: caller}},
            "egress": egress,
        },
    }


def _copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_copy(v) for v in value]
    return value


# --------------------------------------------------------------------------- callee side


def dns_endpoint_name(service: str, environment: str) -> str:
    return f"{service}-{environment}-dns"


def compile_dns_endpoint(
    service: str,
    environment: str,
    namespace: str,
    cluster: str,
    base_domain: str,
    target: str,
    record_type: str,
    ttl: int = DEFAULT_TTL,
) -> Manifest:
    return {
        "apiVersion": EXTERNAL_DNS,
        "kind": "DNSEndpoint",
        "metadata": _metadata(
            dns_endpoint_name(service, environment),
            namespace,
            {
                "lattice.dev/service": service,
                "lattice.dev/environment": environment,
                "lattice.dev/cluster": cluster,
            },
        ),
        "spec": {
            "endpoints": [
                {
                    "dnsName": qualified_dns_name(service, environment, cluster, base_domain),
                    "recordType": record_type,
                    "targets": [target],
                    "recordTTL": ttl,
                }
            ]
        },
    }


def compile_a_record(
    service: str, environment: str, namespace: str, cluster: str, base_domain: str, gateway_ip: str
) -> Manifest:
    """A record: the service's qualified name -> the gateway's IP address."""
    record_type = "AAAA" if ipaddress.ip_address(gateway_ip).version == 6 else "A"
    return compile_dns_endpoint(
        service, environment, namespace, cluster, base_domain, gateway_ip, record_type
    )


def compile_cname_record(
    service: str, environment: str, namespace: str, cluster: str, base_domain: str, gateway_hostname: str
) -> Manifest:
    """CNAME record: the service's qualified name -> the gateway's host name."""
    return compile_dns_endpoint(
        service, environment, namespace, cluster, base_domain, gateway_hostname, "CNAME"
    )


def compile_service_dns(
    service: str, environment: str, namespace: str, cluster: str, base_domain: str, gateway_target: str
) -> Manifest:
    """A record for an IP target, CNAME for a host name."""
    if is_ip(gateway_target):
        return compile_a_record(service, environment, namespace, cluster, base_domain, gateway_target)
    return compile_cname_record(service, environment, namespace, cluster, base_domain, gateway_target)


def cross_cluster_gateway_name(namespace: str) -> str:
    return f"{namespace}-cross-cluster-gateway"


def compile_cross_cluster_gateway(
    namespace: str, cluster: str, base_domain: str, gateway_port: int = DEFAULT_GATEWAY_PORT
) -> Manifest:
    """Gateway accepting mutual-TLS traffic from sibling clusters for this cluster's names."""
    return {
        "apiVersion": GATEWAY_API,
        "kind": "Gateway",
        "metadata": _metadata(cross_cluster_gateway_name(namespace), namespace),
        "spec": {
            "gatewayClassName": "istio",
            "listeners": [
                {
                    "name": "cross-cluster",
                    "hostname": f"*.{cluster}.{base_domain}",
                    "port": gateway_port,
                    "protocol": "HTTPS",
                    "tls": {
                        "mode": "Terminate",
                        "certificateRefs": [
                            {
                                "kind": "Secret",
                                "name": f"{namespace}-cross-cluster-tls",
                                "namespace": namespace,
                            }
                        ],
                        "options": {ISTIO_TLS_MODE_OPTION: "MUTUAL"},
                    },
                }
            ],
        },
    }


def compile_cross_cluster_route(
    service: str, namespace: str, qualified_name: str, service_port: int
) -> Manifest:
    """HTTPRoute from the cross-cluster gateway to the local Service, for one qualified name."""
    return {
        "apiVersion": GATEWAY_API,
        "kind": "HTTPRoute",
        "metadata": _metadata(f"{service}-cross-cluster-route", namespace, {"lattice.dev/service": service}),
        "spec": {
            "parentRefs": [
                {
                    "group": "gateway.networking.k8s.io",
                    "kind": "Gateway",
                    "name": cross_cluster_gateway_name(namespace),
                    "namespace": namespace,
                }
            ],
            "hostnames": [qualified_name],
            "rules": [
                {
                    "matches": [{"path": {"type": "PathPrefix", "value": "/"}}],
                    "backendRefs": [{"kind": "Service", "name": service, "port": service_port}],
                }
            ],
        },
    }


KIND_ORDER = (
    "Gateway",
    "HTTPRoute",
    "DNSEndpoint",
    "ServiceEntry",
    "AuthorizationPolicy",
    "CiliumNetworkPolicy",
)


def sort_manifests(manifests: Iterable[Manifest]) -> list[Manifest]:
    """Deterministic order: by kind (KIND_ORDER), then namespace, then name."""
    return sorted(
        manifests,
        key=lambda m: (
            KIND_ORDER.index(m["kind"]),
            m["metadata"]["namespace"],
            m["metadata"]["name"],
        ),
    )
