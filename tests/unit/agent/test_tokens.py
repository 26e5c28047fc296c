"""Bootstrap tokens: single use, expiry, revocation, lease/commit/release, constant-time path."""

from __future__ import annotations

import hmac
import inspect
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattice.domain import tokens

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RANDOM = bytes(range(32))
names = st.from_regex(r"[a-z][a-z0-9-]{0,20}[a-z0-9]", fullmatch=True)
entropy = st.binary(min_size=32, max_size=64)


def issued(name: str = "c1", random_bytes: bytes = RANDOM, ttl: timedelta = tokens.DEFAULT_TOKEN_TTL):
    return tokens.issue(tokens.TokenTable(), name, random_bytes, T0, ttl)


def lease(table, name, token, now=T0, lease_id="L1", **kwargs):
    return tokens.lease(table, name, token, now=now, lease_id=lease_id, **kwargs)


def test_token_is_urlsafe_base64_of_the_random_bytes_and_only_its_digest_is_stored():
    table, token = issued()
    assert len(token.token) == 43  # 32 bytes, unpadded base64
    assert set(token.token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    record = table.get("c1")
    assert record is not None
    assert record.digest == tokens.token_digest(token.token)
    assert token.token not in repr(table)
    assert token.token not in repr(token)


@pytest.mark.parametrize("size", [0, 16, 31])
def test_fewer_than_32_random_bytes_are_refused(size):
    with pytest.raises(ValueError, match="at least 32 random bytes"):
        tokens.encode_token(b"x" * size)


def test_issue_needs_a_name_and_a_positive_lifetime():
    with pytest.raises(ValueError, match="cluster name"):
        tokens.issue(tokens.TokenTable(), "", RANDOM, T0)
    with pytest.raises(ValueError, match="positive"):
        tokens.issue(tokens.TokenTable(), "c1", RANDOM, T0, timedelta(0))


@given(name=names, random_bytes=entropy)
def test_a_token_works_exactly_once(name, random_bytes):
    table, token = issued(name, random_bytes)
    table, held = lease(table, name, token.token)
    assert isinstance(held, tokens.Lease)
    table, result = tokens.commit(table, held)
    assert result is tokens.CommitResult.COMMITTED
    table, again = lease(table, name, token.token, lease_id="L2")
    assert again is tokens.Rejection.CONSUMED
    _, second_commit = tokens.commit(table, held)
    assert second_commit is tokens.CommitResult.LEASE_LOST


@given(name=names, random_bytes=entropy, offset=st.integers(min_value=0, max_value=10_000))
def test_a_token_expires_after_its_lifetime(name, random_bytes, offset):
    ttl = timedelta(hours=1)
    table, token = issued(name, random_bytes, ttl)
    now = T0 + ttl + timedelta(seconds=offset)
    _, result = lease(table, name, token.token, now=now)
    assert result is tokens.Rejection.EXPIRED


@given(name=names, random_bytes=entropy, seconds=st.integers(min_value=0, max_value=3599))
def test_a_token_is_valid_until_it_expires(name, random_bytes, seconds):
    table, token = issued(name, random_bytes, timedelta(hours=1))
    _, result = lease(table, name, token.token, now=T0 + timedelta(seconds=seconds))
    assert isinstance(result, tokens.Lease)


@given(name=names, random_bytes=entropy, other=st.text(min_size=0, max_size=60))
def test_any_other_token_is_refused(name, random_bytes, other):
    table, token = issued(name, random_bytes)
    if other == token.token:
        return
    _, result = lease(table, name, other)
    assert result is tokens.Rejection.MISMATCH


@given(name=names, presented=st.text(max_size=60))
def test_unknown_clusters_are_refused(name, presented):
    _, result = lease(tokens.TokenTable(), name, presented)
    assert result is tokens.Rejection.UNKNOWN


def test_a_token_belongs_to_its_cluster():
    table, token = issued("c1")
    table, _ = tokens.issue(table, "c2", bytes(32), T0)
    _, result = lease(table, "c2", token.token)
    assert result is tokens.Rejection.MISMATCH


@given(
    name=names,
    random_bytes=entropy,
    case=st.sampled_from(["valid", "wrong", "unknown", "expired", "consumed", "revoked", "in-use"]),
)
@settings(max_examples=200)
def test_every_check_goes_through_exactly_one_constant_time_comparison(name, random_bytes, case):
    """Whatever the outcome, one comparison of two SHA-256 hex digests, via the comparator."""
    table, token = issued(name, random_bytes)
    presented = token.token
    target = name
    now = T0
    if case == "wrong":
        presented = token.token[::-1] + "x"
    elif case == "unknown":
        target = name + "-other"
    elif case == "expired":
        now = T0 + timedelta(days=1)
    elif case == "consumed":
        table, held = lease(table, name, token.token)
        table, _ = tokens.commit(table, held)
    elif case == "revoked":
        table = tokens.revoke(table, name)
    elif case == "in-use":
        table, _ = lease(table, name, token.token, lease_id="other")
    calls: list[tuple[str, str]] = []

    def recording_compare(a: str, b: str) -> bool:
        calls.append((a, b))
        return hmac.compare_digest(a, b)

    lease(table, target, presented, now=now, compare=recording_compare)
    assert len(calls) == 1
    presented_digest, expected_digest = calls[0]
    assert presented_digest == tokens.token_digest(presented)
    assert len(presented_digest) == len(expected_digest) == 64


def test_the_default_comparator_is_hmac_compare_digest():
    assert inspect.signature(tokens.lease).parameters["compare"].default is hmac.compare_digest


def test_release_makes_a_failed_delivery_retryable():
    table, token = issued()
    table, held = lease(table, "c1", token.token)
    table = tokens.release(table, held)
    table, again = lease(table, "c1", token.token, lease_id="L2")
    assert isinstance(again, tokens.Lease)


def test_a_live_lease_blocks_a_concurrent_use_and_an_expired_lease_is_taken_over():
    table, token = issued()
    table, first = lease(table, "c1", token.token, lease_ttl=timedelta(minutes=2))
    assert isinstance(first, tokens.Lease)
    _, blocked = lease(table, "c1", token.token, now=T0 + timedelta(minutes=1), lease_id="L2")
    assert blocked is tokens.Rejection.IN_USE
    table, second = lease(table, "c1", token.token, now=T0 + timedelta(minutes=3), lease_id="L2")
    assert isinstance(second, tokens.Lease)
    # the first delivery finishing late can neither commit nor release the taken-over token
    same, result = tokens.commit(table, first)
    assert result is tokens.CommitResult.LEASE_LOST
    assert same is table
    assert tokens.release(table, first) is table
    table, result = tokens.commit(table, second)
    assert result is tokens.CommitResult.COMMITTED


def test_revocation_stops_a_token_and_a_leased_token_cannot_then_be_committed():
    table, token = issued()
    table, held = lease(table, "c1", token.token)
    table = tokens.revoke(table, "c1")
    _, result = tokens.commit(table, held)
    assert result is tokens.CommitResult.LEASE_LOST
    _, again = lease(table, "c1", token.token, lease_id="L2")
    assert again is tokens.Rejection.REVOKED
    assert tokens.revoke(tokens.TokenTable(), "nobody") == tokens.TokenTable()


def test_reissuing_replaces_the_previous_token():
    table, first = issued(random_bytes=bytes(32))
    table, second = tokens.issue(table, "c1", bytes(range(1, 33)), T0)
    _, old = lease(table, "c1", first.token)
    assert old is tokens.Rejection.MISMATCH
    _, new = lease(table, "c1", second.token)
    assert isinstance(new, tokens.Lease)


def test_commit_and_release_of_unknown_leases_change_nothing():
    table, _ = issued()
    ghost = tokens.Lease(cluster_name="nobody", lease_id="x")
    assert tokens.commit(table, ghost) == (table, tokens.CommitResult.LEASE_LOST)
    assert tokens.release(table, ghost) is table
    not_leased = tokens.Lease(cluster_name="c1", lease_id="x")
    assert tokens.release(table, not_leased) is table


def test_prune_drops_long_expired_records_only():
    table, _ = issued("old", ttl=timedelta(hours=1))
    table, _ = tokens.issue(table, "new", RANDOM, T0 + timedelta(days=2))
    pruned = tokens.prune(table, T0 + timedelta(days=2), keep_for=timedelta(hours=24))
    assert set(pruned.records) == {"new"}


def test_tables_are_immutable_values():
    table, token = issued()
    before = dict(table.records)
    lease(table, "c1", token.token)
    assert dict(table.records) == before
