"""What the cell's Kubernetes API proxy needs from the cluster it runs in: who a caller is and
what they may do (TokenReview and SubjectAccessReview on the cell's API server)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from lattice.domain.api_proxy import UserInfo


class ReviewUnavailable(Exception):
    """The API server could not answer a review; the message says why (the proxy answers 503)."""


class AccessReviewer(Protocol):
    async def authenticate(self, token: str) -> UserInfo | None:
        """The user a bearer token belongs to; None when the token is not valid."""
        ...

    async def allowed(self, spec: Mapping[str, Any]) -> tuple[bool, str]:
        """Whether a SubjectAccessReview with this spec is allowed, and the authorizer's reason."""
        ...
