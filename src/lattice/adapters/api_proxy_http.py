"""The cell's Kubernetes API proxy endpoint: ``/clusters/<child>/<path>`` over HTTPS.

Each request is, in order:

1. checked: a method the proxy carries (405), a path naming a cluster (400);
2. authenticated: ``Authorization: Bearer <token>`` checked with a TokenReview on the cell's
   API server (401 without a valid token: nothing is forwarded);
3. if it carries ``Impersonate-*`` headers (a child's agent relaying for its own descendant),
   the caller must be allowed to ``impersonate`` that user, its groups, uid and extras (403);
4. authorized: a SubjectAccessReview for the verb of the method on ``latticeclusters/proxy``
   named after the child (403 from the cell);
5. read: the body, at most ``max_request_body`` bytes (413);
6. sent to the child's agent over its stream (503 when it is not connected, 429 over the
   concurrency limit) and answered with the child's own status, headers and streamed body (a
   504 when no head arrives in time). A client that goes away cancels the request on the child.

Errors are ``metav1.Status`` JSON bodies, so kubectl prints their message.
"""

from __future__ import annotations

import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from lattice.adapters.api_proxy_cell import Exchange, ProxyFailed, ProxyRelay
from lattice.adapters.conn_limits import ConnectionLimits
from lattice.adapters.registration_http import BodyTooLarge, RegistrationServer, read_body
from lattice.domain import api_proxy
from lattice.ports.api_proxy import AccessReviewer, ReviewUnavailable
from lattice.proto.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)


PROXY_CONNECTION_LIMITS = ConnectionLimits(
    handshake_timeout=10.0,
    first_data_timeout=10.0,
    max_lifetime=None,
    max_connections=2000,
    max_per_client=256,
)
"""Watches are long-lived: no lifetime limit (the API server's own watch timeout ends them)."""


def proxy_server(
    app: Starlette, ssl_context: ssl.SSLContext, *, host: str = "127.0.0.1", port: int = 0
) -> RegistrationServer:
    """The proxy endpoint under uvicorn (the same guarded server as the registration webhook,
    with :data:`PROXY_CONNECTION_LIMITS`)."""
    server = RegistrationServer(app, ssl_context, host=host, port=port, limits=PROXY_CONNECTION_LIMITS)
    # Accepted sockets inherit TCP_NODELAY from the listening socket (Linux). Without it, the
    # chunks of a streamed response wait for the client's delayed ACK: +40 ms a request.
    server._sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return server


def _status(code: int, message: str) -> Response:
    return Response(
        json.dumps(api_proxy.failure(code, message)),
        status_code=code,
        media_type="application/json",
    )


def api_proxy_app(*, relay: ProxyRelay, reviewer: AccessReviewer) -> Starlette:
    """The ASGI application of the proxy endpoint."""
    handler = _ProxyHandler(relay, reviewer)
    return Starlette(
        routes=[
            Route(
                "/clusters/{rest:path}",
                handler.handle,
                methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
            )
        ],
    )


class _ProxyHandler:
    def __init__(self, relay: ProxyRelay, reviewer: AccessReviewer) -> None:
        self._relay = relay
        self._reviewer = reviewer
        self.limits = relay.limits
        self.refused = 0
        """Requests refused by authentication or authorization (a counter)."""

    async def handle(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except BodyTooLarge:
            return _status(413, f"the request body is larger than {self.limits.max_request_body} bytes")
        except ReviewUnavailable as exc:
            log.warning("api proxy: the cell's API server could not review a request: %s", exc)
            return _status(503, f"the cell cannot check credentials now: {exc}")
        except ProxyFailed as exc:
            return _status(exc.status, exc.message)
        except Exception:
            log.exception("api proxy: unexpected error")
            return _status(500, "internal error in the cell's API proxy")

    async def _handle(self, request: Request) -> Response:
        verb = api_proxy.verb_for(request.method)
        if verb is None:
            return _status(405, f"{request.method} is not proxied; use GET, HEAD, POST, PUT, PATCH or DELETE")
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        target = api_proxy.parse_target(raw_path.decode("latin-1"), request.url.query)
        if not isinstance(target, api_proxy.Target):
            return _status(400, str(target))
        user = await self._authenticate(request)
        if isinstance(user, Response):
            return user
        if "upgrade" in request.headers:
            return _status(
                501,
                "connection upgrades (kubectl exec, attach, port-forward, cp) are not carried by "
                "the Lattice API proxy",
            )
        allowed, reason = await self._reviewer.allowed(
            api_proxy.access_attributes(user, target.cluster, verb)
        )
        if not allowed:
            self.refused += 1
            resource = f"{api_proxy.RESOURCE}/{api_proxy.SUBRESOURCE}"
            return _status(
                403,
                f'user "{user.username}" cannot {verb} resource "{resource}" in API group '
                f'"{api_proxy.API_GROUP}" for cluster {target.cluster} on this cell'
                + (f": {reason}" if reason else ""),
            )
        headers = api_proxy.forward_request_headers(request.headers.items())
        if not isinstance(headers, list):
            return _status(400, str(headers))
        body = await read_body(request, self.limits.max_request_body)
        exchange = await self._relay.open(
            target.cluster,
            pb.ApiProxyRequest(
                method=request.method,
                path=target.path,
                headers=[pb.ApiProxyHeader(name=n, value=v) for n, v in headers],
                body=body,
                user=user.username,
                groups=list(user.groups),
                uid=user.uid,
                extra=[pb.ApiProxyExtra(key=k, values=list(v)) for k, v in user.extra],
                streaming=api_proxy.is_streaming(request.method, target.path),
            ),
        )
        try:
            head = await self._relay.response_head(exchange)
        except BaseException:
            await self._relay.cancel(exchange, "no response head")
            raise
        return StreamingResponse(
            self._body(exchange),
            status_code=head.status,
            headers={h.name: h.value for h in head.headers},
        )

    async def _body(self, exchange: Exchange) -> AsyncIterator[bytes]:
        try:
            async for chunk in self._relay.body(exchange):
                yield chunk
        except ProxyFailed as exc:
            log.info("api proxy: the response of %s was cut short: %s", exchange.cluster, exc.message)
            raise

    async def _authenticate(self, request: Request) -> api_proxy.UserInfo | Response:
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.refused += 1
            return _status(401, "an Authorization: Bearer <token> header is required")
        caller = await self._reviewer.authenticate(token.strip())
        if caller is None:
            self.refused += 1
            return _status(401, "the bearer token is not valid on this cell")
        wanted = api_proxy.requested_impersonation(request.headers.items())
        if wanted is None:
            return caller
        if not isinstance(wanted, api_proxy.UserInfo):
            return _status(400, str(wanted))
        for check in api_proxy.impersonation_checks(wanted):
            allowed, _ = await self._reviewer.allowed(api_proxy.review_spec(caller, check))
            if not allowed:
                self.refused += 1
                return _status(
                    403,
                    f'user "{caller.username}" cannot impersonate {check["resource"]} "{check["name"]}"',
                )
        return wanted
