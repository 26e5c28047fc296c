"""Generic X.509 PKI helpers restricted to FIPS-approved algorithms.

Keys are ECDSA on NIST P-256 and every signature is ECDSA with SHA-256: nothing else can be
generated or issued here. The helpers are deliberately generic (a CA, leaf certificates
with server and/or client usages, PEM encoding, private files) so that test control
planes, the cell CA and CSR signing can all share them.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
from collections.abc import Sequence
from pathlib import Path

import attrs
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertificateAuthority",
    "IssuedCertificate",
    "PKIError",
    "cert_from_pem",
    "cert_to_pem",
    "csr_from_pem",
    "csr_to_pem",
    "generate_key",
    "issue_certificate",
    "key_from_pem",
    "key_to_pem",
    "new_ca",
    "new_csr",
    "public_key_to_pem",
    "sign_csr",
    "write_private_file",
]

PrivateKey = ec.EllipticCurvePrivateKey
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

_CURVE = ec.SECP256R1
CERTIFICATE_BACKDATE = dt.timedelta(minutes=5)
"""Certificates start this much in the past to tolerate clock skew between peers."""


class PKIError(ValueError):
    """A key, certificate or request that these helpers refuse (wrong algorithm, bad PEM)."""


@attrs.frozen
class IssuedCertificate:
    """A certificate together with its private key."""

    cert: x509.Certificate
    key: PrivateKey

    @property
    def cert_pem(self) -> bytes:
        return cert_to_pem(self.cert)

    @property
    def key_pem(self) -> bytes:
        return key_to_pem(self.key)


@attrs.frozen
class CertificateAuthority(IssuedCertificate):
    """A CA: its self-signed certificate and the key that signs what it issues."""

    def issue(
        self,
        common_name: str,
        *,
        organizations: Sequence[str] = (),
        dns_names: Sequence[str] = (),
        ip_addresses: Sequence[str | IPAddress] = (),
        server: bool = False,
        client: bool = False,
        validity: dt.timedelta = dt.timedelta(days=365),
        key: PrivateKey | None = None,
    ) -> IssuedCertificate:
        """Issue a leaf certificate signed by this CA (see :func:`issue_certificate`)."""
        return issue_certificate(
            self,
            common_name,
            organizations=organizations,
            dns_names=dns_names,
            ip_addresses=ip_addresses,
            server=server,
            client=client,
            validity=validity,
            key=key,
        )


def generate_key() -> PrivateKey:
    """A new ECDSA P-256 private key."""
    return ec.generate_private_key(_CURVE())


def _check_key(key: object) -> PrivateKey:
    if not isinstance(key, ec.EllipticCurvePrivateKey) or not isinstance(key.curve, _CURVE):
        raise PKIError("only ECDSA P-256 private keys are accepted")
    return key


def _check_public_key(key: object) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, _CURVE):
        raise PKIError("only ECDSA P-256 public keys are accepted")
    return key


def _name(common_name: str, organizations: Sequence[str] = ()) -> x509.Name:
    if not common_name:
        raise PKIError("a certificate needs a non-empty common name")
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, org) for org in organizations]
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def new_ca(
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    validity: dt.timedelta = dt.timedelta(days=3650),
    key: PrivateKey | None = None,
) -> CertificateAuthority:
    """A self-signed CA certificate (path length 0: it signs leaf certificates only)."""
    ca_key = _check_key(key) if key is not None else generate_key()
    name = _name(common_name, organizations)
    now = _now()
    public = ca_key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CERTIFICATE_BACKDATE)
        .not_valid_after(now + validity)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return CertificateAuthority(cert=cert, key=ca_key)


def authority_key_identifier(issuer: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    """The AuthorityKeyIdentifier of what ``issuer`` signs: its own SubjectKeyIdentifier when it
    has one (RFC 5280 4.2.1.1), else computed from its public key.

    Copying matters: CAs made elsewhere compute key identifiers differently (Go, for example,
    since 1.25 uses a truncated SHA-256, RFC 7093), and verifiers match the two byte for byte.
    """
    try:
        ski = issuer.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        public = issuer.public_key()
        if not isinstance(public, ec.EllipticCurvePublicKey | rsa.RSAPublicKey):
            raise PKIError("an issuer needs an ECDSA or RSA key") from None
        return x509.AuthorityKeyIdentifier.from_issuer_public_key(public)
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


def _sans(dns_names: Sequence[str], ip_addresses: Sequence[str | IPAddress]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = [x509.DNSName(name) for name in dns_names]
    names.extend(x509.IPAddress(ipaddress.ip_address(ip)) for ip in ip_addresses)
    return names


def leaf_certificate(
    ca: CertificateAuthority,
    subject: x509.Name,
    public: ec.EllipticCurvePublicKey | rsa.RSAPublicKey,
    *,
    sans: Sequence[x509.GeneralName] = (),
    server: bool = False,
    client: bool = False,
    validity: dt.timedelta,
    now: dt.datetime | None = None,
) -> x509.Certificate:
    """The one builder of every leaf certificate Lattice issues (control planes, agents).

    It starts :data:`CERTIFICATE_BACKDATE` before ``now``, ends ``validity`` after it (at most
    when the CA does), is not a CA, may sign (and, for an RSA key, encipher keys), is for
    ``server`` and/or ``client`` authentication, names ``sans``, and is signed with SHA-384 by a
    P-384 CA, SHA-256 otherwise.
    """
    if not (server or client):
        raise PKIError("a leaf certificate needs server and/or client usage")
    usages = []
    if server:
        usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
    if client:
        usages.append(ExtendedKeyUsageOID.CLIENT_AUTH)
    ca_key: object = ca.key
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey) or ca_key.curve.key_size not in (256, 384):
        raise PKIError("the CA must have an ECDSA P-256 or P-384 key")
    digest: hashes.SHA256 | hashes.SHA384 = (
        hashes.SHA384() if ca_key.curve.key_size == 384 else hashes.SHA256()
    )
    start = _now() if now is None else now
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start - CERTIFICATE_BACKDATE)
        .not_valid_after(min(start + validity, ca.cert.not_valid_after_utc))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=isinstance(public, rsa.RSAPublicKey),
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(authority_key_identifier(ca.cert), critical=False)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    return builder.sign(ca_key, digest)


def issue_certificate(
    ca: CertificateAuthority,
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str | IPAddress] = (),
    server: bool = False,
    client: bool = False,
    validity: dt.timedelta = dt.timedelta(days=365),
    key: PrivateKey | None = None,
) -> IssuedCertificate:
    """Issue a leaf certificate and its key.

    ``server`` adds the serverAuth extended key usage, ``client`` clientAuth; at least one
    is required. Kubernetes maps ``organizations`` to groups and ``common_name`` to the user
    name of a client certificate. The validity is capped at the CA's own expiry.
    """
    leaf_key = _check_key(key) if key is not None else generate_key()
    cert = leaf_certificate(
        ca,
        _name(common_name, organizations),
        leaf_key.public_key(),
        sans=_sans(dns_names, ip_addresses),
        server=server,
        client=client,
        validity=validity,
    )
    return IssuedCertificate(cert=cert, key=leaf_key)


def _requested_sans(csr: x509.CertificateSigningRequest) -> tuple[list[str], list[str | IPAddress]]:
    """The DNS names and IP addresses a request asks for; none when it has no SAN extension.

    A request without the extension asks for no names. (cryptography >= 51 refuses to build an
    empty ``SubjectAlternativeName``, so "no extension" must not be modelled as an empty one.)
    """
    try:
        requested = csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return [], []
    ips: list[str | IPAddress] = [
        ip
        for ip in requested.get_values_for_type(x509.IPAddress)
        if isinstance(ip, ipaddress.IPv4Address | ipaddress.IPv6Address)
    ]
    return list(requested.get_values_for_type(x509.DNSName)), ips


def sign_csr(
    ca: CertificateAuthority,
    csr: x509.CertificateSigningRequest,
    *,
    server: bool = False,
    client: bool = False,
    validity: dt.timedelta = dt.timedelta(days=365),
    dns_names: Sequence[str] | None = None,
    ip_addresses: Sequence[str | IPAddress] | None = None,
) -> x509.Certificate:
    """Sign a certificate signing request with ``ca``.

    The request must carry a valid self-signature and a P-256 key. Its subject is kept as
    is; the SANs are the caller's (``None`` keeps the ones the request asks for), because
    the caller, not the requester, decides what a certificate may name.
    """
    if not csr.is_signature_valid:
        raise PKIError("the certificate signing request has an invalid signature")
    public = _check_public_key(csr.public_key())
    requested_dns, requested_ips = _requested_sans(csr)
    dns: Sequence[str] = requested_dns if dns_names is None else dns_names
    ips: Sequence[str | IPAddress] = requested_ips if ip_addresses is None else ip_addresses
    return leaf_certificate(
        ca, csr.subject, public, sans=_sans(dns, ips), server=server, client=client, validity=validity
    )


def new_csr(
    key: PrivateKey,
    common_name: str,
    *,
    organizations: Sequence[str] = (),
    dns_names: Sequence[str] = (),
    ip_addresses: Sequence[str | IPAddress] = (),
) -> x509.CertificateSigningRequest:
    """A certificate signing request for ``key``, self-signed with ECDSA SHA-256."""
    builder = x509.CertificateSigningRequestBuilder().subject_name(_name(common_name, organizations))
    sans = _sans(dns_names, ip_addresses)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(_check_key(key), hashes.SHA256())


def csr_to_pem(csr: x509.CertificateSigningRequest) -> bytes:
    return csr.public_bytes(serialization.Encoding.PEM)


def cert_to_pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def cert_from_pem(data: bytes) -> x509.Certificate:
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate: {exc}") from exc


def key_to_pem(key: PrivateKey) -> bytes:
    """PKCS#8 PEM, unencrypted (files holding it are written 0600)."""
    return _check_key(key).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_from_pem(data: bytes) -> PrivateKey:
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise PKIError(f"not an unencrypted PEM private key: {exc}") from exc
    return _check_key(key)


def public_key_to_pem(key: PrivateKey | ec.EllipticCurvePublicKey) -> bytes:
    public = key.public_key() if isinstance(key, ec.EllipticCurvePrivateKey) else key
    return _check_public_key(public).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def csr_from_pem(data: bytes) -> x509.CertificateSigningRequest:
    try:
        return x509.load_pem_x509_csr(data)
    except ValueError as exc:
        raise PKIError(f"not a PEM certificate signing request: {exc}") from exc


def write_private_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` readable by the owner only (0600), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path
