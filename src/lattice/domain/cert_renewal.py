"""When an agent renews its client certificate, and whether what came back is acceptable.

Pure: times and the random draw are passed in (docs/protocol.md, "Certificate renewal").

* **When** - at a point drawn uniformly between ``earliest`` and ``latest`` of the
  certificate's lifetime (by default 60-80 %: day 18-24 of a 30-day certificate), so a fleet
  that registered together does not renew together, and a failed renewal has a third of the
  lifetime left to retry in.
* **Retry** - after a failure, again after ``retry_fraction`` of the time left (at least
  ``min_retry`` seconds, at most ``max_retry``), so retries get closer as expiry nears.
* **Check** - a certificate the cell returns is installed only if it is for this agent's new
  key, names this cluster, was issued by a CA in the returned bundle, that bundle shares a CA
  with the current one (rotations overlap), and it is valid now and no shorter than the one it
  replaces (:func:`issued_errors`).

Not guaranteed here: parsing certificates (the adapter extracts :class:`IssuedFacts`).
"""

from __future__ import annotations

import datetime as dt

from attrs import field, frozen, validators

from lattice.domain.backoff import _check_rand


@frozen
class RenewalPolicy:
    earliest: float = field(default=0.6, validator=[validators.gt(0), validators.lt(1)])
    latest: float = field(default=0.8, validator=[validators.gt(0), validators.lt(1)])
    retry_fraction: float = field(default=0.1, validator=[validators.gt(0), validators.le(1)])
    min_retry: float = field(default=5.0, validator=validators.gt(0))
    max_retry: float = field(default=3600.0, validator=validators.gt(0))

    def __attrs_post_init__(self) -> None:
        if self.latest < self.earliest:
            raise ValueError("latest must not be before earliest")
        if self.max_retry < self.min_retry:
            raise ValueError("max_retry must not be below min_retry")


def renew_at(
    not_before: dt.datetime, not_after: dt.datetime, rand: float, policy: RenewalPolicy
) -> dt.datetime:
    """The moment to renew a certificate valid from ``not_before`` to ``not_after``."""
    _check_rand(rand)
    lifetime = not_after - not_before
    fraction = policy.earliest + (policy.latest - policy.earliest) * rand
    return not_before + lifetime * fraction


def retry_after(not_after: dt.datetime, now: dt.datetime, policy: RenewalPolicy) -> float:
    """Seconds to wait before trying again after a failed renewal."""
    left = (not_after - now).total_seconds()
    return min(policy.max_retry, max(policy.min_retry, left * policy.retry_fraction))


@frozen
class IssuedFacts:
    """What the agent extracted from a certificate the cell returned."""

    common_names: tuple[str, ...]
    spiffe_ids: tuple[str, ...]
    matches_new_key: bool
    issued_by_bundle: bool
    bundle_overlaps: bool
    """The returned CA bundle holds at least one CA of the current one (a rotation overlaps)."""
    not_before: dt.datetime
    not_after: dt.datetime


def issued_errors(
    facts: IssuedFacts, cluster_name: str, spiffe_id: str, now: dt.datetime, current_not_after: dt.datetime
) -> list[str]:
    """Every reason not to install the returned certificate (empty: install it)."""
    errors: list[str] = []
    if not facts.matches_new_key:
        errors.append("the certificate is not for the key this agent generated")
    if facts.common_names != (cluster_name,):
        errors.append(f"the certificate names {list(facts.common_names)}, not [{cluster_name!r}]")
    if spiffe_id not in facts.spiffe_ids:
        errors.append(f"the certificate lacks the URI SAN {spiffe_id}")
    if not facts.issued_by_bundle:
        errors.append("the certificate was not issued by a CA in the returned bundle")
    if not facts.bundle_overlaps:
        errors.append(
            "the returned CA bundle shares no CA with the current one (a CA rotation overlaps: "
            "docs/protocol.md); installing it could cut this agent off"
        )
    if not facts.not_before <= now < facts.not_after:
        errors.append(
            f"the certificate is not valid now (valid {facts.not_before.isoformat()} to "
            f"{facts.not_after.isoformat()})"
        )
    elif facts.not_after < current_not_after:
        errors.append(
            f"the certificate expires at {facts.not_after.isoformat()}, before the current one "
            f"({current_not_after.isoformat()})"
        )
    return errors


EXPIRY_WARNING = dt.timedelta(days=7)
"""An agent renews at 60-80 % of its certificate's life (day 18-24 of 30): with a week or less
left, its renewals have been failing for days, which someone should see on the parent."""


@frozen
class CertificateHealth:
    """The ``AgentCertificate`` condition of a child on its parent, from the expiry of the
    certificate its agent last connected with. ``recheck_at``: when it changes by itself."""

    ok: bool
    reason: str
    message: str
    recheck_at: dt.datetime | None


def certificate_health(not_after: dt.datetime, now: dt.datetime) -> CertificateHealth:
    expires = not_after.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if now >= not_after:
        return CertificateHealth(
            False,
            "Expired",
            f"the agent's client certificate expired at {expires}: the cell refuses it, so the "
            "agent cannot connect until it registers again with a new token (docs/protocol.md)",
            None,
        )
    if now >= not_after - EXPIRY_WARNING:
        return CertificateHealth(
            False,
            "ExpiringSoon",
            f"the agent's client certificate expires at {expires} and has not been renewed "
            "(it renews at 60-80 % of its life): see the agent's log",
            not_after,
        )
    return CertificateHealth(
        True, "Valid", f"the agent's client certificate expires at {expires}", not_after - EXPIRY_WARNING
    )
