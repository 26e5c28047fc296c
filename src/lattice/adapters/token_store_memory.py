"""In-memory :class:`~lattice.ports.registration.TokenStore`: a process-local token table.

For tests and single-replica cells; tokens do not survive a restart (a later adapter keeps
them in a Kubernetes Secret). Randomness (``entropy``, ``new_lease_id``) and time (``clock``)
are injected; the defaults are :func:`secrets.token_bytes` and the UTC wall clock.
Every method runs without awaiting in between reading and writing the table, so concurrent
requests on one event loop cannot interleave a transition.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable

from lattice.domain import tokens
from lattice.ports.registration import TokenStore

TOKEN_BYTES = 32


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _lease_id() -> str:
    return secrets.token_hex(12)


class InMemoryTokenStore:
    def __init__(
        self,
        *,
        clock: Callable[[], dt.datetime] = _utcnow,
        entropy: Callable[[int], bytes] = secrets.token_bytes,
        new_lease_id: Callable[[], str] = _lease_id,
        lease_ttl: dt.timedelta = tokens.DEFAULT_LEASE_TTL,
    ) -> None:
        self._table = tokens.TokenTable()
        self._clock = clock
        self._entropy = entropy
        self._new_lease_id = new_lease_id
        self._lease_ttl = lease_ttl

    @property
    def table(self) -> tokens.TokenTable:
        return self._table

    async def issue(self, cluster_name: str, ttl: dt.timedelta = tokens.DEFAULT_TOKEN_TTL) -> str:
        now = self._clock()
        table = tokens.prune(self._table, now)
        self._table, issued = tokens.issue(
            table, cluster_name, self._entropy(TOKEN_BYTES), now, ttl
        )
        return issued.token

    async def lease(self, cluster_name: str, presented: str) -> tokens.Lease | tokens.Rejection:
        self._table, result = tokens.lease(
            self._table,
            cluster_name,
            presented,
            now=self._clock(),
            lease_id=self._new_lease_id(),
            lease_ttl=self._lease_ttl,
        )
        return result

    async def commit(self, lease: tokens.Lease) -> tokens.CommitResult:
        self._table, result = tokens.commit(self._table, lease)
        return result

    async def release(self, lease: tokens.Lease) -> None:
        self._table = tokens.release(self._table, lease)

    async def revoke(self, cluster_name: str) -> None:
        self._table = tokens.revoke(self._table, cluster_name)


_conforms: type[TokenStore] = InMemoryTokenStore
