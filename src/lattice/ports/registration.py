"""Ports of the registration webhook: where bootstrap tokens live, who signs agent CSRs.

Errors: adapters raise :class:`TokenStoreUnavailable` when their storage cannot be reached
(the webhook answers 503); a refused token is a normal result, never an exception.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Protocol

from lattice.domain import tokens


class TokenStoreUnavailable(RuntimeError):
    """The token storage could not be read or written; the request may be retried."""


class TokenStore(Protocol):
    """Per-cluster bootstrap tokens (see :mod:`lattice.domain.tokens` for the semantics)."""

    async def issue(self, cluster_name: str, ttl: timedelta = tokens.DEFAULT_TOKEN_TTL) -> str:
        """Issue a token for ``cluster_name`` (replacing any previous one); return it once."""
        ...

    async def lease(self, cluster_name: str, presented: str) -> tokens.Lease | tokens.Rejection:
        """Check a presented token and hold it for one delivery."""
        ...

    async def commit(self, lease: tokens.Lease) -> tokens.CommitResult:
        """The delivery succeeded: the token is spent."""
        ...

    async def release(self, lease: tokens.Lease) -> None:
        """The delivery failed on our side: the token may be used again."""
        ...

    async def revoke(self, cluster_name: str) -> None:
        """The cluster's token stops working."""
        ...


class CsrRefused(ValueError):
    """A CSR that must not be signed; ``field``/``reason`` name the problem for the client."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class AgentCertificateSigner(Protocol):
    """The cell CA: signs an agent's CSR into a client certificate bound to its cluster."""

    def ca_bundle_pem(self) -> str: ...

    def sign_agent_csr(self, csr_pem: str, cluster_name: str) -> str:
        """Return the PEM certificate; raise :class:`CsrRefused` for an unacceptable CSR."""
        ...
