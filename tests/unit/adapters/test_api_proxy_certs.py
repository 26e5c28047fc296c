"""What the proxy endpoint reads from a client certificate (lattice.adapters.api_proxy_http)."""

from __future__ import annotations

import datetime as dt
import ssl
from pathlib import Path

import attrs
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from lattice.adapters import pki, tls
from lattice.adapters.api_proxy_http import certificate_caller, proxy_ssl_context, read_client_certificate
from lattice.domain import api_proxy


def _der(
    key: object, *, names: list[x509.NameAttribute[str]], usage: list[x509.ObjectIdentifier] | None
) -> bytes:
    now = dt.datetime.now(dt.UTC)
    signer = ec.generate_private_key(ec.SECP256R1())
    public = key.public_key()  # type: ignore[attr-defined]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(names))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ca")]))
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(hours=1))
    )
    if usage is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usage), critical=False)
    return builder.sign(signer, hashes.SHA384()).public_bytes(serialization.Encoding.DER)


def test_an_issued_client_certificate() -> None:
    ca = pki.new_ca("kube-ca")
    issued = ca.issue("dave", organizations=["team-a", "proxy-users"], client=True)
    der = pki.cert_from_pem(issued.cert_pem).public_bytes(serialization.Encoding.DER)
    read = read_client_certificate(der)
    assert read == api_proxy.ClientCertificate(
        common_name="dave",
        organizations=("team-a", "proxy-users"),
        key_type="ec",
        key_bits=256,
        curve="secp256r1",
        signature_hash="sha256",
        client_auth=True,
    )


def test_keys_usages_and_names_as_they_are() -> None:
    cn = [x509.NameAttribute(NameOID.COMMON_NAME, "erin")]
    small = read_client_certificate(
        _der(rsa.generate_private_key(65537, 1024), names=cn, usage=[ExtendedKeyUsageOID.SERVER_AUTH])
    )
    assert (small.key_type, small.key_bits, small.signature_hash, small.client_auth) == (
        "rsa",
        1024,
        "sha384",
        False,
    )
    edwards = read_client_certificate(_der(ed25519.Ed25519PrivateKey.generate(), names=[], usage=None))
    assert (edwards.key_type, edwards.common_name, edwards.client_auth) == ("ed25519", "", True)
    assert isinstance(api_proxy.certificate_user(edwards), str)


def test_a_certificate_that_cannot_be_read_is_refused_naming_why() -> None:
    refused = certificate_caller(b"not DER")
    assert isinstance(refused, str)
    assert refused.startswith("the client certificate cannot be read")


def _identity(tmp_path: Path) -> tls.TlsFiles:
    ca = pki.new_ca("cell-ca")
    server = ca.issue("cell", ip_addresses=["127.0.0.1"], server=True)
    (tmp_path / "tls.crt").write_bytes(server.cert_pem)
    (tmp_path / "tls.key").write_bytes(server.key_pem)
    (tmp_path / "ca.crt").write_bytes(ca.cert_pem)
    return tls.TlsFiles(cert=tmp_path / "tls.crt", key=tmp_path / "tls.key", ca=tmp_path / "ca.crt")


def test_the_endpoint_asks_for_a_client_certificate_only_with_a_client_ca(tmp_path: Path) -> None:
    files = _identity(tmp_path)
    assert proxy_ssl_context(files, None).verify_mode == ssl.CERT_NONE
    kube_ca = pki.new_ca("kube-ca").cert_pem.decode()
    with_ca = proxy_ssl_context(files, kube_ca)
    assert with_ca.verify_mode == ssl.CERT_OPTIONAL
    # only that CA: not the cell's own (which signs the agents)
    assert [c["subject"] for c in with_ca.get_ca_certs()] == [((("commonName", "kube-ca"),),)]
    with pytest.raises(tls.TlsConfigError, match="cannot load the client CA bundle"):
        proxy_ssl_context(files, "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(tls.TlsConfigError, match=r"key file .* does not exist"):
        proxy_ssl_context(attrs.evolve(files, key=tmp_path / "missing.key"), None)
