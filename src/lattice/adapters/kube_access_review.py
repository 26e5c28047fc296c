"""TokenReview and SubjectAccessReview on a real API server (the cell's), for the API proxy.

Reviews are plain POSTs (their ``metadata`` must stay empty, which a generic object client
does not guarantee) with the cell's own credentials, which need ``create`` on
``tokenreviews`` and ``subjectaccessreviews``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import httpx

from lattice.adapters.api_proxy_agent import HttpTarget
from lattice.domain import api_proxy
from lattice.ports.api_proxy import AccessReviewer, ReviewUnavailable

TOKEN_REVIEWS = "/apis/authentication.k8s.io/v1/tokenreviews"  # noqa: S105 - a path, no secret
ACCESS_REVIEWS = "/apis/authorization.k8s.io/v1/subjectaccessreviews"
REVIEW_TIMEOUT_S = 10.0


class KubeAccessReviewer:
    """An :class:`~lattice.ports.api_proxy.AccessReviewer` on one API server."""

    def __init__(self, target: HttpTarget) -> None:
        self._target = target

    async def authenticate(self, token: str) -> api_proxy.UserInfo | None:
        review = await self._create(
            TOKEN_REVIEWS,
            {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview", "spec": {"token": token}},
        )
        return api_proxy.user_from_review(review.get("status") or {})

    async def allowed(self, spec: Mapping[str, Any]) -> tuple[bool, str]:
        review = await self._create(
            ACCESS_REVIEWS,
            {"apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview", "spec": dict(spec)},
        )
        status = review.get("status") or {}
        reason = status.get("reason") or status.get("evaluationError") or ""
        return status.get("allowed") is True, str(reason)

    async def close(self) -> None:
        await self._target.close()

    async def _create(self, path: str, review: dict[str, Any]) -> dict[str, Any]:
        try:
            response = await self._target.client().post(
                path,
                content=json.dumps(review).encode(),
                headers=[("Content-Type", "application/json"), *self._target.authorization()],
                timeout=REVIEW_TIMEOUT_S,
            )
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


_reviewer: type[AccessReviewer] = KubeAccessReviewer
