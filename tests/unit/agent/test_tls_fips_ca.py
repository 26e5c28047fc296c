"""TLS context restrictions, the FIPS report, the cell CA and the in-memory token store."""

from __future__ import annotations

import asyncio.sslproto
import datetime as dt
import ssl
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lattice.adapters import cell_ca, fips, pki, tls
from lattice.adapters.token_store_memory import InMemoryTokenStore
from lattice.domain import tokens
from lattice.ports.registration import CsrRefused


@pytest.fixture(scope="module")
def ca() -> cell_ca.CellCertificateAuthority:
    return cell_ca.CellCertificateAuthority.generate()


@pytest.fixture(scope="module")
def server_files(ca, tmp_path_factory) -> tls.TlsFiles:
    cert, key, bundle = ca.write_server_files(tmp_path_factory.mktemp("tls"), ip_addresses=["127.0.0.1"])
    return tls.TlsFiles(cert=cert, key=key, ca=bundle)


def test_contexts_offer_only_approved_ciphers_and_tls12_plus(server_files):
    for ctx in (
        tls.server_context(server_files, require_client_cert=True),
        tls.client_context(server_files),
        tls.client_context(None, ca=server_files.ca),
    ):
        names = {c["name"] for c in ctx.get_ciphers()}
        assert names <= tls.APPROVED_CIPHERS
        assert {"TLS_AES_256_GCM_SHA384", "TLS_AES_128_GCM_SHA256"} <= names
        assert not any("CHACHA" in n or "CBC" in n or "SHA1" in n for n in names)
        assert ctx.minimum_version is ssl.TLSVersion.TLSv1_2
        assert ctx.verify_mode is ssl.CERT_REQUIRED


def test_mutual_tls_is_optional_only_when_asked(server_files):
    assert tls.server_context(server_files, require_client_cert=False, alpn=tls.HTTP1_ALPN).verify_mode is (
        ssl.CERT_NONE
    )


def test_all_openssl_controls_apply_here():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert tls.restrict(ctx).complete


def test_without_openssl_controls_the_context_is_capped_at_tls12():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    restrictions = tls.restrict(ctx, use_openssl_controls=False)
    assert not restrictions.complete
    assert ctx.maximum_version is ssl.TLSVersion.TLSv1_2
    tls12 = {c["name"] for c in ctx.get_ciphers() if c["protocol"] == "TLSv1.2"}
    assert tls12 == set(tls.TLS12_CIPHERS)


def test_missing_or_bad_files_are_named(tmp_path, server_files):
    with pytest.raises(tls.TlsConfigError, match="does not exist"):
        tls.server_context(
            tls.TlsFiles(tmp_path / "nope", server_files.key, server_files.ca), require_client_cert=True
        )
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a pem")
    with pytest.raises(tls.TlsConfigError, match="cannot load certificate"):
        tls.server_context(tls.TlsFiles(garbage, server_files.key, server_files.ca), require_client_cert=True)
    with pytest.raises(tls.TlsConfigError, match="cannot load CA bundle"):
        tls.client_context(tls.TlsFiles(server_files.cert, server_files.key, garbage))
    with pytest.raises(tls.TlsConfigError, match="cannot load CA bundle"):
        tls.client_context(None, ca=garbage)
    with pytest.raises(tls.TlsConfigError, match="needs a CA bundle"):
        tls.client_context(None)


def test_ssl_read_buffer_is_tunable():
    old = tls.set_ssl_read_buffer(16 * 1024)
    try:
        assert asyncio.sslproto.SSLProtocol.max_size == 16 * 1024
    finally:
        tls.set_ssl_read_buffer(old)
    with pytest.raises(ValueError, match="4 KiB"):
        tls.set_ssl_read_buffer(100)


def test_fips_report_on_this_machine_finds_no_provider():
    report = fips.fips_report()
    assert report.ssl_openssl_version == ssl.OPENSSL_VERSION
    assert report.cryptography_openssl_version.startswith("OpenSSL")
    assert report.fips_active is False
    problems = report.problems()
    assert any("does not run a FIPS provider" in p for p in problems)
    assert report.to_json()["fipsActive"] is False


def test_fips_report_logic():
    on = fips.FipsReport("OpenSSL 3", True, True, "OpenSSL 3", True, True)
    assert on.fips_active
    assert on.problems() == []
    half = fips.FipsReport("OpenSSL 3", True, True, "OpenSSL 3", False, None)
    assert not half.fips_active
    assert half.problems() == ["cryptography's OpenSSL (OpenSSL 3) is not in FIPS mode"]
    unknown = fips.FipsReport("OpenSSL 1", None, None, "OpenSSL 3", True, None)
    assert "no FIPS provider is available" not in unknown.problems()[0]


def test_kernel_fips_flag(tmp_path):
    flag = tmp_path / "fips_enabled"
    assert fips._kernel_fips(flag) is None
    flag.write_text("1\n")
    assert fips._kernel_fips(flag) is True
    flag.write_text("0\n")
    assert fips._kernel_fips(flag) is False


def _csr(key, name="c1", *, extra=(), sans=(), digest=None) -> str:
    subject = x509.Name([*extra, x509.NameAttribute(NameOID.COMMON_NAME, name)])
    builder = x509.CertificateSigningRequestBuilder().subject_name(subject)
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    algorithm = (
        digest
        if digest is not None
        else (None if isinstance(key, ed25519.Ed25519PrivateKey) else hashes.SHA256())
    )
    return builder.sign(key, algorithm).public_bytes(serialization.Encoding.PEM).decode()


def test_signs_an_agent_certificate_bound_to_the_cluster(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    pem = ca.sign_agent_csr(_csr(key, sans=[x509.DNSName("evil.example")]), "c1")
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.subject.rfc4514_string() == "CN=c1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://lattice/cluster/c1"]
    assert san.get_values_for_type(x509.DNSName) == []  # requested SANs are ignored
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.CLIENT_AUTH]
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert dt.timedelta(days=29) < lifetime <= cell_ca.DEFAULT_AGENT_CERT_TTL + dt.timedelta(minutes=5)
    assert cert.public_key().public_numbers() == key.public_key().public_numbers()
    cert.verify_directly_issued_by(ca.authority.cert)


def test_signs_p384_and_rsa_keys(ca):
    ca.sign_agent_csr(_csr(ec.generate_private_key(ec.SECP384R1()), digest=hashes.SHA384()), "c1")
    pem = ca.sign_agent_csr(_csr(rsa.generate_private_key(65537, 2048)), "c1")
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_encipherment


@pytest.mark.parametrize(
    ("make", "cluster", "fragment"),
    [
        (lambda: "garbage", "c1", "not a parsable"),
        (
            lambda: "-----BEGIN CERTIFICATE REQUEST-----\nAAAA\n-----END CERTIFICATE REQUEST-----\n",
            "c1",
            "not a parsable",
        ),
        (lambda: _csr(ec.generate_private_key(ec.SECP256R1()), "c2"), "c1", "CN=c1"),
        (
            lambda: _csr(ec.generate_private_key(ec.SECP521R1()), digest=hashes.SHA512()),
            "c1",
            "not FIPS-approved",
        ),
        (lambda: _csr(ec.generate_private_key(ec.SECP256K1())), "c1", "not FIPS-approved"),
        (lambda: _csr(rsa.generate_private_key(65537, 1024)), "c1", "at least 2048"),
        (lambda: _csr(ed25519.Ed25519PrivateKey.generate()), "c1", "not accepted"),
        (
            lambda: _csr(ec.generate_private_key(ec.SECP256R1()), digest=hashes.SHA224()),
            "c1",
            "signature hash",
        ),
        (
            lambda: _csr(
                ec.generate_private_key(ec.SECP256R1()),
                extra=[x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters")],
            ),
            "c1",
            "only CN",
        ),
    ],
    ids=["garbage", "bad-der", "wrong-cn", "p521", "secp256k1", "rsa1024", "ed25519", "sha224", "extra-o"],
)
def test_refuses_unacceptable_csrs(ca, make, cluster, fragment):
    with pytest.raises(CsrRefused) as caught:
        ca.sign_agent_csr(make(), cluster)
    assert caught.value.field == "csr"
    assert fragment in caught.value.reason


def test_refuses_a_tampered_csr(ca):
    key = ec.generate_private_key(ec.SECP256R1())
    der = x509.load_pem_x509_csr(_csr(key).encode()).public_bytes(serialization.Encoding.DER)
    tampered = bytearray(der)
    tampered[-5] ^= 0x01  # inside the signature
    pem = x509.load_der_x509_csr(bytes(tampered)).public_bytes(serialization.Encoding.PEM).decode()
    with pytest.raises(CsrRefused, match="self-signature"):
        ca.sign_agent_csr(pem, "c1")


def test_agent_certificates_never_outlive_the_ca():
    short = cell_ca.CellCertificateAuthority(pki.new_ca("short", validity=dt.timedelta(days=2)))
    pem = short.sign_agent_csr(_csr(ec.generate_private_key(ec.SECP256R1())), "c1")
    cert = x509.load_pem_x509_certificate(pem.encode())
    assert cert.not_valid_after_utc <= short.authority.cert.not_valid_after_utc


def test_a_p384_ca_signs_with_sha384():
    key384 = ec.generate_private_key(ec.SECP384R1())
    now = dt.datetime.now(dt.UTC)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p384-ca")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key384.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(key384, hashes.SHA384())
    )
    strong = cell_ca.CellCertificateAuthority(pki.CertificateAuthority(cert=ca_cert, key=key384))
    pem = strong.sign_agent_csr(_csr(ec.generate_private_key(ec.SECP256R1())), "c1")
    assert isinstance(x509.load_pem_x509_certificate(pem.encode()).signature_hash_algorithm, hashes.SHA384)


def test_server_files(ca, tmp_path: Path):
    cert, key, bundle = ca.write_server_files(
        tmp_path, dns_names=["cell.example"], ip_addresses=["127.0.0.1"]
    )
    assert oct(key.stat().st_mode & 0o777) == "0o600"
    parsed = x509.load_pem_x509_certificate(cert.read_bytes())
    san = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["cell.example"]
    assert bundle.read_text() == ca.ca_bundle_pem()


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@pytest.mark.anyio
async def test_in_memory_token_store_with_injected_time_and_entropy():
    clock = Clock()
    store = InMemoryTokenStore(clock=clock, entropy=lambda n: b"\x01" * n, new_lease_id=lambda: "L")
    token = await store.issue("c1", ttl=dt.timedelta(minutes=10))
    assert token == tokens.encode_token(b"\x01" * 32)
    assert store.table.get("c1").digest == tokens.token_digest(token)
    held = await store.lease("c1", token)
    assert isinstance(held, tokens.Lease)
    await store.release(held)
    held = await store.lease("c1", token)
    assert await store.commit(held) is tokens.CommitResult.COMMITTED
    assert await store.lease("c1", token) is tokens.Rejection.CONSUMED
    token2 = await store.issue("c2")
    await store.revoke("c2")
    assert await store.lease("c2", token2) is tokens.Rejection.REVOKED
    token3 = await store.issue("c3", ttl=dt.timedelta(minutes=1))
    clock.now += dt.timedelta(minutes=2)
    assert await store.lease("c3", token3) is tokens.Rejection.EXPIRED


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def test_library_lookup_fails_safe(tmp_path):
    assert tls._libssl(str(tmp_path / "no-maps")) is None
    assert fips._libcrypto(str(tmp_path / "no-maps")) is None
    maps = tmp_path / "maps"
    maps.write_text(
        "7f00-7f01 r-xp 00000000 00:00 1 /nonexistent/libssl.so.3\n"
        "7f00-7f01 r-xp 00000000 00:00 1 /nonexistent/libcrypto.so.3\n"
    )
    assert tls._libssl(str(maps)) is None
    assert fips._libcrypto(str(maps)) is None
    assert fips._ssl_fips_state(None) == (None, None)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    assert tls._restrict_with_openssl(ctx, None) == tls.Restrictions(False, False, False)
