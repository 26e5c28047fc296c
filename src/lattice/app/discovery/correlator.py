"""Request/response over a message stream: what a gRPC ParentChannel adapter needs.

The agent stream carries ServiceQuery up and ServiceQueryResponse down as independent messages;
:class:`QueryCorrelator` pairs them by ``query_id``. The adapter calls :meth:`query` (which sends
through the ``send`` callable it was given and waits), :meth:`on_response` for each response
that arrives, and :meth:`fail_all` when the stream breaks. Timeouts are the caller's (the
coordinator wraps every query in its own deadline); a cancelled wait leaves nothing behind.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import anyio

from lattice.domain.discovery.messages import ServiceQuery, ServiceQueryResponse
from lattice.ports.discovery import ParentUnavailable


class _Pending:
    __slots__ = ("event", "response")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.response: ServiceQueryResponse | None = None


class QueryCorrelator:
    def __init__(self, send: Callable[[ServiceQuery], Awaitable[None]]) -> None:
        self._send = send
        self._pending: dict[str, _Pending] = {}

    @property
    def pending(self) -> int:
        return len(self._pending)

    async def query(self, query: ServiceQuery) -> ServiceQueryResponse:
        if query.query_id in self._pending:
            raise ValueError(f"query id {query.query_id} is already in flight")
        pending = self._pending[query.query_id] = _Pending()
        try:
            await self._send(query)
            await pending.event.wait()
        finally:
            self._pending.pop(query.query_id, None)
        if pending.response is None:
            raise ParentUnavailable("the stream to the parent ended before the answer arrived")
        return pending.response

    def on_response(self, response: ServiceQueryResponse) -> bool:
        """Deliver a response; False if nobody waits for it (late or unknown id)."""
        pending = self._pending.get(response.query_id)
        if pending is None:
            return False
        pending.response = response
        pending.event.set()
        return True

    def fail_all(self) -> int:
        """The stream broke: every waiter gets ParentUnavailable. Returns how many."""
        waiting = list(self._pending.values())
        for pending in waiting:
            pending.event.set()
        return len(waiting)
