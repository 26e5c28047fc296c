"""KubeApi over kr8s: raw REST calls through kr8s's authenticated session.

kr8s handles kubeconfig parsing, client certificates and TLS; this adapter uses its
``call_api`` for plain REST so that server-side apply, status subresources, dry-run and
bookmark-enabled watches are exactly what the API server documents. It is the only module that
imports kr8s or httpx for Kubernetes, and it translates their errors into ``lattice.ports.kube``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import re
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import httpx
import kr8s
import kr8s.asyncio
from attrs import frozen

from lattice.domain import addons
from lattice.ports import kube
from lattice.ports.kube import Obj, ResourceRef

if TYPE_CHECKING:  # imported by connect(lean=True) only: aiohttp costs every other process
    from lattice.adapters.kube_http import AiohttpRest

REQUEST_TIMEOUT_S = 30.0
# Requests in flight per API server. httpcore (1.0.9) closes every connection that becomes idle
# while its pool holds more than 20 connections in all (its idle check counts every connection,
# not the idle ones), so with long-lived watches and bursts of applies in one pool nearly every
# request paid a new mutual-TLS handshake on both sides: a third of the operator's CPU in
# benchmarks/reconcile.py. Watches therefore get a session of their own, and requests queue
# below that limit on warm connections. Fewer is cheaper still: httpcore checks every pooled
# connection on each request (16 -> 8 cut the operator's CPU by a quarter; 4 gained nothing).
MAX_IN_FLIGHT = 8

# kr8s checks the server's version on every new client and warns when its minor is outside the
# range kr8s's own CI ran against (0.20.15, the newest release: 1.28 to 1.35). The warning
# names no incompatibility: this adapter uses kr8s only for kubeconfig auth and ``call_api``
# (plain REST on GA endpoints: discovery, CRUD, server-side apply, status, watch), whose
# contracts do not change between minors. The minors listed here are the ones Lattice builds
# and runs its integration and E2E suites against on every CI run (tools/versions.env), which
# is the check that counts; for them, and only them, the warning is silenced, here and nowhere
# else. A Kubernetes bump that is not added here still warns.
TESTED_KUBERNETES_MINORS = ("1.36",)
_UNSUPPORTED_WARNING = (
    r"Kubernetes version v(?:" + "|".join(re.escape(m) for m in TESTED_KUBERNETES_MINORS) + r")\.\d+\S* "
    r"is not supported\. Supported versions for kr8s"
)


def silence_tested_version_warning() -> None:
    """Install the filter (idempotent: ``filterwarnings`` replaces an identical entry)."""
    warnings.filterwarnings("ignore", message=_UNSUPPORTED_WARNING, category=UserWarning)


silence_tested_version_warning()


@frozen
class ResourceInfo:
    plural: str
    namespaced: bool


class Kr8sKube:
    """A :class:`lattice.ports.kube.KubeApi` for one API server."""

    def __init__(
        self,
        api: Any,
        *,
        watch_api: Any = None,
        watch_session: Callable[[], Awaitable[Any]] | None = None,
        max_in_flight: int = MAX_IN_FLIGHT,
        rest: AiohttpRest | None = None,
    ) -> None:
        """``watch_session`` builds the watches' own session when the first watch starts (a
        process that never watches, such as a move or most CLI commands, never pays for its TLS
        context, connection and version check); without it, ``watch_api`` (or ``api``) serves
        the watches. ``rest``: requests go through it instead of kr8s's httpx session (watches
        stay on kr8s); its owner closes it with :meth:`close`."""
        self._api = api
        self._rest = rest
        self._watch_api = api if watch_api is None and watch_session is None else watch_api
        self._watch_session = watch_session
        self._watch_lock = asyncio.Lock()
        self._discovery_locks: dict[str, asyncio.Lock] = {}
        self._resources: dict[tuple[str, str], ResourceInfo] = {}
        self._in_flight = asyncio.Semaphore(max_in_flight)

    @classmethod
    async def connect(cls, kubeconfig: str | None, *, lean: bool = False) -> Kr8sKube:
        """``lean``: requests over aiohttp (:mod:`lattice.adapters.kube_http`, a quarter of the
        CPU per request); the caller must :meth:`close` it before its event loop ends."""
        # Again here: a caller (pytest among them) may have reset the filters since import.
        silence_tested_version_warning()
        try:
            api = await kr8s.asyncio.api(kubeconfig=kubeconfig)
        except (httpx.HTTPError, kr8s.ServerError, OSError) as exc:
            where = kubeconfig or "the in-cluster service account"
            raise kube.Unavailable(f"cannot reach the API server of {where}: {exc}") from exc

        async def watch_session() -> Any:
            # A second, independent session (what kr8s's own factory builds) for watches only.
            return await kr8s.asyncio.Api(kubeconfig=kubeconfig, bypass_factory=True)

        rest = None
        if lean:
            from lattice.adapters.kube_http import AiohttpRest  # noqa: PLC0415 - see TYPE_CHECKING

            rest = AiohttpRest(api.auth, limit=MAX_IN_FLIGHT, timeout_s=REQUEST_TIMEOUT_S)
        return cls(api, watch_session=watch_session, rest=rest)

    async def close(self) -> None:
        """Close the aiohttp session of a ``lean`` client (kr8s's sessions need no closing)."""
        if self._rest is not None:
            await self._rest.close()

    async def _watcher(self) -> Any:
        async with self._watch_lock:
            if self._watch_api is None and self._watch_session is not None:
                self._watch_api = await self._watch_session()
            return self._watch_api

    # ------------------------------------------------------------------ discovery

    async def resource(self, api_version: str, kind: str) -> ResourceInfo:
        key = (api_version, kind)
        if key not in self._resources:
            # Concurrent first uses of a group version (a move lists twenty kinds at once) share
            # one discovery request instead of each making its own.
            async with self._discovery_locks.setdefault(api_version, asyncio.Lock()):
                if key not in self._resources:
                    await self._discover(api_version)
        if key not in self._resources:
            # A CRD may have been installed since the last discovery: look once more.
            await self._discover(api_version)
        try:
            return self._resources[key]
        except KeyError:
            raise kube.NotFound(f"the server does not serve {kind} in {api_version}") from None

    async def _discover(self, api_version: str) -> None:
        base = "/api" if api_version == "v1" else "/apis"
        try:
            body = await self._request("GET", f"{base}/{api_version}")
        except kube.NotFound:
            return
        for resource in body.get("resources", []):
            if "/" in resource["name"]:
                continue
            self._resources[(api_version, resource["kind"])] = ResourceInfo(
                plural=resource["name"], namespaced=bool(resource["namespaced"])
            )

    async def _path(self, api_version: str, kind: str, namespace: str | None, name: str | None = None) -> str:
        info = await self.resource(api_version, kind)
        base = "/api" if api_version == "v1" else "/apis"
        parts = [base, api_version]
        if info.namespaced and namespace:
            parts += ["namespaces", namespace]
        parts.append(info.plural)
        if name is not None:
            parts.append(name)
        return "/".join(parts)

    # ------------------------------------------------------------------ requests

    async def _request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        body: bytes | None = None,
        content_type: str = "application/json",
    ) -> Obj:
        if self._rest is not None:
            async with self._in_flight:
                return await self._rest.request(
                    method, path, params=params, body=body, content_type=content_type
                )
        try:
            base, url = _split(path)
            async with (
                self._in_flight,
                self._api.call_api(
                    method,
                    version="",
                    base=base,
                    url=url,
                    params=params,
                    content=body,
                    headers={"Content-Type": content_type},
                    timeout=REQUEST_TIMEOUT_S,
                ) as response,
            ):
                result: Obj = response.json() if response.content else {}
                return result
        except kr8s.ServerError as exc:
            raise _translate(exc) from exc
        except (httpx.HTTPError, OSError, kr8s.APITimeoutError) as exc:
            raise kube.Unavailable(f"{method} {path}: {exc or type(exc).__name__}") from exc

    async def get(self, ref: ResourceRef) -> Obj:
        path = await self._path(ref.api_version, ref.kind, ref.namespace, ref.name)
        return await self._request("GET", path)

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        *,
        field_selector: str | None = None,
    ) -> kube.ListResult:
        path = await self._path(api_version, kind, namespace)
        params = {"labelSelector": label_selector} if label_selector else {}
        if field_selector:
            params["fieldSelector"] = field_selector
        items: list[Obj] = []
        while True:
            body = await self._request("GET", path, params={**params, "limit": "500"})
            for item in body.get("items", []):
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                items.append(item)
            cont = body.get("metadata", {}).get("continue")
            if not cont:
                break
            params["continue"] = cont
        return kube.ListResult(items, body.get("metadata", {}).get("resourceVersion", ""))

    async def watch(
        self,
        api_version: str,
        kind: str,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[kube.WatchEvent]:
        path = await self._path(api_version, kind, namespace)
        params = {
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": resource_version,
            "timeoutSeconds": str(timeout_seconds),
        }
        if label_selector:
            params["labelSelector"] = label_selector
        base, url = _split(path)
        try:
            watcher = await self._watcher()
            async with watcher.call_api(
                "GET",
                version="",
                base=base,
                url=url,
                params=params,
                stream=True,
                timeout=httpx.Timeout(REQUEST_TIMEOUT_S, read=timeout_seconds + 30),
            ) as response:
                async for line in response.aiter_lines():
                    if not line.strip():
                        continue
                    event = json.loads(line)
                    obj = event.get("object", {})
                    if event.get("type") == "ERROR":
                        if obj.get("code") == 410:
                            raise kube.Gone(obj.get("message", "resourceVersion too old"))
                        raise kube.Unavailable(f"watch error: {obj.get('message', obj)}")
                    yield kube.WatchEvent(event["type"], obj)
        except kr8s.ServerError as exc:
            raise _translate(exc) from exc
        except (httpx.HTTPError, OSError, kr8s.APITimeoutError) as exc:
            raise kube.Unavailable(f"watch {kind}: {exc or type(exc).__name__}") from exc

    async def apply(
        self, obj: Obj, field_manager: str, *, dry_run: bool = False, field_validation: str | None = None
    ) -> Obj:
        """Server-side apply (forcing conflicts). ``field_validation`` is the server's
        ``fieldValidation`` (``Strict`` refuses unknown fields, as ``kubectl apply`` asks); unset,
        the server's default (``Warn``) applies."""
        ref = ResourceRef.of(obj)
        path = await self._path(ref.api_version, ref.kind, ref.namespace, ref.name)
        params = {"fieldManager": field_manager, "force": "true"}
        if dry_run:
            params["dryRun"] = "All"
        if field_validation:
            params["fieldValidation"] = field_validation
        return await self._request(
            "PATCH",
            path,
            params=params,
            body=json.dumps(obj).encode(),
            content_type="application/apply-patch+yaml",
        )

    async def _in_default_namespace(self, obj: Obj) -> Obj:
        """``obj`` with namespace ``default`` if it is namespaced and names none (as kubectl
        places it)."""
        metadata = obj.get("metadata") or {}
        if metadata.get("namespace"):
            return dict(obj)
        if not (await self.resource(obj["apiVersion"], obj["kind"])).namespaced:
            return dict(obj)
        return {**obj, "metadata": {**metadata, "namespace": "default"}}

    async def apply_status(self, obj: Obj, field_manager: str) -> Obj:
        ref = ResourceRef.of(obj)
        path = await self._path(ref.api_version, ref.kind, ref.namespace, ref.name)
        return await self._request(
            "PATCH",
            f"{path}/status",
            params={"fieldManager": field_manager, "force": "true"},
            body=json.dumps(obj).encode(),
            content_type="application/apply-patch+yaml",
        )

    async def create(self, obj: Obj) -> Obj:
        ref = ResourceRef.of(obj)
        path = await self._path(ref.api_version, ref.kind, ref.namespace)
        return await self._request("POST", path, body=json.dumps(obj).encode())

    async def create_subresource(self, ref: ResourceRef, subresource: str, body: Obj) -> Obj:
        """POST to a subresource (``serviceaccounts/<name>/token``, for instance)."""
        path = await self._path(ref.api_version, ref.kind, ref.namespace, ref.name)
        return await self._request("POST", f"{path}/{subresource}", body=json.dumps(body).encode())

    async def replace(self, obj: Obj) -> Obj:
        ref = ResourceRef.of(obj)
        path = await self._path(ref.api_version, ref.kind, ref.namespace, ref.name)
        return await self._request("PUT", path, body=json.dumps(obj).encode())

    async def merge_patch(self, ref: ResourceRef, patch: Obj) -> Obj:
        path = await self._path(ref.api_version, ref.kind, ref.namespace, ref.name)
        return await self._request(
            "PATCH", path, body=json.dumps(patch).encode(), content_type="application/merge-patch+json"
        )

    async def delete(self, ref: ResourceRef, *, grace_period_seconds: int | None = None) -> None:
        path = await self._path(ref.api_version, ref.kind, ref.namespace, ref.name)
        options: dict[str, Any] = {
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "propagationPolicy": "Background",
        }
        if grace_period_seconds is not None:
            options["gracePeriodSeconds"] = grace_period_seconds
        body = json.dumps(options)
        try:
            await self._request("DELETE", path, body=body.encode())
        except kube.NotFound:
            return


@frozen
class Applied:
    """What :func:`apply_blocking` did: the objects the server returned, in order, and one line
    per object it refused (naming the object and carrying the server's message)."""

    objects: tuple[Obj, ...]
    errors: tuple[str, ...]


def apply_blocking(
    kubeconfig: str,
    objects: Sequence[Obj],
    field_manager: str,
    *,
    dry_run: bool = False,
    field_validation: str = "Strict",
    together: bool = False,
) -> Applied:
    """:meth:`Kr8sKube.apply` of each object in order, for synchronous callers (the installer,
    test control planes). It runs on an event loop of its own in a worker thread, so a caller
    that is itself inside a running loop can call it too. Like ``kubectl apply -f``, a refused
    object does not stop the others, and unknown fields are refused (``Strict``). With
    ``together``, objects that do not depend on each other are sent all at once (the 17 CRD
    updates of the Cluster API managers' conversion: median 3.1 s in a row, 2.1 s together, on
    the loaded CI machine); the result keeps their order."""
    return _blocking(
        kubeconfig,
        lambda client: _apply_all(client, objects, field_manager, dry_run, field_validation, together),
    )


CRD_API = "apiextensions.k8s.io/v1"


async def await_established(api: kube.KubeApi, names: Iterable[str], within: float) -> None:
    """Until each named CustomResourceDefinition is Established (the API server serves its
    kind), one GET a CRD and round; the one way to wait for CRDs (the agent's
    ``KubeManifestApplier``, test control planes' ``ControlPlane.wait_established``).

    :raises TimeoutError: after ``within`` seconds, naming the first CRD still pending and its
        conditions (or the API server's last answer about it)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    pending = list(names)
    while pending:
        name = pending[0]
        crd: Obj = {}
        try:
            crd = await api.get(ResourceRef(CRD_API, "CustomResourceDefinition", name))
        except kube.KubeError as exc:
            if loop.time() >= deadline:
                raise TimeoutError(f"CustomResourceDefinition {name}: {exc}") from exc
        if addons.established(crd):
            pending.pop(0)
            continue
        if loop.time() >= deadline:
            raise TimeoutError(
                f"CustomResourceDefinition {name} is not Established after {within:.0f}s: "
                f"{_conditions_text(crd)}"
            )
        await asyncio.sleep(0.1)


# A label no object carries: the probe's list is answered empty, from the watch cache.
_CACHE_PROBE_SELECTOR = "lattice.dev/watch-cache-probe"


async def await_watch_cache(api: Kr8sKube, crd_names: Iterable[str], within: float) -> None:
    """Until the API server serves each named CRD's kind from a watch cache again.

    Any change of a CRD's spec (its conversion webhook, say) makes the API server give the kind
    a new storage at once and end every watch on the old one about a second later; the new
    storage refuses watches (429, ``storage is (re)initializing``) until its cache is built.
    A list at ``resourceVersion=0`` with a selector is answered by that cache only, so it is
    refused in the same way until then (kube-apiserver's ``CacheDelegator.GetList``). All kinds
    are probed at once.

    :raises TimeoutError: after ``within`` seconds, naming a kind still refused."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within

    async def served(name: str) -> None:
        crd = await api.get(ResourceRef(CRD_API, "CustomResourceDefinition", name))
        spec = crd.get("spec") or {}
        storage = next((v["name"] for v in spec.get("versions") or () if v.get("storage")), "")
        plural = (spec.get("names") or {}).get("plural")
        path = f"/apis/{spec.get('group')}/{storage}/{plural}"
        params = {"resourceVersion": "0", "labelSelector": _CACHE_PROBE_SELECTOR}
        while True:
            try:
                await api._request("GET", path, params=params)
            except kube.Unavailable as exc:
                if loop.time() >= deadline:
                    raise TimeoutError(
                        f"{name} is not served from a watch cache after {within:.0f}s: {exc}"
                    ) from exc
            else:
                return
            await asyncio.sleep(0.1)

    await asyncio.gather(*(served(name) for name in crd_names))


async def missing_crds(api: Kr8sKube, names: Sequence[str]) -> list[str]:
    """The named CustomResourceDefinitions the API server does not have, in ``names``'s order."""

    async def missing(name: str) -> bool:
        try:
            await api.get(ResourceRef(CRD_API, "CustomResourceDefinition", name))
        except kube.NotFound:
            return True
        return False

    found = await asyncio.gather(*(missing(name) for name in names))
    return [name for name, gone in zip(names, found, strict=True) if gone]


def missing_crds_blocking(kubeconfig: str, names: Sequence[str]) -> list[str]:
    """:func:`missing_crds` for synchronous callers, as :func:`apply_blocking`."""
    wanted = tuple(names)
    return _blocking(kubeconfig, lambda client: missing_crds(client, wanted))


def wait_watch_cache_blocking(kubeconfig: str, crd_names: Iterable[str], within: float) -> None:
    """:func:`await_watch_cache` for synchronous callers, as :func:`apply_blocking`."""
    wanted = tuple(crd_names)
    _blocking(kubeconfig, lambda client: await_watch_cache(client, wanted, within))


def delete_blocking(kubeconfig: str, refs: Sequence[ResourceRef]) -> None:
    """:meth:`Kr8sKube.delete` of each object (all at once; one already gone is no error), for
    synchronous callers, as :func:`apply_blocking`."""
    wanted = tuple(refs)

    async def delete_all(client: Kr8sKube) -> None:
        await asyncio.gather(*(client.delete(ref) for ref in wanted))

    _blocking(kubeconfig, delete_all)


def wait_established_blocking(kubeconfig: str, names: Iterable[str], within: float) -> None:
    """:func:`await_established` for synchronous callers, as :func:`apply_blocking`."""
    wanted = tuple(names)
    _blocking(kubeconfig, lambda client: await_established(client, wanted, within))


def _conditions_text(crd: Obj) -> str:
    conds = (crd.get("status") or {}).get("conditions") or []
    return "; ".join(f"{c.get('type')}={c.get('status')} {c.get('message', '')}".strip() for c in conds) or (
        "no conditions"
    )


_T = TypeVar("_T")


def _blocking(kubeconfig: str, work: Callable[[Kr8sKube], Awaitable[_T]]) -> _T:
    """``work`` on a client of its own, on an event loop of its own in a worker thread, so that a
    caller inside a running loop can call it too."""
    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="lattice-kube") as pool:
        return pool.submit(asyncio.run, _in_session(kubeconfig, work)).result()


async def _in_session(kubeconfig: str, work: Callable[[Kr8sKube], Awaitable[_T]]) -> _T:
    silence_tested_version_warning()
    try:
        # A session of its own (not kr8s's per-thread cache): it lives as long as this loop.
        api = await kr8s.asyncio.Api(kubeconfig=kubeconfig, bypass_factory=True)
    except (httpx.HTTPError, kr8s.ServerError, OSError) as exc:
        raise kube.Unavailable(f"cannot reach the API server of {kubeconfig}: {exc}") from exc
    try:
        return await work(Kr8sKube(api, watch_api=api))
    finally:
        # kr8s has no close(); its session exists from the version check that connecting made.
        await api._session.aclose()


async def _apply_all(
    client: Kr8sKube,
    objects: Sequence[Obj],
    field_manager: str,
    dry_run: bool,
    field_validation: str,
    together: bool,
) -> Applied:
    async def one(obj: Obj) -> Obj | str:
        try:
            placed = await client._in_default_namespace(obj)
            return await client.apply(
                placed, field_manager, dry_run=dry_run, field_validation=field_validation
            )
        except kube.KubeError as exc:
            return f"{_describe(obj)}: {exc}"
        except KeyError as exc:
            return f"{_describe(obj)}: no {exc.args[0]}"

    if together:
        results = await asyncio.gather(*(one(obj) for obj in objects))
    else:
        results = [await one(obj) for obj in objects]
    return Applied(
        tuple(r for r in results if not isinstance(r, str)), tuple(r for r in results if isinstance(r, str))
    )


def _describe(obj: Obj) -> str:
    metadata = obj.get("metadata") or {}
    where = f" in namespace {metadata['namespace']}" if metadata.get("namespace") else ""
    return f"{obj.get('kind', '<no kind>')} {metadata.get('name', '<no name>')}{where}"


def _split(path: str) -> tuple[str, str]:
    """``/apis/g/v1/x`` → (``/apis``, ``g/v1/x``): kr8s joins base and url with one slash."""
    root, _, rest = path.lstrip("/").partition("/")
    return f"/{root}", rest


def _translate(exc: kr8s.ServerError) -> kube.KubeError:
    response = getattr(exc, "response", None)
    code = response.status_code if response is not None else 0
    status = getattr(exc, "status", None)
    message = (status.get("message") if isinstance(status, dict) else None) or str(exc)
    if code >= 500 and response is not None:
        # 5xx bodies are often plain text (not a metav1.Status): keep what the server said.
        message = response.text.strip()[:2000] or message
    return error_for(code, message)


def error_for(code: int, message: str) -> kube.KubeError:
    """The port's error for an HTTP error status (kr8s's and kube_http's responses alike)."""
    if code == 404:
        return kube.NotFound(message)
    if code == 409:
        return kube.Conflict(message)
    if code == 410:
        return kube.Gone(message)
    if code in (400, 422):
        return kube.Invalid(message)
    if code >= 500 or code == 429:
        return kube.Unavailable(message)
    return kube.KubeError(f"HTTP {code}: {message}")
