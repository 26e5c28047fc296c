"""The cell's certificate authority: signs agents' CSRs and the cell's own server certificate.

Agent certificates (docs/protocol.md, "Agent identity"):

* subject ``CN=<cluster>`` (set by the cell; the CSR must ask for exactly that);
* SAN ``URI:spiffe://lattice/cluster/<cluster>`` (the CSR's requested SANs are ignored);
* ``clientAuth`` only, not a CA, ECDSA/SHA-256 (SHA-384 for a P-384 CA) signature;
* valid for ``agent_cert_ttl`` (30 days by default), never past the CA's own expiry.

The agent's private key never reaches the cell: it arrives as a CSR.

Generic key/CA helpers come from :mod:`lattice.adapters.pki`; the CSR policy itself is pure
(:mod:`lattice.domain.agent_identity`); this module extracts the facts and signs.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from lattice.adapters import pki
from lattice.domain import agent_identity
from lattice.ports.registration import CsrRefused

DEFAULT_AGENT_CERT_TTL = dt.timedelta(days=30)
CERTIFICATE_BACKDATE = pki.CERTIFICATE_BACKDATE
"""An agent certificate's notBefore is this long before it was issued (clock skew)."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def csr_facts(csr: x509.CertificateSigningRequest) -> agent_identity.CsrFacts:
    """What the pure CSR policy needs to know about ``csr``."""
    try:
        public = csr.public_key()
    except (UnsupportedAlgorithm, ValueError):
        public = None
    key_type: str
    curve: str | None = None
    bits = 0
    if isinstance(public, ec.EllipticCurvePublicKey):
        key_type, curve, bits = "EC", public.curve.name, public.curve.key_size
    elif isinstance(public, rsa.RSAPublicKey):
        key_type, bits = "RSA", public.key_size
    else:
        key_type = type(public).__name__.removeprefix("_").replace("PublicKey", "") or "unknown"
    try:
        algorithm = csr.signature_hash_algorithm
        hash_name = algorithm.name.lower() if algorithm is not None else None
    except UnsupportedAlgorithm:
        hash_name = None
    try:
        signature_valid = csr.is_signature_valid
    except (UnsupportedAlgorithm, ValueError):
        signature_valid = False
    common_names = tuple(
        str(attribute.value) for attribute in csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    )
    others = tuple(
        attribute.rfc4514_attribute_name for attribute in csr.subject if attribute.oid != NameOID.COMMON_NAME
    )
    return agent_identity.CsrFacts(
        signature_valid=signature_valid,
        key_type=key_type,
        key_bits=bits,
        curve=curve,
        signature_hash=hash_name,
        common_names=common_names,
        other_subject_attributes=others,
    )


class CellCertificateAuthority:
    """Implements :class:`lattice.ports.registration.AgentCertificateSigner`."""

    def __init__(
        self,
        ca: pki.CertificateAuthority,
        *,
        agent_cert_ttl: dt.timedelta = DEFAULT_AGENT_CERT_TTL,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> None:
        self._ca = ca
        self._ttl = agent_cert_ttl
        self._clock = clock

    @classmethod
    def generate(
        cls,
        common_name: str = "lattice-cell-ca",
        *,
        agent_cert_ttl: dt.timedelta = DEFAULT_AGENT_CERT_TTL,
        clock: Callable[[], dt.datetime] = _utcnow,
    ) -> CellCertificateAuthority:
        """A new CA with a fresh P-256 key (tests, and a cell's first start)."""
        return cls(pki.new_ca(common_name), agent_cert_ttl=agent_cert_ttl, clock=clock)

    @property
    def authority(self) -> pki.CertificateAuthority:
        return self._ca

    def ca_bundle_pem(self) -> str:
        return pki.cert_to_pem(self._ca.cert).decode("ascii")

    def sign_agent_csr(self, csr_pem: str, cluster_name: str) -> str:
        try:
            csr = x509.load_pem_x509_csr(csr_pem.encode("utf-8"))
            facts = csr_facts(csr)  # cryptography parses the subject lazily: here
        except (ValueError, UnicodeEncodeError, x509.InvalidVersion) as exc:
            raise CsrRefused("csr", f"not a parsable PEM certificate signing request ({exc})") from exc
        errors = list(agent_identity.csr_errors(facts, cluster_name))
        if errors:
            raise CsrRefused("csr", "; ".join(error.reason for error in errors))
        public = csr.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise CsrRefused("csr", "unsupported public key")  # pragma: no cover - policy refuses
        return pki.cert_to_pem(self._sign(public, cluster_name)).decode("ascii")

    def _sign(
        self, public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey, cluster_name: str
    ) -> x509.Certificate:
        return pki.leaf_certificate(
            self._ca,
            x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cluster_name)]),
            public,
            sans=[x509.UniformResourceIdentifier(agent_identity.spiffe_id(cluster_name))],
            client=True,
            validity=self._ttl,
            now=self._clock(),
        )

    def issue_server_certificate(
        self,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
        common_name: str = "lattice-cell",
        validity: dt.timedelta = dt.timedelta(days=365),
    ) -> pki.IssuedCertificate:
        """The cell's serving certificate (webhook and gRPC), for the names agents dial."""
        return self._ca.issue(
            common_name,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            server=True,
            validity=validity,
        )

    def write_server_files(
        self,
        directory: Path,
        *,
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str] = (),
    ) -> tuple[Path, Path, Path]:
        """Write ``server.crt``, ``server.key`` (0600) and ``ca.crt`` into ``directory``."""
        issued = self.issue_server_certificate(dns_names=dns_names, ip_addresses=ip_addresses)
        directory.mkdir(parents=True, exist_ok=True)
        cert = directory / "server.crt"
        cert.write_bytes(issued.cert_pem)
        key = pki.write_private_file(directory / "server.key", issued.key_pem)
        ca = directory / "ca.crt"
        ca.write_text(self.ca_bundle_pem())
        return cert, key, ca
