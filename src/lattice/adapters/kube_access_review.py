"""TokenReview and SubjectAccessReview on a real API server (the cell's), for the API proxy.

Reviews are plain POSTs (their ``metadata`` must stay empty, which a generic object client
does not guarantee) with the cell's own credentials, which need ``create`` on
``tokenreviews`` and ``subjectaccessreviews``.

Answers are kept for ``cache_seconds`` (10 s by default; 0 keeps none), as the API server's
own webhook authenticator and authorizer cache theirs: kubectl sends bursts of requests with
one token, and two reviews per request would double each one's latency. A token is kept by
its SHA-256 digest, never in clear; at most ``cache_entries`` answers of each kind.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import httpx

from lattice.adapters.api_proxy_agent import HttpTarget
from lattice.domain import api_proxy
from lattice.ports.api_proxy import AccessReviewer, ReviewUnavailable

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 - a path, no secret
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
REVIEW_TIMEOUT_S = 10.0

_T = TypeVar("_T")


class KubeAccessReviewer:
    """An :class:`~lattice.ports.api_proxy.AccessReviewer` on one API server."""

    def __init__(
        self,
        target: HttpTarget,
        *,
        cache_seconds: float = 10.0,
        cache_entries: int = 4096,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._target = target
        self._ttl = cache_seconds
        self._entries = cache_entries
        self._monotonic = monotonic
        self._users: OrderedDict[str, tuple[float, api_proxy.UserInfo | None]] = OrderedDict()
        self._decisions: OrderedDict[str, tuple[float, tuple[bool, str]]] = OrderedDict()
        self.reviews = 0
        """Reviews sent to the API server (a counter)."""

    async def authenticate(self, token: str) -> api_proxy.UserInfo | None:
        key = hashlib.sha256(token.encode()).hexdigest()
        cached = self._cached(self._users, key)
        if cached is not None:
            return cached[1]
        review = await self._create(
            TOKEN_REVIEWS,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
        )
        user = api_proxy.user_from_review(review.get("status") or {})
        self._keep(self._users, key, user)
        return user

    async def allowed(self, spec: Mapping[str, Any]) -> tuple[bool, str]:
        key = json.dumps(spec, sort_keys=True)
        cached = self._cached(self._decisions, key)
        if cached is not None:
            return cached[1]
        review = await self._create(
            ACCESS_REVIEWS,
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": dict(spec)},
        )
        status = review.get("status") or {}
        reason = status.get("reason") or status.get("evaluationError") or ""
        decision = (status.get("allowed") is True, str(reason))
        self._keep(self._decisions, key, decision)
        return decision

    def _cached(self, cache: OrderedDict[str, tuple[float, _T]], key: str) -> tuple[float, _T] | None:
        entry = cache.get(key)
        if entry is None:
            return None
        if self._monotonic() - entry[0] >= self._ttl:
            del cache[key]
            return None
        return entry

    def _keep(self, cache: OrderedDict[str, tuple[float, _T]], key: str, value: _T) -> None:
        if self._ttl <= 0:
            return
        cache[key] = (self._monotonic(), value)
        cache.move_to_end(key)
        while len(cache) > self._entries:
            cache.popitem(last=False)

    async def close(self) -> None:
        await self._target.close()

    async def _create(self, path: str, review: dict[str, Any]) -> dict[str, Any]:
        self.reviews += 1
        try:
            response = await self._post(path, review)
            if response.status_code == 401 and await self._target.refresh():
                response = await self._post(path, review)  # the cell's own token was rotated
        except (httpx.HTTPError, OSError) as exc:
            raise ReviewUnavailable(f"{review['kind']}: {type(exc).__name__}: {exc}") from exc
        if response.status_code >= 300:
            raise ReviewUnavailable(f"{review['kind']}: HTTP {response.status_code}: {response.text[:500]}")
        try:
            answer = response.json()
        except ValueError as exc:
            raise ReviewUnavailable(f"{review['kind']}: the answer is not JSON: {exc}") from exc
        if not isinstance(answer, dict):
            raise ReviewUnavailable(f"{review['kind']}: the answer is not an object")
        return answer

    async def _post(self, path: str, review: dict[str, Any]) -> httpx.Response:
        return await self._target.client().post(
            path,
            content=json.dumps(review).encode(),
            headers=[("Content-Type", "application/json"), *self._target.authorization()],
            timeout=REVIEW_TIMEOUT_S,
        )


_reviewer: type[AccessReviewer] = KubeAccessReviewer
