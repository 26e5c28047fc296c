"""A small pool of private keys of every kind a CSR can carry, generated once per process (RSA
4096 takes a second or more), and a CSR builder over them."""

from __future__ import annotations

import functools
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import dsa, ec, ed448, ed25519, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import NameOID

KEY_KINDS = (
    "ec-p256",
    "ec-p256-b",
    "ec-p384",
    "ec-p521",
    "ec-secp256k1",
    "rsa-1024",
    "rsa-2048",
    "rsa-4096",
    "dsa-2048",
    "ed25519",
    "ed448",
)
HASHES: dict[str, hashes.HashAlgorithm | None] = {
    "sha256": hashes.SHA256(),
    "sha384": hashes.SHA384(),
    "sha512": hashes.SHA512(),
    "sha224": hashes.SHA224(),
    "sha1": hashes.SHA1(),  # a hash the policy must refuse
    "none": None,
}


@functools.cache
def key(kind: str) -> CertificateIssuerPrivateKeyTypes:
    family, _, size = kind.partition("-")
    if family == "ec":
        curve = {
            "p256": ec.SECP256R1(),
            "p256-b": ec.SECP256R1(),
            "p384": ec.SECP384R1(),
            "p521": ec.SECP521R1(),
            "secp256k1": ec.SECP256K1(),
        }[size]
        return ec.generate_private_key(curve)
    if family == "rsa":
        return rsa.generate_private_key(public_exponent=65537, key_size=int(size))
    if family == "dsa":
        return dsa.generate_private_key(key_size=int(size))
    if family == "ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ed448.Ed448PrivateKey.generate()


def csr(
    kind: str,
    subject: Sequence[tuple[x509.ObjectIdentifier, str]],
    *,
    hash_name: str = "sha256",
    sans: Sequence[x509.GeneralName] = (),
    ca: bool = False,
) -> str:
    """A PEM CSR signed by ``key(kind)``; raises ValueError/TypeError for combinations
    cryptography refuses to build (the caller skips those)."""
    private = key(kind)
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(oid, value, _validate=False) for oid, value in subject])
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(sans)), critical=False)
    if ca:
        builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
    algorithm = (
        None if isinstance(private, ed25519.Ed25519PrivateKey | ed448.Ed448PrivateKey) else HASHES[hash_name]
    )
    request = builder.sign(private, algorithm)  # type: ignore[arg-type]
    return request.public_bytes(serialization.Encoding.PEM).decode("ascii")


def cn(name: str) -> list[tuple[x509.ObjectIdentifier, str]]:
    return [(NameOID.COMMON_NAME, name)]
