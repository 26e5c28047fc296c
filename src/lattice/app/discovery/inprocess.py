"""A ParentChannel to a CatalogService in the same process.

A root cell has no parent: its own services go into its own catalog, and its own Unknown
dependencies are answered by that catalog. :class:`InProcessParent` is the channel its
coordinator uses for that - and, with several clusters attached to one
:class:`CatalogService`, an in-memory cell for end-to-end tests of the discovery logic.

Pushes the service produces for attached clusters are delivered synchronously to the
``on_update`` callback each cluster registered; pushes for clusters not attached are dropped.
"""

from __future__ import annotations

from collections.abc import Callable

from lattice.app.discovery.catalog_service import CatalogService, Outgoing
from lattice.domain.discovery.messages import (
    RemoteServiceUpdate,
    ServiceAnnouncement,
    ServiceCatalogSync,
    ServiceQuery,
    ServiceQueryResponse,
)
from lattice.ports.discovery import ParentUnavailable


class InProcessHub:
    def __init__(self, service: CatalogService) -> None:
        self.service = service
        self._subscribers: dict[str, Callable[[RemoteServiceUpdate], object]] = {}

    def attach(self, cluster: str, on_update: Callable[[RemoteServiceUpdate], object]) -> InProcessParent:
        self._subscribers[cluster] = on_update
        return InProcessParent(self, cluster)

    def detach(self, cluster: str) -> None:
        """The cluster's 'stream' ended: the catalog forgets it."""
        self._subscribers.pop(cluster, None)
        self.service.on_disconnect(cluster)

    def is_attached(self, cluster: str) -> bool:
        return cluster in self._subscribers

    def deliver(self, outgoing: list[Outgoing]) -> ServiceQueryResponse | None:
        response = None
        for item in outgoing:
            if isinstance(item.message, ServiceQueryResponse):
                response = item.message
            elif item.cluster in self._subscribers:
                self._subscribers[item.cluster](item.message)
        return response


class InProcessParent:
    """Implements :class:`lattice.ports.discovery.ParentChannel`."""

    def __init__(self, hub: InProcessHub, cluster: str) -> None:
        self._hub = hub
        self.cluster = cluster

    def _check(self) -> None:
        if not self._hub.is_attached(self.cluster):
            raise ParentUnavailable(f"{self.cluster} is not attached")

    async def query(self, query: ServiceQuery) -> ServiceQueryResponse:
        self._check()
        response = self._hub.deliver(self._hub.service.handle_agent_message(self.cluster, query))
        assert response is not None  # a query always gets exactly one response
        return response

    async def announce(self, announcement: ServiceAnnouncement) -> None:
        self._check()
        self._hub.deliver(self._hub.service.handle_agent_message(self.cluster, announcement))

    async def sync(self, sync: ServiceCatalogSync) -> None:
        self._check()
        self._hub.deliver(self._hub.service.handle_agent_message(self.cluster, sync))
