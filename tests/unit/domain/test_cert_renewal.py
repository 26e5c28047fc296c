"""When an agent renews, and which returned certificates it installs."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import cert_renewal
from lattice.domain.cert_renewal import IssuedFacts, RenewalPolicy

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
POLICY = RenewalPolicy()


@given(st.floats(min_value=0.0, max_value=1.0, exclude_max=True), st.integers(min_value=60, max_value=10**8))
def test_renewal_falls_within_60_to_80_percent_of_the_lifetime(rand: float, seconds: int) -> None:
    not_after = T0 + dt.timedelta(seconds=seconds)
    at = cert_renewal.renew_at(T0, not_after, rand, POLICY)
    assert T0 + (not_after - T0) * 0.6 <= at <= T0 + (not_after - T0) * 0.8 + dt.timedelta(microseconds=1)


def test_a_thirty_day_certificate_renews_between_day_18_and_day_24() -> None:
    assert cert_renewal.renew_at(T0, T0 + 30 * DAY, 0.0, POLICY) == T0 + 18 * DAY
    assert cert_renewal.renew_at(T0, T0 + 30 * DAY, 0.5, POLICY) == T0 + 21 * DAY


def test_rand_must_be_a_unit_draw() -> None:
    with pytest.raises(ValueError, match="rand"):
        cert_renewal.renew_at(T0, T0 + DAY, 1.0, POLICY)


def test_retries_get_closer_as_expiry_nears_within_bounds() -> None:
    assert cert_renewal.retry_after(T0 + 30 * DAY, T0, POLICY) == 3600.0
    assert cert_renewal.retry_after(T0 + dt.timedelta(seconds=600), T0, POLICY) == 60.0
    assert cert_renewal.retry_after(T0 + dt.timedelta(seconds=10), T0, POLICY) == 5.0
    assert cert_renewal.retry_after(T0 - DAY, T0, POLICY) == 5.0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"earliest": 0.8, "latest": 0.6}, "latest"),
        ({"min_retry": 10.0, "max_retry": 5.0}, "max_retry"),
        ({"earliest": 0.0}, "earliest"),
        ({"latest": 1.0}, "latest"),
    ],
)
def test_policies_that_make_no_sense_are_refused(kwargs: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        RenewalPolicy(**kwargs)


def _facts(**changes: object) -> IssuedFacts:
    values: dict[str, object] = {
        "common_names": ("c1",),
        "spiffe_ids": ("spiffe://lattice/cluster/c1",),
        "matches_new_key": True,
        "issued_by_bundle": True,
        "bundle_overlaps": True,
        "not_before": T0 - dt.timedelta(minutes=5),
        "not_after": T0 + 30 * DAY,
    }
    values.update(changes)
    return IssuedFacts(**values)  # type: ignore[arg-type]


def _errors(facts: IssuedFacts, current_not_after: dt.datetime = T0 + 10 * DAY) -> list[str]:
    return cert_renewal.issued_errors(facts, "c1", "spiffe://lattice/cluster/c1", T0, current_not_after)


def test_a_good_certificate_is_installed() -> None:
    assert _errors(_facts()) == []
    assert _errors(_facts(), current_not_after=T0 + 30 * DAY) == []  # same second: not worse


def test_every_reason_to_refuse_is_reported_at_once() -> None:
    errors = _errors(
        _facts(
            common_names=("c2",),
            spiffe_ids=(),
            matches_new_key=False,
            issued_by_bundle=False,
            bundle_overlaps=False,
            not_before=T0 + DAY,
        )
    )
    assert errors == [
        "the certificate is not for the key this agent generated",
        "the certificate names ['c2'], not ['c1']",
        "the certificate lacks the URI SAN spiffe://lattice/cluster/c1",
        "the certificate was not issued by a CA in the returned bundle",
        "the returned CA bundle shares no CA with the current one (a CA rotation overlaps: "
        "docs/protocol.md); installing it could cut this agent off",
        "the certificate is not valid now (valid 2026-01-02T00:00:00+00:00 to 2026-01-31T00:00:00+00:00)",
    ]


def test_a_certificate_shorter_than_the_current_one_is_refused() -> None:
    (error,) = _errors(_facts(not_after=T0 + DAY))
    assert error.startswith("the certificate expires at 2026-01-02T00:00:00+00:00, before the current one")


def test_certificate_health_over_the_life_of_a_certificate() -> None:
    not_after = dt.datetime(2027, 1, 31, tzinfo=dt.UTC)
    valid = cert_renewal.certificate_health(not_after, not_after - dt.timedelta(days=20))
    assert (valid.ok, valid.reason, valid.recheck_at) == (True, "Valid", not_after - dt.timedelta(days=7))
    assert "2027-01-31T00:00:00Z" in valid.message
    soon = cert_renewal.certificate_health(not_after, not_after - dt.timedelta(days=2, hours=5))
    assert (soon.ok, soon.reason, soon.recheck_at) == (False, "ExpiringSoon", not_after)
    assert "has not been renewed" in soon.message
    expired = cert_renewal.certificate_health(not_after, not_after)
    assert (expired.ok, expired.reason, expired.recheck_at) == (False, "Expired", None)
    assert "registers again" in expired.message


@given(st.integers(min_value=-40 * 86400, max_value=40 * 86400))
def test_certificate_health_rechecks_no_later_than_its_next_change(offset: int) -> None:
    not_after = dt.datetime(2027, 1, 31, tzinfo=dt.UTC)
    now = not_after + dt.timedelta(seconds=offset)
    health = cert_renewal.certificate_health(not_after, now)
    if health.recheck_at is None:
        assert health.reason == "Expired"
    else:
        assert health.recheck_at > now
        assert cert_renewal.certificate_health(not_after, health.recheck_at).reason != health.reason
