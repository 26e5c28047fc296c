"""In-memory :class:`~lattice.ports.registration.TokenStore`: a process-local token table.

For tests and single-replica cells; tokens do not survive a restart
(:class:`~lattice.adapters.token_store_secret.SecretTokenStore` keeps them in a Kubernetes
Secret). Randomness (``entropy``, ``new_lease_id``) and time (``clock``) are injected; the
defaults are :func:`secrets.token_bytes` and the UTC wall clock.

Every operation is one pure transition of :mod:`lattice.domain.tokens` applied through
:meth:`InMemoryTokenStore._transition`; a subclass that stores the table elsewhere overrides
only that method. Here it runs without awaiting between reading and writing the table, so
concurrent requests on one event loop cannot interleave a transition.
"""

from __future__ import annotations

import datetime as dt
import secrets
from collections.abc import Callable
from typing import TypeVar

from lattice.domain import tokens
from lattice.ports.registration import TokenStore

TOKEN_BYTES = 32

R = TypeVar("R")
Step = Callable[[tokens.TokenTable], tuple[tokens.TokenTable, R]]
"""A transition: the table as last stored → the next table and the caller's answer."""


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
        """The table as last read or written."""
        return self._table

    async def _transition(self, step: Step[R]) -> R:
        self._table, result = step(self._table)
        return result

    async def issue(self, cluster_name: str, ttl: dt.timedelta = tokens.DEFAULT_TOKEN_TTL) -> str:
        now = self._clock()
        random_bytes = self._entropy(TOKEN_BYTES)

        def step(table: tokens.TokenTable) -> tuple[tokens.TokenTable, tokens.IssuedToken]:
            return tokens.issue(tokens.prune(table, now), cluster_name, random_bytes, now, ttl)

        issued = await self._transition(step)
        return issued.token

    async def lease(self, cluster_name: str, presented: str) -> tokens.Lease | tokens.Rejection:
        now, lease_id = self._clock(), self._new_lease_id()

        def step(table: tokens.TokenTable) -> tuple[tokens.TokenTable, tokens.Lease | tokens.Rejection]:
            return tokens.lease(
                table, cluster_name, presented, now=now, lease_id=lease_id, lease_ttl=self._lease_ttl
            )

        return await self._transition(step)

    async def commit(self, lease: tokens.Lease) -> tokens.CommitResult:
        return await self._transition(lambda table: tokens.commit(table, lease))

    async def release(self, lease: tokens.Lease) -> None:
        await self._transition(lambda table: (tokens.release(table, lease), None))

    async def revoke(self, cluster_name: str) -> None:
        await self._transition(lambda table: (tokens.revoke(table, cluster_name), None))


_conforms: type[TokenStore] = InMemoryTokenStore
