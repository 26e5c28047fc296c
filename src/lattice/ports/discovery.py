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


Addressed = tuple[str, messages.CellDiscoveryMessage]
"""A message for the agent of a cluster: ``(cluster, message)``."""


class CellDiscoveryHandler(Protocol):
    """The cell's discovery service, as the agent streams see it (cell side).

    ``cluster`` is always the stream's authenticated cluster name, never a name from the message.
    Implementations must not raise for bad or unexpected input; the stream adapter logs and
    ignores what they raise anyway.
    """

    async def on_message(self, cluster: str, message: messages.AgentDiscoveryMessage) -> list[Addressed]:
        """Handle one message; return what to send to which cluster (dropped if not connected)."""
        ...

    async def on_disconnect(self, cluster: str) -> None:
        """The cluster's stream ended (not a stream superseded by a newer one of the same cluster)."""
        ...


class AgentDiscoveryHandler(Protocol):
    """The agent's discovery service, as the agent's stream sees it (agent side)."""

    async def on_connected(self) -> None:
        """A stream was established (first connect or reconnect). Runs as its own task, so it may
        send and wait for answers; it is cancelled when that stream ends."""
        ...

    def on_disconnected(self) -> None:
        """The stream ended: wake every waiter (they get ParentUnavailable)."""
        ...

    async def on_message(self, message: messages.CellDiscoveryMessage) -> None:
        """A ServiceQueryResponse or RemoteServiceUpdate arrived; must not block for long."""
        ...
