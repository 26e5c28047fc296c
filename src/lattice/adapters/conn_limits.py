"""Connection limits for the cell's two doors: the gRPC hub and the registration webhook.

Both face every child and, behind a load balancer, possibly the internet. The HTTP libraries
(grpclib, uvicorn) bound messages and requests, not connections, so every connection's protocol
is wrapped in :class:`GuardedProtocol`, which enforces :class:`ConnectionLimits`:

* ``handshake_timeout`` - a TLS handshake not finished by then is dropped (passed to asyncio's
  ``create_server(ssl_handshake_timeout=...)``; asyncio's default is 60 s);
* ``first_data_timeout`` - a connection whose handshake finished but that sends nothing (no
  HTTP/2 preface, no request line) within this time is closed;
* ``max_lifetime`` - a connection is closed this long after it was established, whatever it
  is doing (a slow client that trickles bytes to hold a connection: slowloris); ``None`` for
  long-lived streams (the agents' gRPC streams, which heartbeats keep honest);
* ``max_connections`` - established connections at once, overall;
* ``max_per_client`` - established connections at once from one peer address;
* ``max_handshakes`` - TLS handshakes in progress at once, overall (asyncio accepts eagerly,
  so without it a flood of connections that never finish a handshake is bounded only by time);
  a connection over it is closed before any TLS work is done;
* ``handshake_rate_per_client`` / ``handshake_burst_per_client`` - new connections (each a TLS
  handshake) per second from one peer address, a token bucket; ``None`` for no limit.

The server listens on plain TCP and starts TLS itself (``loop.start_tls``) once
:class:`TlsGate` has admitted the connection, so the handshake limits apply before any TLS work
is done. A connection over a limit is closed at once, counted (:class:`ConnectionGuard`) and
logged.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import Counter
from collections.abc import Callable
from typing import cast

from attrs import field, frozen, validators

log = logging.getLogger(__name__)


@frozen
class ConnectionLimits:
    handshake_timeout: float = field(default=10.0, validator=validators.gt(0))
    first_data_timeout: float = field(default=10.0, validator=validators.gt(0))
    max_lifetime: float | None = field(default=None, validator=validators.optional(validators.gt(0)))
    max_connections: int = field(default=16384, validator=validators.ge(1))
    max_per_client: int = field(default=16384, validator=validators.ge(1))
    """Off by default (equal to ``max_connections``): agents usually reach a cell through one
    load balancer or NAT address, so one address may carry every agent."""
    max_handshakes: int = field(default=1024, validator=validators.ge(1))
    handshake_rate_per_client: float | None = field(
        default=None, validator=validators.optional(validators.gt(0))
    )
    handshake_burst_per_client: int = field(default=32, validator=validators.ge(1))


@frozen
class _Bucket:
    tokens: float
    at: float


MAX_TRACKED_CLIENTS = 65536
"""Rate buckets kept at once; the oldest are forgotten first (a full bucket is the default)."""


class ConnectionGuard:
    """The counters one server's connections share."""

    def __init__(
        self, limits: ConnectionLimits, name: str, *, max_tracked: int = MAX_TRACKED_CLIENTS
    ) -> None:
        self.limits = limits
        self.name = name
        self.max_tracked = max_tracked
        self.connections = 0
        self.per_client: Counter[str] = Counter()
        self.refused = 0
        self.idle_closed = 0
        self.expired = 0
        self.rate_limited = 0
        self.handshakes = 0
        self.handshake_failed = 0
        self._buckets: dict[str, _Bucket] = {}

    def take_handshake_token(self, client: str, now: float) -> str | None:
        """Spend one of ``client``'s handshake tokens at ``now``; the reason when it has none."""
        rate = self.limits.handshake_rate_per_client
        if rate is None:
            return None
        burst = float(self.limits.handshake_burst_per_client)
        bucket = self._buckets.pop(client, None)
        tokens = burst if bucket is None else min(burst, bucket.tokens + (now - bucket.at) * rate)
        if tokens < 1.0:
            self._buckets[client] = _Bucket(tokens, now)
            return f"{client} opened more than {rate:g} connections per second (burst {burst:g}; the limit)"
        self._buckets[client] = _Bucket(tokens - 1.0, now)  # re-inserted: the newest last
        if len(self._buckets) > self.max_tracked:
            del self._buckets[next(iter(self._buckets))]
        return None

    def admit(self, client: str) -> str | None:
        """Take a slot for ``client``; the reason when there is none."""
        if self.connections >= self.limits.max_connections:
            return f"{self.limits.max_connections} connections already open (the limit)"
        if self.per_client[client] >= self.limits.max_per_client:
            return f"{client} already has {self.limits.max_per_client} connections open (the limit)"
        self.connections += 1
        self.per_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.connections -= 1
        self.per_client[client] -= 1
        if self.per_client[client] <= 0:
            del self.per_client[client]


def _drop(transport: asyncio.BaseTransport) -> None:
    """Close at once, without a TLS close_notify (asyncio stream servers hand out Transports)."""
    cast(asyncio.Transport, transport).abort()


def _client(transport: asyncio.BaseTransport) -> str:
    peer = transport.get_extra_info("peername")
    if isinstance(peer, tuple) and peer:
        return str(peer[0])
    return "<unknown>"


class GuardedProtocol(asyncio.Protocol):
    """``inner`` (grpclib's or uvicorn's protocol) with the :class:`ConnectionLimits` around it."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._client: str | None = None
        self._idle: asyncio.TimerHandle | None = None
        self._expiry: asyncio.TimerHandle | None = None
        self._refused = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the inner protocol always sees the connection, so that its connection_lost (which
        # the transport calls after the drop below) finds it set up
        self._inner.connection_made(transport)
        client = _client(transport)
        refused = self._guard.admit(client)
        if refused is not None:
            self._refused = True
            self._guard.refused += 1
            log.warning("%s: refused a connection from %s: %s", self._guard.name, client, refused)
            _drop(transport)
            return
        self._client = client
        loop = asyncio.get_running_loop()
        limits = self._guard.limits
        self._idle = loop.call_later(limits.first_data_timeout, self._close_idle, transport)
        if limits.max_lifetime is not None:
            self._expiry = loop.call_later(limits.max_lifetime, self._close_expired, transport)

    def _close_idle(self, transport: asyncio.BaseTransport) -> None:
        self._guard.idle_closed += 1
        log.info(
            "%s: closed a connection from %s that sent nothing for %g s",
            self._guard.name,
            self._client,
            self._guard.limits.first_data_timeout,
        )
        _drop(transport)

    def _close_expired(self, transport: asyncio.BaseTransport) -> None:
        self._guard.expired += 1
        log.info(
            "%s: closed a connection from %s after %g s (the limit)",
            self._guard.name,
            self._client,
            self._guard.limits.max_lifetime,
        )
        _drop(transport)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            # What TLS read with the handshake is replayed after connection_made (_UntilConnected),
            # even when that refused the connection: none of it reaches the protocol.
            return
        if self._idle is not None:
            self._idle.cancel()
            self._idle = None
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        for timer in (self._idle, self._expiry):
            if timer is not None:
                timer.cancel()
        self._idle = self._expiry = None
        if self._client is not None:
            self._guard.release(self._client)
            self._client = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class _UntilConnected(asyncio.Protocol):
    """Holds what TLS delivers before ``connection_made``: ``loop.start_tls`` reads application
    data as soon as the handshake ends, before its caller gets the transport."""

    def __init__(self, inner: asyncio.Protocol) -> None:
        self._inner = inner
        self._early: list[bytes] | None = []
        self._eof = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._inner.connection_made(transport)
        early, self._early = self._early, None
        for data in early or []:
            self._inner.data_received(data)
        if self._eof and self._inner.eof_received() is not True:
            transport.close()

    def data_received(self, data: bytes) -> None:
        if self._early is not None:
            self._early.append(data)
        else:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        if self._early is not None:
            self._eof = True
            return True  # keep the transport open until connection_made has run
        return self._inner.eof_received()

    def connection_lost(self, exc: Exception | None) -> None:
        # start_tls's SSLProtocol reports a failed handshake to its application protocol too;
        # the inner protocol never saw that connection
        if self._early is None:
            self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class TlsGate(asyncio.Protocol):
    """The plain-TCP protocol of a guarded TLS server: admits a connection by the handshake
    rate of its address and the handshakes in progress, does the TLS handshake
    (``loop.start_tls`` within ``handshake_timeout``), then hands the TLS transport to
    ``make_inner()`` wrapped in :class:`GuardedProtocol`."""

    def __init__(
        self,
        make_inner: Callable[[], asyncio.Protocol],
        guard: ConnectionGuard,
        ssl_context: ssl.SSLContext,
    ) -> None:
        self._make_inner = make_inner
        self._guard = guard
        self._ssl = ssl_context
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        tcp = cast(asyncio.Transport, transport)
        tcp.pause_reading()  # the ClientHello waits for start_tls
        client = _client(tcp)
        loop = asyncio.get_running_loop()
        guard = self._guard
        refused = guard.take_handshake_token(client, loop.time())
        if refused is None and guard.handshakes >= guard.limits.max_handshakes:
            refused = f"{guard.limits.max_handshakes} TLS handshakes already in progress (the limit)"
        if refused is not None:
            guard.rate_limited += 1
            log.warning("%s: refused a connection from %s: %s", guard.name, client, refused)
            tcp.abort()
            return
        guard.handshakes += 1
        self._task = loop.create_task(self._handshake(tcp, client))
        self._task.add_done_callback(self._handshake_over)

    def _handshake_over(self, _: asyncio.Task[None]) -> None:
        self._guard.handshakes -= 1

    async def _handshake(self, tcp: asyncio.Transport, client: str) -> None:
        guard = self._guard
        early = _UntilConnected(GuardedProtocol(self._make_inner(), guard))
        try:
            secure = await asyncio.get_running_loop().start_tls(
                tcp, early, self._ssl, server_side=True, ssl_handshake_timeout=guard.limits.handshake_timeout
            )
        except (OSError, TimeoutError) as error:  # ssl.SSLError and ConnectionError are OSErrors
            guard.handshake_failed += 1
            log.debug("%s: no TLS session with %s: %r", guard.name, client, error)
            tcp.abort()
            return
        if secure is None:  # the peer went away as the handshake ended
            tcp.abort()
            return
        early.connection_made(secure)

    def connection_lost(self, exc: Exception | None) -> None:
        # only before start_tls has taken the transport over (it gives it another protocol)
        if self._task is not None and not self._task.done():
            self._task.cancel()
