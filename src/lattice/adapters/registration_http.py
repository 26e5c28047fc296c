"""The registration webhook: ``POST /api/clusters/register`` over HTTPS (starlette + uvicorn).

A new cluster's ``postKubeadmCommands`` call it once, with its bootstrap token and a CSR for
the key it generated; the answer is everything its agent needs (docs/protocol.md,
"Registration webhook"). Status codes:

* 200 - registered; JSON ``{grpcEndpoint, caBundle, certificate, manifests}``, or the bare
  manifests with ``Accept: application/yaml``;
* 400 - malformed body or CSR: ``{"error": "...", "field": "..."}`` (the token is released, so
  the cluster can retry with a corrected request);
* 401 - missing, unknown, mismatched, expired, revoked or already used token;
* 413 - body over 64 KiB; 415 - not JSON; 404/405 - anything else;
* 503 - the token store is unreachable; 500 - an unexpected error (logged; the token is
  released). No exception escapes a request: the server keeps serving.

TLS comes from :func:`lattice.adapters.tls.server_context` (no client certificate: the
bootstrap token authenticates the caller).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import Awaitable, Callable, Generator, Mapping, Sequence
from typing import Any

import uvicorn
from attrs import frozen
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from lattice.adapters.conn_limits import ConnectionGuard, ConnectionLimits, TlsGate
from lattice.domain import agent_payload, registration, tokens
from lattice.domain.errors import FieldError
from lattice.ports.registration import (
    AgentCertificateSigner,
    CsrRefused,
    TokenStore,
    TokenStoreUnavailable,
)

log = logging.getLogger(__name__)

YAML_MEDIA_TYPE = "application/yaml"


@frozen
class PayloadSettings:
    """What the webhook tells a registering cluster about its agent."""

    grpc_endpoint: str
    image: str
    tls_server_name: str | None = None
    require_fips: bool = False
    agent_args: Callable[[str], Sequence[str]] | None = None
    """Per-cluster extra agent flags (the cell derives them from the child's LatticeCluster)."""
    addons: Callable[[str], Awaitable[Sequence[Mapping[str, Any]]]] | None = None
    """Per-cluster objects installed with the agent (the cell renders the child's Cilium); a
    failure answers 503 with the reason and leaves the token usable."""


class PayloadUnavailable(Exception):
    """The cell cannot build a registering cluster's payload now; the message says why."""


class BodyTooLarge(Exception):
    pass


def _error(status: int, error: str, field: str) -> JSONResponse:
    return JSONResponse({"error": error, "field": field}, status_code=status)


def _field_error(error: FieldError) -> JSONResponse:
    return _error(400, error.reason, error.field)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refused with :class:`BodyTooLarge` past ``limit`` bytes (declared or sent)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise BodyTooLarge
        except ValueError:
            pass  # h11 refuses malformed lengths before we get here
    body = bytearray()
    async for chunk in request.stream():
        body.extend(chunk)
        if len(body) > limit:
            raise BodyTooLarge
    return bytes(body)


def registration_app(
    *,
    token_store: TokenStore,
    signer: AgentCertificateSigner,
    payload: PayloadSettings,
    max_body_bytes: int = registration.MAX_BODY_BYTES,
) -> Starlette:
    """The ASGI application. Dependencies are explicit; nothing happens at import time."""
    handler = _RegistrationHandler(token_store, signer, payload, max_body_bytes)
    return Starlette(
        routes=[Route(registration.REGISTER_PATH, handler.register, methods=["POST"])],
        exception_handlers={HTTPException: _http_error},
    )


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    if status == 405:
        return _error(405, f"{request.method} is not allowed here; use POST", "<method>")
    if status == 404:
        return _error(404, f"no such endpoint: {request.url.path}", "<path>")
    return _error(status, str(getattr(exc, "detail", "error")), "<request>")


class _RegistrationHandler:
    def __init__(
        self,
        token_store: TokenStore,
        signer: AgentCertificateSigner,
        payload: PayloadSettings,
        max_body_bytes: int,
    ) -> None:
        self._tokens = token_store
        self._signer = signer
        self._payload = payload
        self._max_body = max_body_bytes

    async def register(self, request: Request) -> Response:
        try:
            return await self._register(request)
        except BodyTooLarge:
            return _error(413, f"the body is larger than {self._max_body} bytes", "<body>")
        except TokenStoreUnavailable as exc:
            log.warning("registration: token store unavailable: %s", exc)
            return _error(503, "the token store is unavailable; retry later", "Authorization")
        except Exception:
            log.exception("registration: unexpected error")
            return _error(500, "internal error; retry later", "<server>")

    async def _register(self, request: Request) -> Response:
        body = await read_body(request, self._max_body)
        token = registration.bearer_token(request.headers.get("authorization"))
        if token is None:
            return _error(401, "an Authorization: Bearer <token> header is required", "Authorization")
        content_type = request.headers.get("content-type", "application/json")
        if content_type.split(";")[0].strip().lower() not in {"application/json", ""}:
            return _error(415, "the body must be application/json", "Content-Type")
        try:
            decoded = json.loads(body)
        except RecursionError:
            return _error(400, "the body is not valid JSON: nested too deeply", "<body>")
        except ValueError as exc:  # JSONDecodeError, UnicodeDecodeError, an integer over 4300 digits
            return _error(400, f"the body is not valid JSON: {exc}", "<body>")
        parsed = registration.parse_request(decoded)
        if isinstance(parsed, FieldError):
            return _field_error(parsed)
        leased = await self._tokens.lease(parsed.cluster_name, token)
        if isinstance(leased, tokens.Rejection):
            log.warning("registration refused for cluster %s: %s", parsed.cluster_name, leased.value)
            return _error(
                401,
                "the bootstrap token is unknown, expired, revoked or already used",
                "Authorization",
            )
        return await self._deliver(request, parsed, leased)

    async def _deliver(
        self, request: Request, parsed: registration.RegistrationRequest, held: tokens.Lease
    ) -> Response:
        delivered = False
        try:
            try:
                certificate = self._signer.sign_agent_csr(parsed.csr_pem, parsed.cluster_name)
            except CsrRefused as exc:
                log.warning("registration: CSR of %s refused: %s", parsed.cluster_name, exc)
                return _error(400, exc.reason, exc.field)
            ca_bundle = self._signer.ca_bundle_pem()
            try:
                addons = await self._addons(parsed.cluster_name)
            except PayloadUnavailable as exc:
                log.warning("registration of %s: no payload: %s", parsed.cluster_name, exc)
                return _error(503, f"the cell cannot build this cluster's payload: {exc}", "<payload>")
            agent_objects = agent_payload.agent_manifests(
                agent_payload.AgentPayloadParams(
                    cluster_name=parsed.cluster_name,
                    grpc_endpoint=self._payload.grpc_endpoint,
                    image=self._payload.image,
                    certificate_pem=certificate,
                    ca_bundle_pem=ca_bundle,
                    tls_server_name=self._payload.tls_server_name,
                    require_fips=self._payload.require_fips,
                    extra_args=self._extra_args(parsed.cluster_name),
                )
            )
            manifests = agent_payload.render_yaml_stream([*agent_objects, *addons])
            answer = registration.RegistrationResponse(
                grpc_endpoint=self._payload.grpc_endpoint,
                ca_bundle=ca_bundle,
                certificate=certificate,
                manifests=manifests,
            )
            committed = await self._tokens.commit(held)
            if committed is not tokens.CommitResult.COMMITTED:
                return _error(401, "the bootstrap token was used concurrently", "Authorization")
            delivered = True
            log.info("registered cluster %s; issued its agent certificate", parsed.cluster_name)
            if registration.wants_yaml(request.headers.get("accept")):
                return PlainTextResponse(manifests, media_type=YAML_MEDIA_TYPE)
            return JSONResponse(answer.to_json())
        finally:
            if not delivered:
                await self._release_quietly(held)

    def _extra_args(self, cluster_name: str) -> tuple[str, ...]:
        """The cell's per-cluster agent flags; a failing hook costs the flags, not the registration."""
        if self._payload.agent_args is None:
            return ()
        try:
            return tuple(self._payload.agent_args(cluster_name))
        except Exception:
            log.exception("registration: no extra agent flags for %s", cluster_name)
            return ()

    async def _addons(self, cluster_name: str) -> Sequence[Mapping[str, Any]]:
        if self._payload.addons is None:
            return ()
        try:
            return await self._payload.addons(cluster_name)
        except PayloadUnavailable:
            raise
        except Exception as exc:
            log.exception("registration: the add-ons of %s failed", cluster_name)
            raise PayloadUnavailable(str(exc) or type(exc).__name__) from exc

    async def _release_quietly(self, held: tokens.Lease) -> None:
        try:
            await self._tokens.release(held)
        except Exception:
            log.exception("registration: could not release the token lease of %s", held.cluster_name)


WEBHOOK_LIMITS = ConnectionLimits(
    handshake_timeout=10.0,
    first_data_timeout=10.0,
    max_lifetime=30.0,
    max_connections=1000,
    max_per_client=64,
    max_handshakes=256,
    handshake_rate_per_client=10.0,
    handshake_burst_per_client=40,
)
"""A registration is one short request: a connection lives at most 30 s (slowloris), and one
address opens at most 10 a second after a burst of 40 (each a TLS handshake)."""


class _GuardedUvicorn(uvicorn.Server):
    """uvicorn with :class:`~lattice.adapters.conn_limits.ConnectionLimits`: its ``startup``
    creates the asyncio server itself, plain TCP with a
    :class:`~lattice.adapters.conn_limits.TlsGate` that does TLS (uvicorn passes no
    ``ssl_handshake_timeout`` and has no connection hook); the rest of uvicorn's lifecycle is
    unchanged."""

    def __init__(self, config: uvicorn.Config, ssl_context: ssl.SSLContext, guard: ConnectionGuard) -> None:
        super().__init__(config)
        self._ssl = ssl_context
        self.guard = guard

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        """Leave SIGTERM and SIGINT to the process: uvicorn's own handlers would stop this
        server on their own and raise the signal again once it has stopped (the operator saw
        each SIGTERM twice); :meth:`RegistrationServer.stop` stops it, in the operator's order."""
        yield

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await self.lifespan.startup()
        config = self.config

        def create_protocol() -> asyncio.Protocol:
            inner: asyncio.Protocol = config.http_protocol_class(  # type: ignore[call-arg]
                config=config, server_state=self.server_state, app_state=self.lifespan.state
            )
            return inner

        loop = asyncio.get_running_loop()
        self.servers = [
            await loop.create_server(
                lambda: TlsGate(create_protocol, self.guard, self._ssl),
                sock=sock,
                backlog=config.backlog,
            )
            for sock in sockets or []
        ]
        self.started = True


class RegistrationServer:
    """Runs :func:`registration_app` under uvicorn on an already-bound socket, with
    :data:`WEBHOOK_LIMITS` (or ``limits``) on its connections."""

    def __init__(
        self,
        app: Starlette,
        ssl_context: ssl.SSLContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        limits: ConnectionLimits = WEBHOOK_LIMITS,
    ) -> None:
        self._sock = socket.create_server((host, port), family=_family(host), reuse_port=False)
        self._sock.setblocking(False)
        self._config = uvicorn.Config(
            app,
            http="h11",
            lifespan="off",
            log_config=None,
            access_log=False,
            server_header=False,
            date_header=False,
            proxy_headers=False,
            timeout_keep_alive=5,
            limit_concurrency=limits.max_connections,
            h11_max_incomplete_event_size=16 * 1024,
        )
        self.guard = ConnectionGuard(limits, "registration webhook")
        self._server = _GuardedUvicorn(self._config, ssl_context, self.guard)
        self._task: asyncio.Task[None] | None = None

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    async def start(self) -> None:
        self._task = asyncio.create_task(self._server.serve(sockets=[self._sock]))
        while not self._server.started:
            if self._task.done():
                await self._task  # surfaces the startup error
                raise RuntimeError("the registration server stopped while starting")
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self._server.should_exit = True
        if self._task is not None:
            await self._task
            self._task = None
        self._sock.close()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET
