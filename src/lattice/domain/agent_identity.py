"""Agent identity: which CSRs a cell signs, and which cluster a client certificate names.

An agent's certificate names its cluster twice: ``CN=<cluster>`` and the URI SAN
``spiffe://lattice/cluster/<cluster>``. A cell trusts a stream only when both agree
(:func:`cluster_from_peer`); the CSR a cluster sends at registration must ask for exactly
``CN=<cluster>`` with a FIPS-approved key (:func:`csr_errors`). The cell, not the requester,
decides the SANs: requested SANs are ignored.

These functions work on facts extracted by an adapter (``CsrFacts``; the ``dict`` returned by
:meth:`ssl.SSLSocket.getpeercert`), never on raw bytes.

Not guaranteed: chain validation. The TLS layer verifies the certificate against the cell CA
before any of this runs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

from attrs import frozen

from lattice.domain.errors import FieldError

SPIFFE_PREFIX = "spiffe://lattice/cluster/"

APPROVED_CURVES: Mapping[str, int] = {"secp256r1": 256, "secp384r1": 384}
MIN_RSA_BITS = 2048
APPROVED_SIGNATURE_HASHES = frozenset({"sha256", "sha384", "sha512"})

_CLUSTER_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_CLUSTER_NAME = 63


def cluster_name_errors(name: str, path: tuple[str, ...]) -> Iterator[FieldError]:
    """A cluster name is a DNS-1123 label (it becomes a namespace suffix and a SAN)."""
    if not name:
        yield FieldError(path, "must not be empty")
    elif len(name) > MAX_CLUSTER_NAME:
        yield FieldError(path, f"must be at most {MAX_CLUSTER_NAME} characters")
    elif not _CLUSTER_NAME.match(name):
        yield FieldError(path, "must be lowercase letters, digits and '-', starting and ending alphanumeric")


def spiffe_id(cluster_name: str) -> str:
    return f"{SPIFFE_PREFIX}{cluster_name}"


@frozen
class CsrFacts:
    """What an adapter read from a PEM certificate signing request."""

    signature_valid: bool
    key_type: str
    """``"EC"``, ``"RSA"`` or the name of another key type (refused)."""
    key_bits: int
    curve: str | None
    """The curve's name for EC keys (``"secp256r1"``), else ``None``."""
    signature_hash: str | None
    """Lower-case hash name of the request's self-signature, ``None`` if it has none."""
    common_names: tuple[str, ...]
    other_subject_attributes: tuple[str, ...] = ()
    """Names of subject attributes other than CN (refused: the subject is just the CN)."""


def csr_errors(facts: CsrFacts, cluster_name: str) -> Iterator[FieldError]:
    """Why the cell must not sign this CSR for ``cluster_name`` (nothing: it may)."""
    path = ("csr",)
    if not facts.signature_valid:
        yield FieldError(path, "the request's self-signature does not verify")
    if facts.key_type == "EC":
        if facts.curve not in APPROVED_CURVES:
            yield FieldError(
                path,
                f"EC curve {facts.curve} is not FIPS-approved here; use P-256 (prime256v1) or P-384",
            )
    elif facts.key_type == "RSA":
        if facts.key_bits < MIN_RSA_BITS:
            yield FieldError(path, f"RSA keys must be at least {MIN_RSA_BITS} bits")
    else:
        yield FieldError(
            path, f"{facts.key_type} keys are not accepted; use ECDSA P-256 (or P-384, RSA-2048+)"
        )
    if facts.signature_hash not in APPROVED_SIGNATURE_HASHES:
        yield FieldError(
            path, f"signature hash {facts.signature_hash} is not accepted; use SHA-256 or SHA-384"
        )
    if facts.common_names != (cluster_name,):
        shown = ", ".join(facts.common_names) or "none"
        yield FieldError(
            path, f"the subject must be CN={cluster_name} (the cluster being registered), got {shown}"
        )
    if facts.other_subject_attributes:
        yield FieldError(
            path,
            "the subject must hold only CN; remove " + ", ".join(sorted(set(facts.other_subject_attributes))),
        )


def cluster_from_peer(peer_cert: Mapping[str, Any] | None) -> str | None:
    """The cluster a verified peer certificate names, or ``None`` when it names none clearly.

    ``peer_cert`` is :meth:`ssl.SSLSocket.getpeercert` output: ``subject`` is a tuple of RDNs
    (each a tuple of ``(name, value)`` pairs) and ``subjectAltName`` a tuple of
    ``(type, value)`` pairs. Exactly one CN and exactly one Lattice SPIFFE URI must be present
    and name the same valid cluster.
    """
    if not peer_cert:
        return None
    common_names = [
        value for rdn in peer_cert.get("subject", ()) for key, value in rdn if key == "commonName"
    ]
    uris = [
        value
        for kind, value in peer_cert.get("subjectAltName", ())
        if kind == "URI" and isinstance(value, str) and value.startswith(SPIFFE_PREFIX)
    ]
    if len(common_names) != 1 or len(uris) != 1:
        return None
    name = common_names[0]
    if not isinstance(name, str) or uris[0] != spiffe_id(name):
        return None
    if any(True for _ in cluster_name_errors(name, ("cn",))):
        return None
    return name


# --- revocation -------------------------------------------------------------------------------
#
# A cell revokes by cluster and time: every certificate for a cluster issued up to the moment of
# revocation is refused, so a deleted (or compromised) cluster's renewed certificates go with
# the first one, and a cluster registered again afterwards gets in with its new certificate.
# A certificate's issue time is its notBefore plus the issuer's backdating (``skew``).


def revocation_reason(cluster: str, issued_at: datetime, revoked_at: datetime | None) -> str | None:
    """Why the certificate of ``cluster`` issued at ``issued_at`` is refused; None if it is not."""
    if revoked_at is None or issued_at > revoked_at:
        return None
    return (
        f"the certificate of cluster {cluster!r} (issued {_rfc3339(issued_at)}) was revoked at "
        f"{_rfc3339(revoked_at)}: the cluster must register again with a new token"
    )


def prunable_revocations(
    revoked: Mapping[str, datetime], now: datetime, longest_validity: timedelta
) -> tuple[str, ...]:
    """The clusters whose revocation no longer covers a certificate that can be valid: every
    certificate it refuses was issued up to the revocation, so it expired within
    ``longest_validity`` of it (the TLS handshake refuses it from then on)."""
    return tuple(sorted(cluster for cluster, at in revoked.items() if at + longest_validity < now))


def parse_revocations(data: Mapping[str, Any]) -> tuple[dict[str, datetime], list[FieldError]]:
    """The revocations stored as ``{cluster: RFC 3339 time}``; every bad entry is named."""
    revoked: dict[str, datetime] = {}
    errors: list[FieldError] = []
    for cluster, text in sorted(data.items()):
        path = ("data", str(cluster))
        errors.extend(cluster_name_errors(str(cluster), path))
        try:
            at = datetime.fromisoformat(text) if isinstance(text, str) else None
        except ValueError:
            at = None
        if at is None or at.tzinfo is None:
            errors.append(FieldError(path, f"must be an RFC 3339 time with a zone, not {text!r}"))
        elif not any(e.path == path for e in errors):
            revoked[str(cluster)] = at
    return revoked, errors


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
