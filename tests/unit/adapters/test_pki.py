"""Unit tests for the generic PKI helpers (ECDSA P-256 and SHA-256 only)."""

from __future__ import annotations

import datetime as dt
import ipaddress
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lattice.adapters import pki


@pytest.fixture(scope="module")
def ca() -> pki.CertificateAuthority:
    return pki.new_ca("test-ca", organizations=["lattice"])


def _eku(cert: x509.Certificate) -> list[x509.ObjectIdentifier]:
    return list(cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value)


def _sans(cert: x509.Certificate) -> x509.SubjectAlternativeName:
    return cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value


def test_generate_key_is_p256() -> None:
    key = pki.generate_key()
    assert isinstance(key.curve, ec.SECP256R1)


def test_ca_is_self_signed_p256_sha256(ca: pki.CertificateAuthority) -> None:
    cert = ca.cert
    assert cert.subject == cert.issuer
    assert cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "test-ca"
    assert cert.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "lattice"
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    basic = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    assert basic.ca
    assert basic.path_length == 0
    usage = cert.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    cert.verify_directly_issued_by(cert)
    now = dt.datetime.now(dt.UTC)
    assert cert.not_valid_before_utc < now < cert.not_valid_after_utc


def test_server_certificate(ca: pki.CertificateAuthority) -> None:
    leaf = ca.issue(
        "kube-apiserver",
        dns_names=["localhost", "kubernetes"],
        ip_addresses=["127.0.0.1", ipaddress.ip_address("::1")],
        server=True,
    )
    leaf.cert.verify_directly_issued_by(ca.cert)
    assert isinstance(leaf.cert.signature_hash_algorithm, hashes.SHA256)
    assert _eku(leaf.cert) == [ExtendedKeyUsageOID.SERVER_AUTH]
    sans = _sans(leaf.cert)
    assert sans.get_values_for_type(x509.DNSName) == ["localhost", "kubernetes"]
    assert sans.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert not leaf.cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    aki = leaf.cert.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ski = ca.cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ski.digest


def test_client_certificate_has_groups_and_no_sans(ca: pki.CertificateAuthority) -> None:
    leaf = pki.issue_certificate(ca, "admin", organizations=["system:masters"], client=True)
    subject = leaf.cert.subject
    assert subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "admin"
    assert subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "system:masters"
    assert _eku(leaf.cert) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    with pytest.raises(x509.ExtensionNotFound):
        _sans(leaf.cert)


def test_server_and_client_usages(ca: pki.CertificateAuthority) -> None:
    leaf = ca.issue("peer", server=True, client=True, dns_names=["peer"])
    assert _eku(leaf.cert) == [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]


def test_leaf_needs_a_usage(ca: pki.CertificateAuthority) -> None:
    with pytest.raises(pki.PKIError, match="usage"):
        ca.issue("nothing")


def test_empty_common_name_is_refused() -> None:
    with pytest.raises(pki.PKIError, match="common name"):
        pki.new_ca("")


def test_validity_is_capped_by_the_ca() -> None:
    short = pki.new_ca("short", validity=dt.timedelta(days=1))
    leaf = short.issue("x", client=True, validity=dt.timedelta(days=365))
    assert leaf.cert.not_valid_after_utc == short.cert.not_valid_after_utc


def test_given_keys_are_used(ca: pki.CertificateAuthority) -> None:
    key = pki.generate_key()
    leaf = ca.issue("given", client=True, key=key)
    assert leaf.key is key
    assert pki.public_key_to_pem(leaf.cert.public_key()) == pki.public_key_to_pem(key)  # type: ignore[arg-type]
    ca_key = pki.generate_key()
    assert pki.new_ca("given-ca", key=ca_key).key is ca_key


def test_rsa_keys_are_refused(ca: pki.CertificateAuthority) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(pki.PKIError, match="P-256"):
        pki.new_ca("rsa", key=rsa_key)  # type: ignore[arg-type]
    with pytest.raises(pki.PKIError, match="P-256"):
        pki.key_to_pem(rsa_key)  # type: ignore[arg-type]
    p384 = ec.generate_private_key(ec.SECP384R1())
    with pytest.raises(pki.PKIError, match="P-256"):
        ca.issue("p384", client=True, key=p384)
    with pytest.raises(pki.PKIError, match="P-256"):
        pki.public_key_to_pem(p384.public_key())


def test_pem_round_trips(ca: pki.CertificateAuthority) -> None:
    leaf = ca.issue("pem", client=True)
    assert pki.cert_from_pem(leaf.cert_pem) == leaf.cert
    key = pki.key_from_pem(leaf.key_pem)
    assert key.private_numbers() == leaf.key.private_numbers()
    assert leaf.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
    assert leaf.key_pem.startswith(b"-----BEGIN PRIVATE KEY-----")
    assert pki.public_key_to_pem(leaf.key).startswith(b"-----BEGIN PUBLIC KEY-----")


def test_bad_pem_is_a_pki_error() -> None:
    with pytest.raises(pki.PKIError, match="certificate"):
        pki.cert_from_pem(b"nope")
    with pytest.raises(pki.PKIError, match="private key"):
        pki.key_from_pem(b"nope")
    with pytest.raises(pki.PKIError, match="signing request"):
        pki.csr_from_pem(b"nope")


def test_sign_csr_keeps_requested_sans(ca: pki.CertificateAuthority) -> None:
    key = pki.generate_key()
    csr = pki.new_csr(
        key,
        "agent",
        organizations=["cells"],
        dns_names=["agent.local"],
        ip_addresses=["10.1.2.3"],
    )
    parsed = pki.csr_from_pem(pki.csr_to_pem(csr))
    cert = pki.sign_csr(ca, parsed, client=True)
    cert.verify_directly_issued_by(ca.cert)
    assert cert.subject == csr.subject
    assert pki.public_key_to_pem(cert.public_key()) == pki.public_key_to_pem(key)  # type: ignore[arg-type]
    assert _sans(cert).get_values_for_type(x509.DNSName) == ["agent.local"]
    assert _sans(cert).get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("10.1.2.3")]


def test_sign_csr_sans_are_the_callers(ca: pki.CertificateAuthority) -> None:
    csr = pki.new_csr(pki.generate_key(), "agent", dns_names=["evil.example"])
    cert = pki.sign_csr(ca, csr, server=True, dns_names=["good.local"], ip_addresses=[])
    assert _sans(cert).get_values_for_type(x509.DNSName) == ["good.local"]
    bare = pki.new_csr(pki.generate_key(), "bare")
    cert = pki.sign_csr(ca, bare, client=True)
    with pytest.raises(x509.ExtensionNotFound):
        _sans(cert)


def test_sign_csr_refuses_bad_requests(ca: pki.CertificateAuthority) -> None:
    rsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rsa")]))
        .sign(rsa_key, hashes.SHA256())
    )
    with pytest.raises(pki.PKIError, match="P-256"):
        pki.sign_csr(ca, rsa_csr, client=True)
    der = pki.new_csr(pki.generate_key(), "tampered").public_bytes(serialization.Encoding.DER)
    # Same length, still well formed, but no longer what the key signed.
    tampered = x509.load_der_x509_csr(der.replace(b"tampered", b"tampereD"))
    with pytest.raises(pki.PKIError, match="invalid signature"):
        pki.sign_csr(ca, tampered, client=True)


def test_write_private_file(tmp_path: Path) -> None:
    path = pki.write_private_file(tmp_path / "sub" / "key.pem", b"secret")
    assert path.read_bytes() == b"secret"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    pki.write_private_file(path, b"again")
    assert path.read_bytes() == b"again"
    assert [p.name for p in path.parent.iterdir()] == ["key.pem"]


def test_write_private_file_cleans_up_on_failure(tmp_path: Path) -> None:
    target = tmp_path / "dir-in-the-way"
    (target / "child").mkdir(parents=True)
    with pytest.raises(OSError, match=r"."):
        pki.write_private_file(target, b"x")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir-in-the-way"]


def test_issued_certificates_name_the_issuers_own_key_identifier() -> None:
    """A CA made elsewhere (Go's RFC 7093 key identifiers, as the real KCP makes them) is matched
    by its SubjectKeyIdentifier as it is, not by one recomputed here."""
    key = pki.generate_key()
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kubernetes")])
    now = dt.datetime.now(dt.UTC)
    foreign = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.SubjectKeyIdentifier(b"\x01" * 20), critical=False)
        .sign(key, hashes.SHA256())
    )
    ca = pki.CertificateAuthority(cert=foreign, key=key)
    leaf = ca.issue("kube-apiserver", server=True).cert
    aki = leaf.extensions.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    assert aki.key_identifier == b"\x01" * 20
    leaf.verify_directly_issued_by(foreign)
    # Without a SubjectKeyIdentifier on the issuer, the identifier comes from its key.
    bare = pki.authority_key_identifier(
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    assert (
        bare.key_identifier
        == x509.AuthorityKeyIdentifier.from_issuer_public_key(key.public_key()).key_identifier
    )
