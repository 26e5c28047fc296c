"""The cell's half of the Kubernetes API proxy over agent streams: requests in flight.

:class:`ProxyRelay` belongs to the :class:`~lattice.adapters.agent_hub.AgentHub`. :meth:`open`
sends a request to a connected child's agent (``CellCommand.api_proxy``) and returns an
:class:`Exchange`; the hub hands every ``AgentMessage.api_proxy`` frame to :meth:`on_frame`,
which never blocks the stream's receive loop: a response's body bytes are queued, and the agent
may send only as many as the cell granted (the initial window, then a ``window_update`` each
time the client has taken half of it). An agent that sends beyond its credit loses that request
(cancelled), not its stream. When a stream ends, every exchange on it fails (502).

Bounded: at most ``max_concurrent`` exchanges per cluster (the next is refused, 429); the
buffered bytes of one exchange never exceed ``window_bytes``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

from attrs import define, field

from lattice.domain import api_proxy
from lattice.proto.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)


class ProxyFailed(Exception):
    """The request could not be (fully) answered; ``status`` is what the client gets when no
    response head was sent yet."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


@define(eq=False)
class Exchange:
    cluster: str
    request_id: str
    window: int
    head: asyncio.Future[pb.ApiProxyResponseHead]
    queue: asyncio.Queue[bytes | ProxyFailed | None] = field(factory=asyncio.Queue)
    outstanding: int = 0
    """Credit granted to the agent and not used yet."""
    consumed: int = 0
    """Bytes the client took since the last window update."""
    finished: bool = False


def _new_id() -> str:
    return uuid.uuid4().hex


class ProxyRelay:
    def __init__(
        self,
        send: Callable[[str, pb.CellCommand], Awaitable[None]],
        limits: api_proxy.ProxyLimits | None = None,
        new_id: Callable[[], str] = _new_id,
    ) -> None:
        self._send = send
        self.limits = limits or api_proxy.ProxyLimits()
        self._new_id = new_id
        self._open: dict[tuple[str, str], Exchange] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.violations = 0
        """Frames refused for breaking the flow control or the frame order (a counter)."""

    def open_count(self, cluster: str) -> int:
        return sum(1 for key in self._open if key[0] == cluster)

    async def open(self, cluster: str, request: pb.ApiProxyRequest) -> Exchange:
        """Send ``request`` to ``cluster``'s agent. ProxyFailed(429) over the concurrency limit,
        ProxyFailed(503) when the agent is not connected."""
        if self.open_count(cluster) >= self.limits.max_concurrent:
            raise ProxyFailed(
                429,
                f"{self.limits.max_concurrent} requests to cluster {cluster} are already open (the limit)",
            )
        request_id = self._new_id()
        window = self.limits.window_bytes
        exchange = Exchange(
            cluster=cluster,
            request_id=request_id,
            window=window,
            head=asyncio.get_running_loop().create_future(),
            outstanding=window,
        )
        request.initial_window = window
        self._open[(cluster, request_id)] = exchange
        try:
            await self._send(
                cluster, pb.CellCommand(api_proxy=pb.ApiProxyToAgent(request_id=request_id, request=request))
            )
        except asyncio.CancelledError:
            self._forget(exchange)
            raise
        except Exception as exc:
            self._forget(exchange)
            raise ProxyFailed(503, f"the agent of cluster {cluster} is not reachable: {exc}") from exc
        return exchange

    async def response_head(self, exchange: Exchange) -> pb.ApiProxyResponseHead:
        """The status and headers; ProxyFailed when the agent gave up or did not answer in time."""
        try:
            async with asyncio.timeout(self.limits.head_timeout):
                return await asyncio.shield(exchange.head)
        except TimeoutError:
            await self.cancel(exchange, "no response head in time")
            raise ProxyFailed(
                504, f"cluster {exchange.cluster} did not answer within {self.limits.head_timeout:g} s"
            ) from None

    async def body(self, exchange: Exchange) -> AsyncIterator[bytes]:
        """The response body as the agent sends it; raises ProxyFailed if it is cut short. When
        the consumer stops early (the client went away), the agent is told to cancel."""
        try:
            while True:
                item = await exchange.queue.get()
                if item is None:
                    return
                if isinstance(item, ProxyFailed):
                    raise item
                yield item
                exchange.consumed += len(item)
                if exchange.consumed * 2 >= exchange.window and not exchange.finished:
                    grant, exchange.consumed = exchange.consumed, 0
                    exchange.outstanding += grant
                    await self._command(exchange, pb.ApiProxyToAgent(window_update=grant))
        finally:
            if not exchange.finished:
                await self.cancel(exchange, "the client went away")

    async def cancel(self, exchange: Exchange, reason: str) -> None:
        """Forget the exchange and tell the agent to stop it (never raises)."""
        if exchange.finished:
            return
        self._forget(exchange)
        await self._command(exchange, pb.ApiProxyToAgent(cancel=pb.ApiProxyCancel(reason=reason)))

    def on_frame(self, cluster: str, frame: pb.ApiProxyFromAgent) -> None:
        """One frame from ``cluster``'s agent (called by the hub's receive loop; never blocks)."""
        exchange = self._open.get((cluster, frame.request_id))
        if exchange is None:
            return  # cancelled here already; the agent has not seen the cancel yet
        kind = frame.WhichOneof("frame")
        if kind == "head":
            if exchange.head.done():
                self._violation(exchange, "a second response head")
                return
            exchange.head.set_result(frame.head)
        elif kind == "data":
            if not exchange.head.done():
                self._violation(exchange, "body bytes before the response head")
            elif len(frame.data) > exchange.outstanding:
                self._violation(
                    exchange, f"{len(frame.data)} body bytes with only {exchange.outstanding} of credit"
                )
            else:
                exchange.outstanding -= len(frame.data)
                exchange.queue.put_nowait(frame.data)
        elif kind == "end":
            self._forget(exchange)
            if frame.end.error:
                self._fail(exchange, ProxyFailed(frame.end.status or 502, frame.end.error))
            else:
                if not exchange.head.done():
                    exchange.head.set_exception(
                        ProxyFailed(502, "the agent ended the response without a head")
                    )
                exchange.queue.put_nowait(None)

    def on_disconnect(self, cluster: str, reason: str) -> None:
        """``cluster``'s stream ended: every exchange on it fails."""
        for exchange in [e for key, e in self._open.items() if key[0] == cluster]:
            self._forget(exchange)
            self._fail(exchange, ProxyFailed(502, f"the stream of cluster {cluster} ended: {reason}"))

    # --- plumbing ----------------------------------------------------------------------------

    def _violation(self, exchange: Exchange, what: str) -> None:
        self.violations += 1
        log.warning(
            "api proxy: cluster %s sent %s for request %s; cancelled",
            exchange.cluster,
            what,
            exchange.request_id,
        )
        self._forget(exchange)
        self._fail(exchange, ProxyFailed(502, f"the agent broke the proxy protocol: {what}"))
        task = asyncio.get_running_loop().create_task(
            self._command(exchange, pb.ApiProxyToAgent(cancel=pb.ApiProxyCancel(reason=what)))
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _fail(self, exchange: Exchange, error: ProxyFailed) -> None:
        if not exchange.head.done():
            exchange.head.set_exception(error)
            exchange.head.exception()  # retrieved: nobody may be waiting for it
        exchange.queue.put_nowait(error)

    def _forget(self, exchange: Exchange) -> None:
        exchange.finished = True
        self._open.pop((exchange.cluster, exchange.request_id), None)

    async def _command(self, exchange: Exchange, frame: pb.ApiProxyToAgent) -> None:
        frame.request_id = exchange.request_id
        with contextlib.suppress(Exception):
            await self._send(exchange.cluster, pb.CellCommand(api_proxy=frame))
