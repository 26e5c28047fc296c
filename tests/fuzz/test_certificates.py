"""Fuzz target ``certificates``: CSRs through the cell CA (``CellCertificateAuthority.sign_agent_csr``)
and the pure policy behind it (``agent_identity.csr_errors``), and peer certificates through
``agent_identity.cluster_from_peer``.

CSRs are built from a pool of keys generated once (P-256, P-384, P-521, secp256k1, RSA 1024, 2048
and 4096, DSA, Ed25519, Ed448) with any subject (no CN, two CNs, another cluster's name, extra
attributes, odd unicode), SANs, a CA flag, any hash; and garbage PEM: text, armour around noise,
real CSRs with damaged DER, a certificate instead of a request.

Invariant: a certificate is issued exactly when the request is what the policy allows (P-256,
P-384 or RSA >= 2048; SHA-256/384/512; subject exactly ``CN=<cluster>``; a valid self-signature);
it names the cluster (CN and SPIFFE URI), carries the CSR's key and is signed by the CA.
Otherwise :class:`CsrRefused` on field ``csr`` with a reason; never another exception.
"""

from __future__ import annotations

import base64
import ipaddress
from typing import Any

import pytest
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID
from hypothesis import assume, given
from hypothesis import strategies as st

from lattice.adapters.cell_ca import CellCertificateAuthority, csr_facts
from lattice.domain import agent_identity
from lattice.ports.registration import CsrRefused
from tests.fuzz import keys
from tests.fuzz.plugin import fuzz
from tests.fuzz.strategies import odd_text, weird_strings
from tests.unit.strategies import names

pytestmark = [
    pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning"),  # DSA
    pytest.mark.filterwarnings("ignore:Attribute's length must be:UserWarning"),  # a 65-character CN
]

CA = CellCertificateAuthority.generate()
APPROVED_KEYS = {"ec-p256", "ec-p256-b", "ec-p384", "rsa-2048", "rsa-4096"}
APPROVED_HASHES = {"sha256", "sha384", "sha512"}
OTHER_ATTRIBUTES = [
    NameOID.ORGANIZATION_NAME,
    NameOID.ORGANIZATIONAL_UNIT_NAME,
    NameOID.COUNTRY_NAME,
    NameOID.EMAIL_ADDRESS,
    NameOID.SERIAL_NUMBER,
    NameOID.DOMAIN_COMPONENT,
    NameOID.USER_ID,
]
attribute_values = st.one_of(names, weird_strings.filter(bool), odd_text.filter(bool), st.just("x" * 65))
general_names = st.one_of(
    names.map(x509.DNSName),
    st.just(x509.DNSName("*.example.com")),
    st.sampled_from(["10.0.0.1", "::1"]).map(lambda ip: x509.IPAddress(ipaddress.ip_address(ip))),
    names.map(lambda n: x509.UniformResourceIdentifier(agent_identity.spiffe_id(n))),
    st.just(x509.RFC822Name("root@example.com")),
)


@st.composite
def requests(draw: st.DrawFn) -> dict[str, Any]:
    """A CSR built from the key pool, with what the policy should say about it."""
    cluster = draw(names)
    shape = draw(st.sampled_from(["exact"] * 3 + ["other-cn", "odd-cn", "no-cn", "two-cns", "extra"]))
    subject: list[tuple[x509.ObjectIdentifier, str]] = {
        "exact": keys.cn(cluster),
        "other-cn": keys.cn(draw(names)),
        "odd-cn": keys.cn(draw(attribute_values)),
        "no-cn": [],
        "two-cns": [*keys.cn(cluster), *keys.cn(draw(names))],
        "extra": [*keys.cn(cluster), (draw(st.sampled_from(OTHER_ATTRIBUTES)), draw(attribute_values))],
    }[shape]
    kind = draw(st.sampled_from(keys.KEY_KINDS))
    hash_name = draw(st.sampled_from(sorted(keys.HASHES)))
    try:
        pem = keys.csr(
            kind,
            subject,
            hash_name=hash_name,
            sans=draw(st.lists(general_names, max_size=3)),
            ca=draw(st.booleans()),
        )
    except (ValueError, TypeError, UnsupportedAlgorithm):  # a combination cryptography will not build
        assume(False)
    edwards = kind in {"ed25519", "ed448"}
    allowed = (
        kind in APPROVED_KEYS and not edwards and hash_name in APPROVED_HASHES and subject == keys.cn(cluster)
    )
    return {"pem": pem, "cluster": cluster, "allowed": allowed}


def _damaged(pem: str, where: int, byte: int) -> str:
    der = bytearray(x509.load_pem_x509_csr(pem.encode()).public_bytes(serialization.Encoding.DER))
    der[where % len(der)] = byte
    body = base64.encodebytes(bytes(der)).decode()
    return f"-----BEGIN CERTIFICATE REQUEST-----\n{body}-----END CERTIFICATE REQUEST-----\n"


GOOD = keys.csr("ec-p256", keys.cn("alpha"))
ARMOUR = "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n"
garbage = st.one_of(
    weird_strings,
    st.text(max_size=200),
    st.binary(max_size=120).map(lambda b: ARMOUR.format(base64.b64encode(b).decode())),
    st.builds(_damaged, st.just(GOOD), st.integers(0, 10_000), st.integers(0, 255)),
    st.just(CA.ca_bundle_pem()),  # a certificate, not a request
    st.just(GOOD + GOOD),
    st.just(GOOD.replace("\n", "\r\n")),
    st.just(GOOD[: len(GOOD) // 2]),
    st.just("  \n" + GOOD + "trailing"),
    st.just(GOOD.replace("REQUEST", "REQUEST\u0000")),
    st.just(GOOD + "\ud800"),
)


def check_signing(pem: str, cluster: str) -> bool:
    """Sign; check the outcome; whether a certificate was issued."""
    try:
        issued = CA.sign_agent_csr(pem, cluster)
    except CsrRefused as exc:
        refused = exc
    else:
        refused = None
    if refused is not None:
        assert refused.field == "csr"
        assert refused.reason.strip()
        return False
    csr = x509.load_pem_x509_csr(pem.encode())
    assert not list(agent_identity.csr_errors(csr_facts(csr), cluster))
    cert = x509.load_pem_x509_certificate(issued.encode())
    assert cert.subject == x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cluster)])
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == [agent_identity.spiffe_id(cluster)]
    assert cert.public_key() == csr.public_key()
    cert.verify_directly_issued_by(CA.authority.cert)
    return True


@given(request=requests())
@fuzz("certificates.csr", examples=250)
def test_generated_requests(request: dict[str, Any]) -> None:
    assert check_signing(request["pem"], request["cluster"]) == request["allowed"]


@given(pem=garbage, cluster=st.one_of(st.just("alpha"), names))
@fuzz("certificates.garbage", examples=250)
def test_garbage(pem: str, cluster: str) -> None:
    check_signing(pem, cluster)


facts = st.builds(
    agent_identity.CsrFacts,
    signature_valid=st.booleans(),
    key_type=st.one_of(st.sampled_from(["EC", "RSA", "Ed25519", "DSA", "unknown", ""]), weird_strings),
    key_bits=st.one_of(st.sampled_from([0, 256, 1024, 2047, 2048, 4096]), st.integers()),
    curve=st.one_of(
        st.none(), st.sampled_from(["secp256r1", "secp384r1", "secp521r1", "secp256k1"]), weird_strings
    ),
    signature_hash=st.one_of(
        st.none(), st.sampled_from(["sha256", "sha1", "SHA256", "sha512"]), weird_strings
    ),
    common_names=st.lists(st.one_of(names, weird_strings), max_size=3).map(tuple),
    other_subject_attributes=st.lists(st.sampled_from(["O", "OU", "C", "emailAddress"]), max_size=2).map(
        tuple
    ),
)


@given(facts=facts, cluster=st.one_of(names, weird_strings))
@fuzz("certificates.policy", examples=400)
def test_policy(facts: agent_identity.CsrFacts, cluster: str) -> None:
    errors = list(agent_identity.csr_errors(facts, cluster))
    assert all(e.path == ("csr",) and e.reason.strip() for e in errors)
    good_key = (facts.key_type == "EC" and facts.curve in agent_identity.APPROVED_CURVES) or (
        facts.key_type == "RSA" and facts.key_bits >= agent_identity.MIN_RSA_BITS
    )
    allowed = (
        facts.signature_valid
        and good_key
        and facts.signature_hash in agent_identity.APPROVED_SIGNATURE_HASHES
        and facts.common_names == (cluster,)
        and not facts.other_subject_attributes
    )
    assert (not errors) == allowed, errors


peer_values = st.one_of(names, weird_strings, st.integers(), st.none())
peer_certs = st.one_of(
    st.none(),
    st.just({}),
    st.fixed_dictionaries(
        {},
        optional={
            "subject": st.lists(
                st.lists(
                    st.tuples(st.sampled_from(["commonName", "organizationName", "x"]), peer_values),
                    max_size=2,
                ).map(tuple),
                max_size=3,
            ).map(tuple),
            "subjectAltName": st.lists(
                st.tuples(
                    st.sampled_from(["URI", "DNS", "IP Address"]),
                    st.one_of(names.map(agent_identity.spiffe_id), peer_values),
                ),
                max_size=3,
            ).map(tuple),
        },
    ),
)


@given(peer=peer_certs)
@fuzz("certificates.peer", examples=300)
def test_peer_certificates(peer: dict[str, Any] | None) -> None:
    cluster = agent_identity.cluster_from_peer(peer)
    if cluster is not None:
        assert peer is not None
        assert not list(agent_identity.cluster_name_errors(cluster, ("cn",)))
        assert ("URI", agent_identity.spiffe_id(cluster)) in peer["subjectAltName"]


def _with_bad_subject_tag() -> str:
    """GOOD with the tag of its CN value (UTF8String, 0x0c) replaced by 0x00."""
    der = x509.load_pem_x509_csr(GOOD.encode()).public_bytes(serialization.Encoding.DER)
    cn_value = der.index(b"\x06\x03\x55\x04\x03\x0c") + 5  # OID 2.5.4.3, then the value's tag
    return _damaged(GOOD, cn_value, 0)


def test_found_a_malformed_subject_is_refused() -> None:
    pem = _with_bad_subject_tag()
    with pytest.raises(CsrRefused) as refused:
        CA.sign_agent_csr(pem, "alpha")
    assert refused.value.field == "csr"


def _with_version(version: int) -> str:
    """GOOD with the version of its CertificationRequestInfo (INTEGER 0, i.e. v1) changed."""
    der = x509.load_pem_x509_csr(GOOD.encode()).public_bytes(serialization.Encoding.DER)
    at = der.index(b"\x02\x01\x00") + 2  # the first INTEGER in the request info is its version
    return _damaged(GOOD, at, version)


def test_found_a_request_of_version_2_is_refused() -> None:
    with pytest.raises(CsrRefused) as refused:
        CA.sign_agent_csr(_with_version(1), "alpha")
    assert refused.value.field == "csr"
