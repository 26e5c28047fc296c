"""Leader election over a ``coordination.k8s.io/v1`` Lease: the pure decision.

Given the Lease as read (or None), who we are and the time, decide whether to create it, renew
it, take it over (the holder let it expire or released it), or wait. The app layer writes the
decision with optimistic concurrency (resourceVersion), so two candidates never both win.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any

from attrs import frozen

MICRO_TIME = "%Y-%m-%dT%H:%M:%S.%fZ"


@frozen
class Acquire:
    """Write ``spec`` (create if the Lease is missing, else replace): we are, or become, leader."""

    spec: dict[str, Any]
    create: bool
    takeover: bool


@frozen
class Wait:
    holder: str
    expires: dt.datetime


def micro_time(moment: dt.datetime) -> str:
    return moment.astimezone(dt.UTC).strftime(MICRO_TIME)


def parse_time(value: str | None) -> dt.datetime | None:
    if not value:
        return None
    for fmt in (MICRO_TIME, "%Y-%m-%dT%H:%M:%SZ"):
        try:
            return dt.datetime.strptime(value, fmt).replace(tzinfo=dt.UTC)
        except ValueError:
            continue
    return None


def decide(
    lease_spec: Mapping[str, Any] | None,
    identity: str,
    now: dt.datetime,
    lease_duration_s: int,
) -> Acquire | Wait:
    stamp = micro_time(now)
    if lease_spec is None:
        return Acquire(
            {
                "holderIdentity": identity,
                "leaseDurationSeconds": lease_duration_s,
                "acquireTime": stamp,
                "renewTime": stamp,
                "leaseTransitions": 0,
            },
            create=True,
            takeover=True,
        )
    holder = lease_spec.get("holderIdentity") or ""
    if holder == identity:
        return Acquire(
            {**lease_spec, "renewTime": stamp, "leaseDurationSeconds": lease_duration_s},
            create=False,
            takeover=False,
        )
    duration = int(lease_spec.get("leaseDurationSeconds") or lease_duration_s)
    renewed = parse_time(lease_spec.get("renewTime")) or parse_time(lease_spec.get("acquireTime"))
    if holder and renewed is not None:
        expires = renewed + dt.timedelta(seconds=duration)
        if expires > now:
            return Wait(holder=holder, expires=expires)
    return Acquire(
        {
            "holderIdentity": identity,
            "leaseDurationSeconds": lease_duration_s,
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": int(lease_spec.get("leaseTransitions") or 0) + 1,
        },
        create=False,
        takeover=True,
    )


def released(lease_spec: Mapping[str, Any], now: dt.datetime) -> dict[str, Any]:
    """What a leader writes on graceful shutdown so a standby takes over at once."""
    return {
        **lease_spec,
        "holderIdentity": "",
        "leaseDurationSeconds": 1,
        "renewTime": micro_time(now),
    }
