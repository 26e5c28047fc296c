"""Per-cluster bootstrap tokens for the registration webhook: pure state transitions.

A token is issued for one cluster, made of at least 32 random bytes (passed in, never drawn
here) rendered as URL-safe base64 without padding. Only its SHA-256 digest is kept. A token is
single use, expires (1 h by default) and can be revoked.

Using a token is two steps, so that a delivery that fails half-way can be retried without
burning it:

1. :func:`lease` checks the presented token and marks the record LEASED under a lease id;
2. :func:`commit` marks it CONSUMED once the response is ready, or :func:`release` puts it
   back to ISSUED when the delivery failed on our side (a bad CSR, a signing error).

A lease left behind by a crashed delivery expires after ``lease_ttl``; the token is then usable
again until its own expiry. A second request while a lease is live is refused (``IN_USE``).

Every :func:`lease` call performs exactly one digest comparison, through ``compare`` (by default
:func:`hmac.compare_digest`), whatever the outcome: unknown clusters are compared against a
dummy digest, so the time taken does not reveal whether a cluster has a token.

Not guaranteed here: persistence and concurrency control. The table is an immutable value; a
:class:`~lattice.ports.registration.TokenStore` adapter owns storing it and serialising updates.
Not guaranteed either: that a response the client never received is retryable; once committed,
a token is spent (the operator issues a new one).
"""

from __future__ import annotations

import base64
import enum
import hashlib
import hmac
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta

from attrs import evolve, field, frozen

MIN_TOKEN_BYTES = 32
DEFAULT_TOKEN_TTL = timedelta(hours=1)
DEFAULT_LEASE_TTL = timedelta(minutes=2)

_DUMMY_DIGEST = hashlib.sha256(b"lattice: no token issued for this cluster").hexdigest()

Compare = Callable[[str, str], bool]


class TokenState(enum.Enum):
    ISSUED = "Issued"
    LEASED = "Leased"
    CONSUMED = "Consumed"
    REVOKED = "Revoked"


class Rejection(enum.Enum):
    """Why a presented token was refused. All map to HTTP 401 at the edge."""

    UNKNOWN = "no bootstrap token was issued for this cluster"
    MISMATCH = "the bootstrap token does not match"
    EXPIRED = "the bootstrap token has expired"
    CONSUMED = "the bootstrap token was already used"
    REVOKED = "the bootstrap token was revoked"
    IN_USE = "the bootstrap token is being used by another request"


class CommitResult(enum.Enum):
    COMMITTED = "committed"
    LEASE_LOST = "the lease expired and was taken over, or the token was revoked"


@frozen
class TokenRecord:
    cluster_name: str
    digest: str
    """Hex SHA-256 of the token; the token itself is never stored."""
    issued_at: datetime
    expires_at: datetime
    state: TokenState = TokenState.ISSUED
    lease_id: str | None = None
    lease_expires_at: datetime | None = None

    def lease_live(self, now: datetime) -> bool:
        return (
            self.state is TokenState.LEASED
            and self.lease_expires_at is not None
            and now < self.lease_expires_at
        )


@frozen
class IssuedToken:
    """The plaintext token (hand it to the cluster once) and the record that is kept."""

    token: str = field(repr=False)
    record: TokenRecord


@frozen
class Lease:
    cluster_name: str
    lease_id: str


def _records_converter(value: Mapping[str, TokenRecord]) -> Mapping[str, TokenRecord]:
    return dict(value)


@frozen
class TokenTable:
    """Token records by cluster name. Never mutated: every transition returns a new table."""

    records: Mapping[str, TokenRecord] = field(factory=dict, converter=_records_converter)

    def get(self, cluster_name: str) -> TokenRecord | None:
        return self.records.get(cluster_name)

    def _with(self, record: TokenRecord) -> TokenTable:
        records = dict(self.records)
        records[record.cluster_name] = record
        return TokenTable(records)


def encode_token(random_bytes: bytes) -> str:
    """Render random bytes as a token (URL-safe base64, no padding)."""
    if len(random_bytes) < MIN_TOKEN_BYTES:
        raise ValueError(
            f"a bootstrap token needs at least {MIN_TOKEN_BYTES} random bytes, got {len(random_bytes)}"
        )
    return base64.urlsafe_b64encode(random_bytes).rstrip(b"=").decode("ascii")


def token_digest(token: str) -> str:
    """Hex SHA-256 of a token: the only form in which tokens are stored."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def issue(
    table: TokenTable,
    cluster_name: str,
    random_bytes: bytes,
    now: datetime,
    ttl: timedelta = DEFAULT_TOKEN_TTL,
) -> tuple[TokenTable, IssuedToken]:
    """Issue a new token for ``cluster_name``; any previous token for it stops working."""
    if not cluster_name:
        raise ValueError("a bootstrap token needs a cluster name")
    if ttl <= timedelta(0):
        raise ValueError("a bootstrap token's lifetime must be positive")
    token = encode_token(random_bytes)
    record = TokenRecord(
        cluster_name=cluster_name,
        digest=token_digest(token),
        issued_at=now,
        expires_at=now + ttl,
    )
    return table._with(record), IssuedToken(token=token, record=record)


def lease(
    table: TokenTable,
    cluster_name: str,
    presented: str,
    *,
    now: datetime,
    lease_id: str,
    lease_ttl: timedelta = DEFAULT_LEASE_TTL,
    compare: Compare = hmac.compare_digest,
) -> tuple[TokenTable, Lease | Rejection]:
    """Check ``presented`` for ``cluster_name`` and, if valid, lease the token."""
    record = table.get(cluster_name)
    expected = record.digest if record is not None else _DUMMY_DIGEST
    matches = compare(token_digest(presented), expected)
    if record is None:
        return table, Rejection.UNKNOWN
    if not matches:
        return table, Rejection.MISMATCH
    if record.state is TokenState.REVOKED:
        return table, Rejection.REVOKED
    if record.state is TokenState.CONSUMED:
        return table, Rejection.CONSUMED
    if now >= record.expires_at:
        return table, Rejection.EXPIRED
    if record.lease_live(now):
        return table, Rejection.IN_USE
    leased = evolve(
        record,
        state=TokenState.LEASED,
        lease_id=lease_id,
        lease_expires_at=now + lease_ttl,
    )
    return table._with(leased), Lease(cluster_name=cluster_name, lease_id=lease_id)


def _holds(record: TokenRecord | None, held: Lease) -> bool:
    return record is not None and record.state is TokenState.LEASED and record.lease_id == held.lease_id


def commit(table: TokenTable, held: Lease) -> tuple[TokenTable, CommitResult]:
    """Spend the token: the delivery succeeded."""
    record = table.get(held.cluster_name)
    if record is None or not _holds(record, held):
        return table, CommitResult.LEASE_LOST
    spent = evolve(record, state=TokenState.CONSUMED, lease_id=None, lease_expires_at=None)
    return table._with(spent), CommitResult.COMMITTED


def release(table: TokenTable, held: Lease) -> TokenTable:
    """Give the token back: the delivery failed on our side and may be retried."""
    record = table.get(held.cluster_name)
    if record is None or not _holds(record, held):
        return table
    return table._with(evolve(record, state=TokenState.ISSUED, lease_id=None, lease_expires_at=None))


def revoke(table: TokenTable, cluster_name: str) -> TokenTable:
    """Stop a cluster's token from working (no-op if it has none)."""
    record = table.get(cluster_name)
    if record is None:
        return table
    return table._with(evolve(record, state=TokenState.REVOKED, lease_id=None, lease_expires_at=None))


def prune(table: TokenTable, now: datetime, keep_for: timedelta = timedelta(hours=24)) -> TokenTable:
    """Drop records that expired more than ``keep_for`` ago (they can never succeed again)."""
    kept = {name: record for name, record in table.records.items() if now < record.expires_at + keep_for}
    return TokenTable(kept)
