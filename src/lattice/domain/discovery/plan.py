"""Desired cross-cluster objects of one cluster: :func:`plan_service_resources`.

Input: the cluster's validated LatticeServices, the remote services it knows (the remote
service cache's snapshot) and its :class:`~.naming.ClusterContext`. Output: a
:class:`ServicePlan` - the complete desired set of cross-cluster objects (a controller applies
them and prunes objects it manages that are not in the set), plus, per dependency, why it is or
is not wired, for status conditions.

Bilateral agreement gates everything that lets traffic through: a remote dependency gets its
ServiceEntry, AuthorizationPolicy and egress rule only if the caller declares it (it is an
outbound resource) **and** the remote's ``allowed_callers`` include the caller or ``*``. On the
callee side, only services that allow at least one caller are exposed (HTTPRoute and DNS name).

Dependencies satisfied inside the cluster are not this module's business (the local policy
compiler's); they appear in :attr:`ServicePlan.dependencies` as ``Local``.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence

from attrs import frozen

from lattice.domain.discovery import compilers
from lattice.domain.discovery.catalog import CatalogEntry
from lattice.domain.discovery.graph import NodeKind, ServiceGraph
from lattice.domain.discovery.messages import ServiceKey
from lattice.domain.discovery.naming import ClusterContext, remote_service_entry_name
from lattice.domain.lattice_service import PortProtocol, ValidService

Manifest = compilers.Manifest


class DependencyState(enum.StrEnum):
    LOCAL = "Local"
    """Provided by a service of this cluster."""
    REMOTE = "Remote"
    """Resolved in another cluster, with bilateral agreement: wired."""
    NOT_ALLOWED = "NotAllowed"
    """Found in another cluster, but it does not allow this caller: denied."""
    NO_PORTS = "NoPorts"
    """Found in another cluster, but it exposes no ports."""
    UNKNOWN = "Unknown"
    """Not known anywhere (yet)."""


@frozen
class DependencyStatus:
    namespace: str
    caller: str
    environment: str
    dependency: str
    state: DependencyState
    source_cluster: str | None = None


@frozen
class ExposedService:
    namespace: str
    name: str
    qualified_dns_name: str
    port: int


@frozen
class ServicePlan:
    objects: tuple[Manifest, ...]
    dependencies: tuple[DependencyStatus, ...]
    exposed: tuple[ExposedService, ...]

    def for_caller(self, namespace: str, name: str) -> tuple[DependencyStatus, ...]:
        return tuple(d for d in self.dependencies if d.namespace == namespace and d.caller == name)

    @property
    def unresolved(self) -> tuple[DependencyStatus, ...]:
        return tuple(
            d
            for d in self.dependencies
            if d.state in (DependencyState.UNKNOWN, DependencyState.NOT_ALLOWED, DependencyState.NO_PORTS)
        )


_ROUTABLE = (PortProtocol.HTTP, PortProtocol.GRPC, PortProtocol.HTTPS)


def route_port(service: ValidService) -> int | None:
    """The port cross-cluster HTTP traffic goes to: the first HTTP/GRPC/HTTPS port by name, else
    the first port by name; None without ports."""
    for port in service.ports:
        if port.protocol in _ROUTABLE:
            return port.port
    return service.ports[0].port if service.ports else None


def plan_service_resources(
    local_services: Iterable[ValidService],
    remote: Mapping[ServiceKey, CatalogEntry],
    ctx: ClusterContext,
) -> ServicePlan:
    services = list(local_services)
    graph = ServiceGraph.build(services)
    objects: list[Manifest] = []
    statuses: list[DependencyStatus] = []

    # Caller side. The graph holds one service per (env, name); conflicting duplicates in other
    # namespaces still get their own dependencies planned (they are real workloads).
    service_entries: dict[tuple[str, str], CatalogEntry] = {}  # (namespace, SE name) -> remote
    for service in sorted(services, key=lambda s: (s.namespace, s.name)):
        wired: list[CatalogEntry] = []
        for dependency in service.dependencies:
            node = graph.get(service.environment, dependency)
            status = _dependency_status(
                service, dependency, node is not None and node.kind is NodeKind.LOCAL, remote
            )
            statuses.append(status)
            if status.state is not DependencyState.REMOTE:
                continue
            entry = remote[(service.environment, dependency)]
            wired.append(entry)
            se_name = remote_service_entry_name(entry.source_cluster, entry.name)
            service_entries[(service.namespace, se_name)] = entry
            objects.append(
                compilers.compile_remote_access_policy(
                    service.name, entry, service.namespace, ctx.trust_domain
                )
            )
        if wired:
            objects.append(compilers.compile_remote_egress_policy(service.name, wired, service.namespace))
    for (namespace, _), entry in sorted(service_entries.items()):
        objects.append(compilers.compile_remote_service_entry(entry, namespace))

    # Callee side.
    exposed: list[ExposedService] = []
    winners = [node.service for node in graph.local() if node.service is not None]
    for service in sorted(winners, key=lambda s: (s.namespace, s.name)):
        port = route_port(service)
        if port is None or not service.allowed_callers:
            continue
        qualified = ctx.qualified_dns_name(service.environment, service.name)
        exposed.append(ExposedService(service.namespace, service.name, qualified, port))
        objects.append(
            compilers.compile_cross_cluster_route(service.name, service.namespace, qualified, port)
        )
        objects.append(
            compilers.compile_service_dns(
                service.name,
                service.environment,
                service.namespace,
                ctx.cluster_name,
                ctx.base_domain,
                ctx.gateway_address or ctx.gateway_hostname,
            )
        )
    for namespace in sorted({e.namespace for e in exposed}):
        objects.append(
            compilers.compile_cross_cluster_gateway(
                namespace, ctx.cluster_name, ctx.base_domain, ctx.gateway_port
            )
        )
    return ServicePlan(
        objects=tuple(compilers.sort_manifests(objects)),
        dependencies=tuple(statuses),
        exposed=tuple(exposed),
    )


def _dependency_status(
    service: ValidService, dependency: str, is_local: bool, remote: Mapping[ServiceKey, CatalogEntry]
) -> DependencyStatus:
    def status(state: DependencyState, source: str | None = None) -> DependencyStatus:
        return DependencyStatus(
            service.namespace, service.name, service.environment, dependency, state, source
        )

    if is_local:
        return status(DependencyState.LOCAL)
    entry = remote.get((service.environment, dependency))
    if entry is None:
        return status(DependencyState.UNKNOWN)
    if not entry.allows(service.name):
        return status(DependencyState.NOT_ALLOWED, entry.source_cluster)
    if not entry.ports:
        return status(DependencyState.NO_PORTS, entry.source_cluster)
    return status(DependencyState.REMOTE, entry.source_cluster)


def unknown_dependencies(services: Sequence[ValidService]) -> list[tuple[str, str, tuple[str, ...]]]:
    """``(environment, name, callers)`` of every dependency no local service provides."""
    return [(n.environment, n.name, n.callers) for n in ServiceGraph.build(services).unknown()]
