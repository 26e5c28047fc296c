"""The cell's Kubernetes API proxy endpoint: ``/clusters/<child>/<path>`` over HTTPS.

Each request is, in order:

1. checked: a method the proxy carries (405), a path naming a cluster (400);
2. authenticated: a client certificate verified against the cell cluster's client CA (the
   user its Common Name, the groups its Organizations, as the API server maps them), else
   ``Authorization: Bearer <token>`` checked with a TokenReview on the cell's API server (401
   without either: nothing is forwarded);
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

import asyncio
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from uvicorn.protocols.http.h11_impl import H11Protocol

from lattice.adapters import tls
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


PEER_CERTIFICATE = "lattice_peer_certificate"
"""Where a request's ``scope["state"]`` holds the DER client certificate its connection's TLS
layer verified (absent without one)."""


class _PeerCertificateH11(H11Protocol):
    """uvicorn's HTTP/1.1 protocol that puts the connection's verified client certificate in the
    state of each of its requests (uvicorn has no ASGI TLS extension)."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        if der:
            self.app_state = {**self.app_state, PEER_CERTIFICATE: der}


def proxy_ssl_context(files: tls.TlsFiles, client_ca_pem: str | None) -> ssl.SSLContext:
    """The endpoint's TLS: the cell's server certificate, FIPS-approved parameters, and with
    ``client_ca_pem`` an optional client certificate verified against that CA only (not the
    cell's own CA, which signs agents: an agent's key is no proxy user)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.restrict(ctx)
    for label, path in (("certificate", files.cert), ("key", files.key)):
        if not Path(path).is_file():
            raise tls.TlsConfigError(f"{label} file {path} does not exist")
    ctx.load_cert_chain(certfile=str(files.cert), keyfile=str(files.key))
    if client_ca_pem:
        try:
            ctx.load_verify_locations(cadata=client_ca_pem)
        except ssl.SSLError as exc:
            raise tls.TlsConfigError(f"cannot load the client CA bundle: {exc}") from exc
        ctx.verify_mode = ssl.CERT_OPTIONAL
    else:
        ctx.verify_mode = ssl.CERT_NONE
    ctx.set_alpn_protocols(["http/1.1"])
    return ctx


def read_client_certificate(der: bytes) -> api_proxy.ClientCertificate:
    """The fields :func:`lattice.domain.api_proxy.certificate_user` decides on."""
    cert = x509.load_der_x509_certificate(der)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    organizations = cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)
    key = cert.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        key_type, bits, curve = "rsa", key.key_size, ""
    elif isinstance(key, ec.EllipticCurvePublicKey):
        key_type, bits, curve = "ec", key.key_size, key.curve.name
    else:
        key_type, bits, curve = type(key).__name__.removesuffix("PublicKey").lower() or "unknown", 0, ""
    digest = cert.signature_hash_algorithm
    try:
        usage = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        client_auth = ExtendedKeyUsageOID.CLIENT_AUTH in usage
    except x509.ExtensionNotFound:
        client_auth = True
    return api_proxy.ClientCertificate(
        common_name=str(names[0].value) if names else "",
        organizations=tuple(str(o.value) for o in organizations),
        key_type=key_type,
        key_bits=bits,
        curve=curve,
        signature_hash=digest.name if digest is not None else "",
        client_auth=client_auth,
    )


def certificate_caller(der: bytes) -> api_proxy.UserInfo | str:
    """The user of a client certificate the TLS layer verified, or why it is refused."""
    try:
        return api_proxy.certificate_user(read_client_certificate(der))
    except ValueError as exc:  # OpenSSL accepted what cryptography cannot parse
        return f"the client certificate cannot be read: {exc}"


def proxy_server(
    app: Starlette, ssl_context: ssl.SSLContext, *, host: str = "127.0.0.1", port: int = 0
) -> RegistrationServer:
    """The proxy endpoint under uvicorn (the same guarded server as the registration webhook,
    with :data:`PROXY_CONNECTION_LIMITS`), each request carrying its connection's verified
    client certificate (:data:`PEER_CERTIFICATE`)."""
    server = RegistrationServer(app, ssl_context, host=host, port=port, limits=PROXY_CONNECTION_LIMITS)
    server._config.http = _PeerCertificateH11
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

    async def _caller(self, request: Request) -> api_proxy.UserInfo | Response:
        """The client certificate's user first (as the API server's authenticators are tried),
        else the bearer token's."""
        der = (request.scope.get("state") or {}).get(PEER_CERTIFICATE)
        if der:
            by_certificate = certificate_caller(der)
            if isinstance(by_certificate, str):
                self.refused += 1
                return _status(401, by_certificate)
            return by_certificate
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self.refused += 1
            return _status(
                401,
                "an Authorization: Bearer <token> header or a client certificate of the cell "
                "cluster's client CA is required",
            )
        caller = await self._reviewer.authenticate(token.strip())
        if caller is None:
            self.refused += 1
            return _status(401, "the bearer token is not valid on this cell")
        return caller

    async def _authenticate(self, request: Request) -> api_proxy.UserInfo | Response:
        caller = await self._caller(request)
        if isinstance(caller, Response):
            return caller
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
