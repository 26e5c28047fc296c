"""The discovery messages of the agent protocol (spec 003, "Protocol Extensions") as values.

Field names follow ``lattice.agent.v1`` one-to-one so the gRPC adapter's conversion is
mechanical. Agent -> cell: :class:`ServiceAnnouncement`, :class:`ServiceCatalogSync`,
:class:`ServiceQuery`. Cell -> agent: :class:`ServiceQueryResponse`, :class:`RemoteServiceUpdate`.

Not guaranteed: that the values are well formed (non-empty names and so on). The catalog and the
cache check what they rely on; the adapter is where malformed wire data is rejected.
"""

from __future__ import annotations

from attrs import frozen

ANY_CALLER = "*"

ServiceKey = tuple[str, str]
"""(environment, service name): how services are identified across clusters."""


@frozen
class ServicePort:
    name: str
    port: int
    protocol: str


@frozen
class ServiceAnnouncement:
    """A service of one cluster, as its agent announces it (or its deletion, ``deleted=True``)."""

    environment: str
    service_name: str
    ports: tuple[ServicePort, ...] = ()
    allowed_callers: tuple[str, ...] = ()
    source_cluster: str = ""
    qualified_dns_name: str = ""
    gateway_endpoint: str = ""
    deleted: bool = False
    version: int = 0

    @property
    def key(self) -> ServiceKey:
        return (self.environment, self.service_name)


@frozen
class ServiceCatalogSync:
    """All (``full_sync=True``) or some of one cluster's services."""

    services: tuple[ServiceAnnouncement, ...]
    full_sync: bool
    cluster_name: str


@frozen
class ServiceQuery:
    query_id: str
    environment: str
    service_name: str
    requesting_service: str

    @property
    def key(self) -> ServiceKey:
        return (self.environment, self.service_name)


@frozen
class ServiceQueryResponse:
    query_id: str
    found: bool
    service: ServiceAnnouncement | None = None
    bilateral_agreement: bool = False
    error_message: str = ""


@frozen
class RemoteServiceUpdate:
    """Services a cluster depends on, pushed by its parent.

    ``full_sync=True``: the complete list; the receiver drops cached services not in it.
    A ``deleted=True`` announcement means the owner deleted the service.
    """

    services: tuple[ServiceAnnouncement, ...]
    full_sync: bool = False


AgentDiscoveryMessage = ServiceAnnouncement | ServiceCatalogSync | ServiceQuery
CellDiscoveryMessage = ServiceQueryResponse | RemoteServiceUpdate


def allows(allowed_callers: frozenset[str] | tuple[str, ...], caller: str) -> bool:
    """The callee half of bilateral agreement: ``"*"`` or the caller's name is allowed."""
    return ANY_CALLER in allowed_callers or caller in allowed_callers
