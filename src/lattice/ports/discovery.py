"""Ports of cross-cluster service discovery, on the agent side.

:class:`ParentChannel` is how a cluster's discovery coordinator talks to its parent cell over
the agent's outbound stream. Errors are port-level: :class:`ParentUnavailable` (no stream, or it
broke) and :class:`ParentTimeout` (no answer in time). Adapters translate their library's errors
into these two; any other exception is a bug in the adapter.
"""

from __future__ import annotations

from typing import Protocol

from lattice.domain.discovery import messages


class ParentUnavailable(ConnectionError):
    """No stream to the parent, or it broke while waiting."""


class ParentTimeout(TimeoutError):
    """The parent did not answer within the timeout."""


class ParentChannel(Protocol):
    async def query(self, query: messages.ServiceQuery) -> messages.ServiceQueryResponse:
        """Send ``query`` and wait for the response with its id.

        The caller bounds the wait (the coordinator cancels after its query timeout); an adapter
        with its own deadline raises :class:`ParentTimeout`.
        """
        ...

    async def announce(self, announcement: messages.ServiceAnnouncement) -> None:
        """Send one announcement (fire and forget; raises ParentUnavailable without a stream)."""
        ...

    async def sync(self, sync: messages.ServiceCatalogSync) -> None:
        """Send a catalog sync (fire and forget; raises ParentUnavailable without a stream)."""
        ...
