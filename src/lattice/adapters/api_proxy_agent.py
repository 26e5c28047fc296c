"""The agent's half of the Kubernetes API proxy: perform a request the cell sent as frames.

:class:`ApiProxyExecutor` receives ``ApiProxyToAgent`` frames from the agent's receive loop
(:meth:`on_frame` never blocks it: each request runs as its own task) and answers with
``ApiProxyFromAgent`` frames through the agent's send function:

* the request goes to this cluster's API server with the agent's own credentials and the
  caller's identity in ``Impersonate-User``/``-Group``/``-Uid``/``-Extra-*`` headers, so the
  cluster's RBAC decides; a path under ``/clusters/`` (a descendant's request) goes instead to
  the cell running in this cluster, with the same impersonation headers and the agent's
  ServiceAccount token (that cell checks the agent may impersonate the caller);
* the response streams back as a head, ``data`` frames of at most ``chunk_bytes`` and an end;
  body bytes are sent only within the window the cell granted (``window_update`` frames), so a
  slow client stops the reading of its own response, never the stream's heartbeats;
* bounded: at most ``max_concurrent`` requests at once (429 beyond), ``head_timeout`` until
  the head, ``request_timeout`` and ``max_response_body`` for what is not a watch; a
  ``cancel`` frame or the end of the stream (:meth:`reset`) stops a request at once, which
  closes its connection to the API server (a watch ends there too).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

import httpx
from attrs import define, field

from lattice.domain import api_proxy
from lattice.proto.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

Send = Callable[[pb.AgentMessage], Awaitable[None]]
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")


@define
class HttpTarget:
    """Where requests go: a base URL, how to verify it, and the agent's own credentials."""

    base_url: str
    verify: ssl.SSLContext
    token: str | None = None
    token_file: Path | None = None
    """Read for every request (a projected ServiceAccount token is rotated on disk)."""
    client_cert: tuple[str, str] | None = None
    kubeconfig: str | None = None
    """Where the credentials came from: :meth:`refresh` reads them again (a token rotated)."""
    _client: httpx.AsyncClient | None = field(default=None, init=False)

    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            if self.client_cert is not None:
                self.verify.load_cert_chain(*self.client_cert)
            self._client = httpx.AsyncClient(
                base_url=self.base_url.rstrip("/"),
                verify=self.verify,
                follow_redirects=False,
                limits=httpx.Limits(max_connections=None, max_keepalive_connections=8),
                trust_env=False,
            )
        return self._client

    def authorization(self) -> list[tuple[str, str]]:
        token = self.token
        if self.token_file is not None:
            token = self.token_file.read_text().strip()
        return [("Authorization", f"Bearer {token}")] if token else []

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def refresh(self) -> bool:
        """Read the credentials again from where they came (after a 401: the kubeconfig's token
        was rotated); False when there is nowhere to read them from."""
        if self.token_file is not None or not self.kubeconfig:
            return False
        fresh = await HttpTarget.from_kubeconfig(self.kubeconfig)
        await self.close()
        self.base_url, self.verify, self.token = fresh.base_url, fresh.verify, fresh.token
        return True

    @classmethod
    async def from_kubeconfig(cls, kubeconfig: str | None) -> HttpTarget:
        """This cluster's API server as kr8s reads a kubeconfig (or the in-cluster account)."""
        import kr8s.asyncio  # noqa: PLC0415 - only the agent on a cluster needs it

        api = await kr8s.asyncio.Api(kubeconfig=kubeconfig, bypass_factory=True)
        auth = api.auth
        context = await auth.ssl_context()
        in_cluster = kubeconfig is None and auth.token and IN_CLUSTER_TOKEN.exists()
        return cls(
            base_url=str(auth.server),
            verify=context,
            token=auth.token or None,
            token_file=IN_CLUSTER_TOKEN if in_cluster else None,
            kubeconfig=kubeconfig,
        )


@define(eq=False)
class _Running:
    task: asyncio.Task[None] | None
    window: api_proxy.Window
    ceiling: int
    credit: asyncio.Event = field(factory=asyncio.Event)


class ApiProxyExecutor:
    def __init__(
        self,
        cluster_name: str,
        target: HttpTarget,
        *,
        relay: HttpTarget | None = None,
        relay_source: Callable[[], Awaitable[HttpTarget | None]] | None = None,
        limits: api_proxy.ProxyLimits | None = None,
    ) -> None:
        self._cluster = cluster_name
        self._target = target
        self._relay = relay
        self._relay_source = relay_source
        self.limits = limits or api_proxy.ProxyLimits()
        self._running: dict[str, _Running] = {}
        self._ends: set[asyncio.Task[None]] = set()
        self.started = 0
        """Requests performed (a counter)."""
        self.cancelled = 0
        """Requests stopped by a cancel frame or the end of the stream (a counter)."""

    @property
    def target(self) -> HttpTarget:
        """This cluster's API server."""
        return self._target

    @property
    def open_requests(self) -> int:
        return len(self._running)

    def on_frame(self, frame: pb.ApiProxyToAgent, send: Send) -> None:
        kind = frame.WhichOneof("frame")
        request_id = frame.request_id
        running = self._running.get(request_id)
        if kind == "request":
            if not request_id or running is not None:
                log.warning("api proxy: refused a request with an empty or repeated id %r", request_id)
                return
            self._start(request_id, frame.request, send)
        elif running is None:
            return  # already finished: a late window update or cancel
        elif kind == "window_update":
            granted = running.window.grant(frame.window_update, running.ceiling)
            if isinstance(granted, api_proxy.Window):
                running.window = granted
                running.credit.set()
            else:
                log.warning("api proxy: request %s: %s", request_id, granted)
                self._stop(request_id)
                self._later(self._end(send, request_id, f"refused: {granted}", 502))
        elif kind == "cancel":
            log.debug("api proxy: request %s cancelled: %s", request_id, frame.cancel.reason)
            self._stop(request_id)

    def _later(self, sending: Coroutine[Any, Any, None]) -> None:
        """Send a frame from a task, kept until it is done (the receive loop never waits)."""
        task = asyncio.create_task(sending)
        self._ends.add(task)
        task.add_done_callback(self._ends.discard)
        task.add_done_callback(_log_failure)

    def reset(self) -> None:
        """The stream ended: stop every request (the cell forgot them too)."""
        for request_id in list(self._running):
            self._stop(request_id)

    async def close(self) -> None:
        tasks = [r.task for r in self._running.values() if r.task is not None]
        self.reset()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._target.close()
        if self._relay is not None:
            await self._relay.close()

    def _stop(self, request_id: str) -> None:
        running = self._running.pop(request_id, None)
        if running is not None and running.task is not None:
            self.cancelled += 1
            running.task.cancel()

    def _start(self, request_id: str, request: pb.ApiProxyRequest, send: Send) -> None:
        if len(self._running) >= self.limits.max_concurrent:
            message = f"more than {self.limits.max_concurrent} proxied requests at once on this agent"
            self._later(self._end(send, request_id, message, 429))
            return
        window = int(request.initial_window) or self.limits.window_bytes
        running = _Running(task=None, window=api_proxy.Window(window), ceiling=window)
        self._running[request_id] = running
        self.started += 1
        running.task = asyncio.create_task(
            self._perform(request_id, request, send, running), name=f"api-proxy-{request_id}"
        )
        running.task.add_done_callback(_log_failure)

    async def _perform(
        self, request_id: str, request: pb.ApiProxyRequest, send: Send, running: _Running
    ) -> None:
        try:
            error, status = await self._exchange(request_id, request, send, running)
        except asyncio.CancelledError:
            return
        except Exception as exc:  # e.g. a header value httpx cannot encode: the cell still hears
            log.warning("api proxy: request %s failed: %r", request_id, exc)
            error, status = f"the agent could not perform the request: {type(exc).__name__}: {exc}", 502
        finally:
            if self._running.get(request_id) is running:
                del self._running[request_id]
        with contextlib.suppress(Exception):
            await self._end(send, request_id, error, status)

    async def _exchange(
        self, request_id: str, request: pb.ApiProxyRequest, send: Send, running: _Running
    ) -> tuple[str, int]:
        """Perform the request and stream the response; the end frame's error and status."""
        limits = self.limits
        streaming = request.streaming
        relay = api_proxy.relays(request.path)
        target = (await self._relay_target()) if relay else self._target
        if target is None:
            return f"cluster {self._cluster} runs no cell to relay {request.path.split('?')[0]} to", 404
        user = api_proxy.UserInfo(
            username=request.user,
            uid=request.uid,
            groups=tuple(request.groups),
            extra=tuple((e.key, tuple(e.values)) for e in request.extra),
        )
        if not user.username:
            return "the request names no user to impersonate", 400
        forwarded = api_proxy.forward_request_headers((h.name, h.value) for h in request.headers)
        if not isinstance(forwarded, list):
            return str(forwarded), 400
        headers = [
            *forwarded,
            ("Accept-Encoding", "identity"),  # the body crosses as it is (no Content-Encoding kept)
            *api_proxy.impersonation_headers(user),
        ]
        timeout = httpx.Timeout(
            connect=limits.head_timeout,
            read=None if streaming else limits.request_timeout,
            write=limits.head_timeout,
            pool=limits.head_timeout,
        )
        sent_head = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                if not streaming:
                    await stack.enter_async_context(asyncio.timeout(limits.request_timeout))
                for attempt in (1, 2):
                    async with asyncio.timeout(limits.head_timeout):
                        response = await stack.enter_async_context(
                            target.client().stream(
                                request.method,
                                request.path,
                                headers=[*headers, *target.authorization()],
                                content=bytes(request.body) if request.body else None,
                                timeout=timeout,
                            )
                        )
                    # the agent's own credentials were refused (a rotated token): read them again
                    if response.status_code != 401 or attempt == 2 or not await target.refresh():
                        break
                    log.info("api proxy: the API server refused the agent's credentials; read them again")
                    await response.aclose()
                await send(_frame(self._cluster, request_id, head=_head(response)))
                sent_head = True
                total = 0
                piece = min(limits.chunk_bytes, running.ceiling)
                async for received in _coalesced(response, piece):
                    total += len(received)
                    if not streaming and total > limits.max_response_body:
                        return f"the response is larger than {limits.max_response_body} bytes", 0
                    for chunk in api_proxy.chunks(received, piece):
                        await _wait_for_credit(running, len(chunk))
                        await send(_frame(self._cluster, request_id, data=chunk))
        except TimeoutError:
            return (
                "the API server did not answer in time"
                if not sent_head
                else f"the request took longer than {limits.request_timeout:g} s"
            ), 504
        except httpx.HTTPError as exc:
            where = "the cell in this cluster" if relay else "the API server"
            return f"{where} failed: {type(exc).__name__}: {exc}", 502
        return "", 0

    async def _relay_target(self) -> HttpTarget | None:
        """The cell in this cluster: given, or looked up once (then kept) through ``relay_source``."""
        if self._relay is None and self._relay_source is not None:
            try:
                self._relay = await self._relay_source()
            except Exception as exc:
                log.warning("api proxy: cannot find the cell in this cluster: %s", exc)
        return self._relay

    async def _end(self, send: Send, request_id: str, error: str, status: int) -> None:
        await send(_frame(self._cluster, request_id, end=pb.ApiProxyEnd(error=error[:2048], status=status)))


_READ_AHEAD = 64
"""Pieces read from the API server ahead of the sender (then reading waits: backpressure)."""


async def _coalesced(response: httpx.Response, size: int) -> AsyncIterator[bytes]:
    """The body as it arrives, with what has already arrived joined up to ``size`` bytes: an
    API server writes a list item by item (about 1 KiB each), and one frame per item would cost
    a message, a lock and a client write each; a lone watch event still goes at once."""
    pieces: asyncio.Queue[bytes | BaseException | None] = asyncio.Queue(maxsize=_READ_AHEAD)

    async def read() -> None:
        try:
            async for received in response.aiter_raw():
                await pieces.put(received)
        except Exception as exc:
            await pieces.put(exc)
        else:
            await pieces.put(None)

    reader = asyncio.create_task(read(), name="api-proxy-read")
    try:
        finished = False
        while not finished:
            item = await pieces.get()
            buffer = bytearray()
            while True:
                if item is None:
                    finished = True
                    break
                if isinstance(item, BaseException):
                    raise item
                buffer += item
                if len(buffer) >= size or pieces.empty():
                    break
                item = pieces.get_nowait()
            if buffer:
                yield bytes(buffer)
    finally:
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader


async def _wait_for_credit(running: _Running, count: int) -> None:
    while True:
        spent = running.window.spend(count)
        if spent is not None:
            running.window = spent
            return
        running.credit.clear()
        await running.credit.wait()


def _head(response: httpx.Response) -> pb.ApiProxyResponseHead:
    return pb.ApiProxyResponseHead(
        status=response.status_code,
        headers=[
            pb.ApiProxyHeader(name=n, value=v)
            for n, v in api_proxy.forward_response_headers(response.headers.multi_items())
        ],
    )


def _frame(
    cluster: str,
    request_id: str,
    *,
    head: pb.ApiProxyResponseHead | None = None,
    data: bytes | None = None,
    end: pb.ApiProxyEnd | None = None,
) -> pb.AgentMessage:
    frame = pb.ApiProxyFromAgent(request_id=request_id, head=head, end=end)
    if data is not None:
        frame.data = data
    return pb.AgentMessage(cluster_name=cluster, api_proxy=frame)


def _log_failure(task: asyncio.Task[None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("api proxy: a request failed: %r", task.exception())
