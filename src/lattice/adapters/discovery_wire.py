"""Translation between the discovery messages of ``lattice.agent.v1`` and the discovery domain.

Agent -> cell: ``AgentMessage`` fields 9 (``service_announcement``), 10 (``catalog_sync``) and 11
(``service_query``) <-> :class:`~lattice.domain.discovery.messages.ServiceAnnouncement`,
:class:`~.messages.ServiceCatalogSync`, :class:`~.messages.ServiceQuery`. Cell -> agent:
``CellCommand`` fields 6 (``service_query_response``) and 7 (``remote_service_update``) <->
:class:`~.messages.ServiceQueryResponse`, :class:`~.messages.RemoteServiceUpdate`.

This is where malformed wire data is rejected (the domain types do not check it): decoding raises
:class:`DiscoveryWireError` (a ``ValueError``) naming the field, for an empty environment or
service name, a port outside 1..65535, an empty ``query_id``, or a ``found`` response without a
service. Encoding trusts its input (domain values built by Lattice itself).
"""

from __future__ import annotations

from lattice.domain.discovery import messages as m
from lattice.proto.agent.v1 import agent_pb2 as pb

AGENT_DISCOVERY_KINDS = frozenset({"service_announcement", "catalog_sync", "service_query"})
CELL_DISCOVERY_KINDS = frozenset({"service_query_response", "remote_service_update"})

_MAX_PORT = 65535


class DiscoveryWireError(ValueError):
    """A discovery message that cannot be turned into a domain value; ``field`` names the part."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


# --- values ----------------------------------------------------------------------------------


def port_to_pb(port: m.ServicePort) -> pb.ServicePort:
    return pb.ServicePort(name=port.name, port=port.port, protocol=port.protocol)


def port_from_pb(port: pb.ServicePort, path: str = "port") -> m.ServicePort:
    if not 1 <= port.port <= _MAX_PORT:
        raise DiscoveryWireError(f"{path}.port", f"{port.port} is not a port number (1-{_MAX_PORT})")
    return m.ServicePort(name=port.name, port=port.port, protocol=port.protocol)


def announcement_to_pb(announcement: m.ServiceAnnouncement) -> pb.ServiceAnnouncement:
    return pb.ServiceAnnouncement(
        environment=announcement.environment,
        service_name=announcement.service_name,
        ports=[port_to_pb(p) for p in announcement.ports],
        allowed_callers=list(announcement.allowed_callers),
        source_cluster=announcement.source_cluster,
        qualified_dns_name=announcement.qualified_dns_name,
        gateway_endpoint=announcement.gateway_endpoint,
        deleted=announcement.deleted,
        version=announcement.version,
    )


def announcement_from_pb(
    announcement: pb.ServiceAnnouncement, path: str = "service_announcement"
) -> m.ServiceAnnouncement:
    _required(announcement.environment, f"{path}.environment")
    _required(announcement.service_name, f"{path}.service_name")
    return m.ServiceAnnouncement(
        environment=announcement.environment,
        service_name=announcement.service_name,
        ports=tuple(port_from_pb(p, f"{path}.ports[{i}]") for i, p in enumerate(announcement.ports)),
        allowed_callers=tuple(announcement.allowed_callers),
        source_cluster=announcement.source_cluster,
        qualified_dns_name=announcement.qualified_dns_name,
        gateway_endpoint=announcement.gateway_endpoint,
        deleted=announcement.deleted,
        version=announcement.version,
    )


def sync_to_pb(sync: m.ServiceCatalogSync) -> pb.ServiceCatalogSync:
    return pb.ServiceCatalogSync(
        services=[announcement_to_pb(a) for a in sync.services],
        full_sync=sync.full_sync,
        cluster_name=sync.cluster_name,
    )


def sync_from_pb(sync: pb.ServiceCatalogSync) -> m.ServiceCatalogSync:
    return m.ServiceCatalogSync(
        services=tuple(
            announcement_from_pb(a, f"catalog_sync.services[{i}]") for i, a in enumerate(sync.services)
        ),
        full_sync=sync.full_sync,
        cluster_name=sync.cluster_name,
    )


def query_to_pb(query: m.ServiceQuery) -> pb.ServiceQuery:
    return pb.ServiceQuery(
        query_id=query.query_id,
        environment=query.environment,
        service_name=query.service_name,
        requesting_service=query.requesting_service,
    )


def query_from_pb(query: pb.ServiceQuery) -> m.ServiceQuery:
    _required(query.query_id, "service_query.query_id")
    _required(query.environment, "service_query.environment")
    _required(query.service_name, "service_query.service_name")
    return m.ServiceQuery(
        query_id=query.query_id,
        environment=query.environment,
        service_name=query.service_name,
        requesting_service=query.requesting_service,
    )


def response_to_pb(response: m.ServiceQueryResponse) -> pb.ServiceQueryResponse:
    out = pb.ServiceQueryResponse(
        query_id=response.query_id,
        found=response.found,
        bilateral_agreement=response.bilateral_agreement,
        error_message=response.error_message,
    )
    if response.service is not None:
        out.service.CopyFrom(announcement_to_pb(response.service))
    return out


def response_from_pb(response: pb.ServiceQueryResponse) -> m.ServiceQueryResponse:
    path = "service_query_response"
    _required(response.query_id, f"{path}.query_id")
    service = (
        announcement_from_pb(response.service, f"{path}.service") if response.HasField("service") else None
    )
    if response.found and service is None:
        raise DiscoveryWireError(f"{path}.service", "missing although found=true")
    return m.ServiceQueryResponse(
        query_id=response.query_id,
        found=response.found,
        service=service,
        bilateral_agreement=response.bilateral_agreement,
        error_message=response.error_message,
    )


def update_to_pb(update: m.RemoteServiceUpdate) -> pb.RemoteServiceUpdate:
    return pb.RemoteServiceUpdate(
        services=[announcement_to_pb(a) for a in update.services], full_sync=update.full_sync
    )


def update_from_pb(update: pb.RemoteServiceUpdate) -> m.RemoteServiceUpdate:
    return m.RemoteServiceUpdate(
        services=tuple(
            announcement_from_pb(a, f"remote_service_update.services[{i}]")
            for i, a in enumerate(update.services)
        ),
        full_sync=update.full_sync,
    )


# --- envelopes -------------------------------------------------------------------------------


def agent_message_to_pb(cluster_name: str, message: m.AgentDiscoveryMessage) -> pb.AgentMessage:
    if isinstance(message, m.ServiceAnnouncement):
        return pb.AgentMessage(cluster_name=cluster_name, service_announcement=announcement_to_pb(message))
    if isinstance(message, m.ServiceCatalogSync):
        return pb.AgentMessage(cluster_name=cluster_name, catalog_sync=sync_to_pb(message))
    return pb.AgentMessage(cluster_name=cluster_name, service_query=query_to_pb(message))


def agent_message_from_pb(message: pb.AgentMessage) -> m.AgentDiscoveryMessage | None:
    """The discovery payload of an AgentMessage; ``None`` for other payloads.

    Raises :class:`DiscoveryWireError` for a malformed discovery payload.
    """
    kind = message.WhichOneof("payload")
    if kind == "service_announcement":
        return announcement_from_pb(message.service_announcement)
    if kind == "catalog_sync":
        return sync_from_pb(message.catalog_sync)
    if kind == "service_query":
        return query_from_pb(message.service_query)
    return None


def cell_message_to_pb(message: m.CellDiscoveryMessage) -> pb.CellCommand:
    """Discovery commands carry no ``command_id``: they are not answered."""
    if isinstance(message, m.ServiceQueryResponse):
        return pb.CellCommand(service_query_response=response_to_pb(message))
    return pb.CellCommand(remote_service_update=update_to_pb(message))


def cell_message_from_pb(message: pb.CellCommand) -> m.CellDiscoveryMessage | None:
    """The discovery payload of a CellCommand; ``None`` for other commands.

    Raises :class:`DiscoveryWireError` for a malformed discovery payload.
    """
    kind = message.WhichOneof("command")
    if kind == "service_query_response":
        return response_from_pb(message.service_query_response)
    if kind == "remote_service_update":
        return update_from_pb(message.remote_service_update)
    return None


def _required(value: str, field: str) -> None:
    if not value:
        raise DiscoveryWireError(field, "must not be empty")
