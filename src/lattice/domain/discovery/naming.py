"""Names and identities of cross-cluster discovery: DNS names, gateway endpoints, SPIFFE principals.

:class:`ClusterContext` is what a cluster knows about itself that discovery needs; it comes
from the cluster's own LatticeCluster (``spec.discovery``) plus what the controller observes (the
address of the cross-cluster gateway's load balancer).
"""

from __future__ import annotations

import ipaddress

from attrs import frozen

from lattice.domain.discovery.messages import ServiceAnnouncement, ServicePort
from lattice.domain.endpoint import Endpoint, parse_port, split_host_ports
from lattice.domain.lattice_service import ValidService

DEFAULT_GATEWAY_PORT = 443
DEFAULT_TRUST_DOMAIN = "cluster.local"


@frozen
class ClusterContext:
    cluster_name: str
    base_domain: str
    gateway_port: int = DEFAULT_GATEWAY_PORT
    gateway_host: str | None = None
    """DNS name of this cluster's cross-cluster gateway; default ``gateway.<cluster>.<baseDomain>``."""
    gateway_address: str | None = None
    """Observed load-balancer address of the gateway (IP or host name), when known."""
    trust_domain: str = DEFAULT_TRUST_DOMAIN

    @property
    def gateway_hostname(self) -> str:
        return self.gateway_host or f"gateway.{self.cluster_name}.{self.base_domain}"

    @property
    def gateway_endpoint(self) -> str:
        return gateway_endpoint(self.gateway_hostname, self.gateway_port)

    def qualified_dns_name(self, environment: str, service: str) -> str:
        return qualified_dns_name(service, environment, self.cluster_name, self.base_domain)


def qualified_dns_name(service: str, environment: str, cluster: str, base_domain: str) -> str:
    """``{service}.{env}.{cluster}.{base_domain}``, e.g. ``api.prod.cluster-a.lattice.example.com``."""
    return f"{service}.{environment}.{cluster}.{base_domain}"


def gateway_endpoint(host: str, port: int) -> str:
    """``{gateway-host}:{port}``; IPv6 literals in brackets."""
    return str(Endpoint(host, port))


def parse_gateway_endpoint(endpoint: str, default_port: int = DEFAULT_GATEWAY_PORT) -> tuple[str, int]:
    """``host:port`` -> (host, port); a missing or unusable port means ``default_port``.

    Lenient (an announcement from another cluster is not refused for its port): text that is not
    ``host[:port]`` at all is taken as a host as a whole."""
    split = split_host_ports(endpoint)
    if split is None or len(split[1]) > 1:
        return endpoint, default_port
    host, port_texts = split
    port = parse_port(port_texts[0]) if port_texts else None
    return host, default_port if port is None else port


def is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def spiffe_principal(trust_domain: str, namespace: str, service_account: str) -> str:
    """An Istio AuthorizationPolicy principal: ``<trust domain>/ns/<ns>/sa/<account>``.

    Istio principals are SPIFFE IDs without the ``spiffe://`` scheme. A Lattice workload runs
    as a service account named after its service.
    """
    return f"{trust_domain}/ns/{namespace}/sa/{service_account}"


def remote_service_entry_name(source_cluster: str, service: str) -> str:
    return f"remote-{source_cluster}-{service}"


def announcement_for(service: ValidService, ctx: ClusterContext) -> ServiceAnnouncement:
    """What this cluster's agent announces for one of its services."""
    return ServiceAnnouncement(
        environment=service.environment,
        service_name=service.name,
        ports=tuple(ServicePort(p.name, p.port, p.protocol.value) for p in service.ports),
        allowed_callers=service.allowed_callers,
        source_cluster=ctx.cluster_name,
        qualified_dns_name=ctx.qualified_dns_name(service.environment, service.name),
        gateway_endpoint=ctx.gateway_endpoint,
        deleted=False,
        version=service.version,
    )


def deletion_for(environment: str, name: str, ctx: ClusterContext) -> ServiceAnnouncement:
    """The announcement of a deleted service (version 0: deletion always wins)."""
    return ServiceAnnouncement(
        environment=environment,
        service_name=name,
        source_cluster=ctx.cluster_name,
        deleted=True,
        version=0,
    )
