"""The parent cell's side of discovery: what to do with each discovery message from an agent.

:meth:`CatalogService.handle_agent_message` takes one message from one cluster's stream (the
stream's authenticated cluster name, not a name in the message) and returns the messages to send
back - a :class:`ServiceQueryResponse` to the asking cluster, :class:`RemoteServiceUpdate` pushes
to the clusters that depend on what changed. :meth:`CatalogService.on_disconnect` forgets a
cluster. The gRPC wiring only has to call these and deliver :class:`Outgoing` values.

Not guaranteed: delivery. A push to a cluster whose stream is down is the wiring's to drop; the
child re-queries on reconnect, which also re-establishes its watches.
"""

from __future__ import annotations

import logging

from attrs import frozen

from lattice.domain.discovery.catalog import (
    CatalogEvent,
    Ignored,
    IgnoreReason,
    ServiceCatalog,
)
from lattice.domain.discovery.messages import (
    AgentDiscoveryMessage,
    CellDiscoveryMessage,
    ServiceAnnouncement,
    ServiceQuery,
    ServiceQueryResponse,
)
from lattice.ports.clock import Clock

log = logging.getLogger(__name__)


@frozen
class Outgoing:
    cluster: str
    message: CellDiscoveryMessage


class CatalogService:
    def __init__(self, catalog: ServiceCatalog, clock: Clock) -> None:
        self.catalog = catalog
        self._clock = clock

    def handle_agent_message(self, cluster: str, message: AgentDiscoveryMessage) -> list[Outgoing]:
        if isinstance(message, ServiceQuery):
            return [Outgoing(cluster, self.query(cluster, message))]
        now = self._clock.now()
        events: list[CatalogEvent]
        if isinstance(message, ServiceAnnouncement):
            events = [self.catalog.apply_announcement(cluster, message, now)]
        else:
            events = self.catalog.apply_sync(cluster, message, now)
        self._log(cluster, events)
        return [Outgoing(target, update) for target, update in self.catalog.pushes(events)]

    def query(self, cluster: str, query: ServiceQuery) -> ServiceQueryResponse:
        """Answer a query and remember that ``cluster`` depends on the service."""
        self.catalog.watch(cluster, query.environment, query.service_name)
        result = self.catalog.query(query.environment, query.service_name, query.requesting_service)
        if result is None:
            return ServiceQueryResponse(
                query_id=query.query_id,
                found=False,
                error_message=f"service {query.service_name} not found in environment {query.environment}",
            )
        return ServiceQueryResponse(
            query_id=query.query_id,
            found=True,
            service=result.entry.to_announcement(),
            bilateral_agreement=result.bilateral_agreement,
            error_message=""
            if result.bilateral_agreement
            else (f"{query.service_name} does not allow {query.requesting_service}"),
        )

    def on_disconnect(self, cluster: str) -> list[CatalogEvent]:
        """The cluster's stream ended: drop its services and watches (no pushes)."""
        events = self.catalog.remove_cluster(cluster)
        log.info("cluster %s disconnected: removed %d services from the catalog", cluster, len(events))
        return events

    def refresh(self, cluster: str) -> Outgoing | None:
        """The periodic push of everything ``cluster`` depends on (None if nothing)."""
        update = self.catalog.refresh_for(cluster)
        return Outgoing(cluster, update) if update.services else None

    def _log(self, cluster: str, events: list[CatalogEvent]) -> None:
        for event in events:
            if isinstance(event, Ignored) and event.reason is not IgnoreReason.STALE_VERSION:
                log.warning(
                    "ignored announcement of %s/%s from %s: %s",
                    event.key[0],
                    event.key[1],
                    cluster,
                    event.reason,
                )
