"""Plain REST requests to a Kubernetes API server over aiohttp, authenticated by kr8s.

kr8s keeps doing what it is for: reading the kubeconfig (or the in-cluster service account),
building the TLS context with the client certificate and CA, the bearer token, and reloading
them on 401/403 as its own ``call_api`` does. Only the HTTP client differs, and the TLS context
is restricted to the FIPS-approved algorithms (:func:`lattice.adapters.tls.restrict`). httpx (under kr8s)
cost 2.2 ms of the caller's CPU per server-side apply against a real kube-apiserver, aiohttp
(C-accelerated parser, a simpler pool) 0.5 ms for the same requests on the same TLS context
(docs/operator.md), and the operator makes eleven requests per new cluster on the two cores
it shares with the API server.

A session belongs to one event loop and must be closed (:meth:`AiohttpRest.close`); that is why
only long-running processes that close it (the operator) use this transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from typing import Any

import aiohttp

from lattice.adapters import tls
from lattice.adapters.kube_kr8s import error_for
from lattice.ports import kube
from lattice.ports.kube import Obj

AUTH_RETRIES = 3  # as kr8s's call_api: reload the credentials on 401/403, then give up


class AiohttpRest:
    """Requests (not watches) to the server of ``auth`` (a kr8s ``KubeAuth``)."""

    def __init__(self, auth: Any, *, limit: int, timeout_s: float) -> None:
        self._auth = auth
        self._limit = limit
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._session: aiohttp.ClientSession | None = None
        self._lock = asyncio.Lock()

    async def _open(self, *, renew: bool = False) -> aiohttp.ClientSession:
        async with self._lock:
            if renew and self._session is not None:
                await self._session.close()
                self._session = None
            if self._session is None:
                if renew:
                    await self._auth.reauthenticate()
                headers = {"User-Agent": "lattice", "Accept": "application/json"}
                if self._auth.token:
                    headers["Authorization"] = f"Bearer {self._auth.token}"
                self._session = aiohttp.ClientSession(
                    base_url=self._auth.server,
                    headers=headers,
                    connector=aiohttp.TCPConnector(ssl=await self._tls_context(), limit=self._limit),
                    timeout=self._timeout,
                    raise_for_status=False,
                )
            return self._session

    async def _tls_context(self) -> ssl.SSLContext:
        """kr8s's context (the kubeconfig's CA and client certificate; True: the system's CAs),
        limited to the FIPS-approved versions, suites, groups and signatures (adapters/tls)."""
        context = await self._auth.ssl_context()
        if not isinstance(context, ssl.SSLContext):
            context = ssl.create_default_context()
        tls.restrict(context)
        return context

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None,
        body: bytes | None,
        content_type: str,
    ) -> Obj:
        """The response's object (a kube error for an error status; kube.Unavailable when the
        server cannot be reached)."""
        extra: dict[str, Any] = {}
        if self._auth.tls_server_name:
            extra["server_hostname"] = self._auth.tls_server_name
        if self._auth.proxy:
            extra["proxy"] = self._auth.proxy

        async def send(session: aiohttp.ClientSession) -> tuple[int, bytes]:
            try:
                async with session.request(
                    method,
                    path,
                    params=params,
                    data=body,
                    headers={"Content-Type": content_type},
                    **extra,
                ) as response:
                    return response.status, await response.read()
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise kube.Unavailable(f"{method} {path}: {exc or type(exc).__name__}") from exc

        status, content = await send(await self._open())
        for _ in range(AUTH_RETRIES):
            if status not in (401, 403):
                break
            status, content = await send(await self._open(renew=True))
        return decode(status, content)

    async def close(self) -> None:
        async with self._lock:
            if self._session is not None:
                await self._session.close()
                self._session = None


def decode(status: int, content: bytes) -> Obj:
    """A response's object; a kube error named by ``status`` and the server's message."""
    if status < 400:
        result: Obj = json.loads(content) if content else {}
        return result
    text = content.decode(errors="replace").strip()
    message = text[:2000]
    if status < 500:  # a metav1.Status; 5xx bodies are often plain text: keep what was said
        with contextlib.suppress(ValueError, AttributeError):  # not JSON, or not an object
            message = str(json.loads(text).get("message") or message)
    raise error_for(status, message or f"HTTP {status}")
