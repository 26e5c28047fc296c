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
* ``max_per_client`` - established connections at once from one peer address.

A connection over a limit is closed at once, counted (:class:`ConnectionGuard`) and logged.
Handshakes in progress are not counted; the handshake timeout and the listen backlog bound them.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
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


class ConnectionGuard:
    """The counters one server's connections share."""

    def __init__(self, limits: ConnectionLimits, name: str) -> None:
        self.limits = limits
        self.name = name
        self.connections = 0
        self.per_client: Counter[str] = Counter()
        self.refused = 0
        self.idle_closed = 0
        self.expired = 0

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

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # the inner protocol always sees the connection, so that its connection_lost (which
        # the transport calls after the drop below) finds it set up
        self._inner.connection_made(transport)
        client = _client(transport)
        refused = self._guard.admit(client)
        if refused is not None:
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
