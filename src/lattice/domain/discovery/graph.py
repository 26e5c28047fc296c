"""The per-cluster service graph: which local services call which, and what is missing.

Nodes are ``(environment, name)``. Every validated local LatticeService is a **Local** node; a
dependency that no local service provides is an **Unknown** node - the trigger for a query to
the parent (spec 003, "Cross-Cluster Dependency Resolution Flow"). An edge is allowed only with
bilateral agreement: the caller declares the dependency (always true for an edge) and the callee
allows the caller (or ``*``). Whether an Unknown callee allows the caller is for the parent's
catalog to say.

Two LatticeServices with the same name in one environment (different namespaces) are a
conflict: the first by namespace wins the node and the others are listed in
:attr:`ServiceGraph.conflicts`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping

import attrs
from attrs import frozen

from lattice.domain.discovery.messages import ServiceKey
from lattice.domain.lattice_service import ValidService


class NodeKind(enum.StrEnum):
    LOCAL = "Local"
    UNKNOWN = "Unknown"


@frozen
class ServiceNode:
    environment: str
    name: str
    kind: NodeKind
    service: ValidService | None  # set for Local nodes
    callers: tuple[str, ...]  # local services that depend on this one, sorted

    @property
    def key(self) -> ServiceKey:
        return (self.environment, self.name)


@frozen
class Edge:
    environment: str
    caller: str
    callee: str
    allowed: bool | None  # None: the callee is Unknown, only the parent can tell


@frozen
class NameConflict:
    environment: str
    name: str
    namespaces: tuple[str, ...]  # the first one holds the node


@frozen
class ServiceGraph:
    nodes: Mapping[ServiceKey, ServiceNode] = attrs.field(factory=dict)
    edges: tuple[Edge, ...] = ()
    conflicts: tuple[NameConflict, ...] = ()

    @classmethod
    def build(cls, services: Iterable[ValidService]) -> ServiceGraph:
        by_key: dict[ServiceKey, list[ValidService]] = {}
        for service in sorted(services, key=lambda s: (s.environment, s.name, s.namespace)):
            by_key.setdefault(service.key, []).append(service)
        local = {key: group[0] for key, group in by_key.items()}
        conflicts = tuple(
            NameConflict(key[0], key[1], tuple(s.namespace for s in group))
            for key, group in sorted(by_key.items())
            if len(group) > 1
        )
        callers: dict[ServiceKey, list[str]] = {}
        edges: list[Edge] = []
        for key, service in sorted(local.items()):
            for dependency in service.dependencies:
                target = (service.environment, dependency)
                callers.setdefault(target, []).append(service.name)
                callee = local.get(target)
                allowed = None if callee is None else callee.allows(service.name)
                edges.append(Edge(key[0], service.name, dependency, allowed))
        nodes: dict[ServiceKey, ServiceNode] = {}
        for key in sorted(set(local) | set(callers)):
            service_or_none = local.get(key)
            nodes[key] = ServiceNode(
                environment=key[0],
                name=key[1],
                kind=NodeKind.LOCAL if service_or_none is not None else NodeKind.UNKNOWN,
                service=service_or_none,
                callers=tuple(sorted(callers.get(key, ()))),
            )
        return cls(nodes=nodes, edges=tuple(edges), conflicts=conflicts)

    def get(self, environment: str, name: str) -> ServiceNode | None:
        return self.nodes.get((environment, name))

    def local(self) -> tuple[ServiceNode, ...]:
        return tuple(n for n in self.nodes.values() if n.kind is NodeKind.LOCAL)

    def unknown(self) -> tuple[ServiceNode, ...]:
        """Dependencies no local service provides, sorted by key."""
        return tuple(n for n in self.nodes.values() if n.kind is NodeKind.UNKNOWN)

    def dependencies_of(self, environment: str, name: str) -> tuple[ServiceNode, ...]:
        return tuple(
            self.nodes[(e.environment, e.callee)]
            for e in self.edges
            if e.environment == environment and e.caller == name
        )

    def is_allowed(self, environment: str, caller: str, callee: str) -> bool:
        """Local bilateral agreement: the edge exists and the (local) callee allows the caller."""
        return any(
            e.allowed is True
            for e in self.edges
            if e.environment == environment and e.caller == caller and e.callee == callee
        )
