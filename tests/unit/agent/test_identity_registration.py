"""CSR policy, peer-certificate identity and the webhook's request parsing (all pure)."""

from __future__ import annotations

import datetime as dt

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import agent_identity as ident
from lattice.domain import capi, registration
from lattice.domain.errors import FieldError

GOOD = ident.CsrFacts(
    signature_valid=True,
    key_type="EC",
    key_bits=256,
    curve="secp256r1",
    signature_hash="sha256",
    common_names=("c1",),
)


def _reasons(facts, name="c1"):
    return [e.reason for e in ident.csr_errors(facts, name)]


def test_a_p256_sha256_csr_for_the_cluster_is_accepted():
    assert _reasons(GOOD) == []
    assert _reasons(attrs.evolve(GOOD, curve="secp384r1", key_bits=384, signature_hash="sha384")) == []
    rsa = ident.CsrFacts(True, "RSA", 3072, None, "sha256", ("c1",))
    assert _reasons(rsa) == []


@pytest.mark.parametrize(
    ("change", "fragment"),
    [
        ({"signature_valid": False}, "self-signature"),
        ({"curve": "secp521r1"}, "not FIPS-approved"),
        ({"curve": "brainpoolP256r1"}, "not FIPS-approved"),
        ({"key_type": "RSA", "curve": None, "key_bits": 1024}, "at least 2048"),
        ({"key_type": "Ed25519", "curve": None}, "not accepted"),
        ({"signature_hash": "sha1"}, "signature hash"),
        ({"signature_hash": None}, "signature hash"),
        ({"common_names": ("other",)}, "CN=c1"),
        ({"common_names": ()}, "got none"),
        ({"common_names": ("c1", "c1")}, "CN=c1"),
        ({"other_subject_attributes": ("O", "O")}, "only CN"),
    ],
    ids=str,
)
def test_unacceptable_csrs_are_refused_with_a_reason(change, fragment):
    facts = attrs.evolve(GOOD, **change)
    reasons = _reasons(facts)
    assert any(fragment in r for r in reasons), reasons


def _peer(cn=("c1",), uris=("spiffe://lattice/cluster/c1",), extra=()):
    return {
        "subject": (*tuple((("commonName", value),) for value in cn), (("organizationName", "x"),)),
        "subjectAltName": tuple(("URI", u) for u in uris) + tuple(extra),
    }


@pytest.mark.parametrize(
    ("peer", "expected"),
    [
        (_peer(), "c1"),
        (_peer(extra=(("DNS", "c1.example"),)), "c1"),
        (None, None),
        ({}, None),
        (_peer(cn=()), None),
        (_peer(cn=("c1", "c2")), None),
        (_peer(uris=()), None),
        (_peer(uris=("spiffe://lattice/cluster/c2",)), None),
        (_peer(uris=("spiffe://lattice/cluster/c1", "spiffe://lattice/cluster/c1")), None),
        (_peer(cn=("C1",), uris=("spiffe://lattice/cluster/C1",)), None),
        (_peer(uris=("spiffe://other/cluster/c1",)), None),
    ],
    ids=[
        "ok",
        "extra-dns",
        "none",
        "empty",
        "no-cn",
        "two-cns",
        "no-uri",
        "uri-mismatch",
        "two-uris",
        "invalid-name",
        "foreign-uri",
    ],
)
def test_cluster_from_peer(peer, expected):
    assert ident.cluster_from_peer(peer) == expected


@pytest.mark.parametrize(
    ("name", "ok"),
    [
        ("c1", True),
        ("a", True),
        ("a" * 63, True),
        ("", False),
        ("a" * 64, False),
        ("-a", False),
        ("A", False),
        ("a_b", False),
    ],
)
def test_cluster_names(name, ok):
    assert (list(ident.cluster_name_errors(name, ("n",))) == []) is ok


CSR = "-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n"


@pytest.mark.parametrize(
    ("body", "field", "fragment"),
    [
        ([], "<root>", "JSON object"),
        ("x", "<root>", "JSON object"),
        ({"clusterName": "c1", "csr": CSR, "token": "x"}, "token", "unknown field"),
        ({"csr": CSR}, "clusterName", "required"),
        ({"clusterName": 5, "csr": CSR}, "clusterName", "required"),
        ({"clusterName": "Bad_Name", "csr": CSR}, "clusterName", "lowercase"),
        ({"clusterName": "c1"}, "csr", "required"),
        ({"clusterName": "c1", "csr": 7}, "csr", "required"),
        ({"clusterName": "c1", "csr": "hello"}, "csr", "not a PEM"),
        ({"clusterName": "c1", "csr": CSR + "x" * 20000}, "csr", "longer than"),
    ],
)
def test_malformed_requests_name_the_field(body, field, fragment):
    result = registration.parse_request(body)
    assert isinstance(result, FieldError)
    assert result.field == field
    assert fragment in result.reason


def test_a_good_request_parses():
    assert registration.parse_request({"clusterName": "c1", "csr": CSR}) == registration.RegistrationRequest(
        "c1", CSR
    )


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=10), inner, max_size=3),
        max_leaves=10,
    )
)
def test_parse_request_never_raises(body):
    result = registration.parse_request(body)
    assert isinstance(result, registration.RegistrationRequest | FieldError)


@pytest.mark.parametrize(
    ("header", "token"),
    [
        ("Bearer abc", "abc"),
        ("bearer   abc  ", "abc"),
        (None, None),
        ("", None),
        ("Basic abc", None),
        ("Bearer", None),
        ("Bearer a b", None),
    ],
)
def test_bearer_token(header, token):
    assert registration.bearer_token(header) == token


@pytest.mark.parametrize(
    ("accept", "yaml"),
    [
        ("application/yaml", True),
        ("text/yaml", True),
        ("application/x-yaml;q=0.9, application/json;q=0.5", True),
        ("application/json", False),
        ("*/*", False),
        (None, False),
        ("", False),
        ("application/yaml, application/json", False),
        ("application/yaml;q=0", False),
        ("application/yaml;q=abc", False),
        ("text/html", False),
    ],
)
def test_wants_yaml(accept, yaml):
    assert registration.wants_yaml(accept) is yaml


def test_response_json_shape():
    response = registration.RegistrationResponse("h:1", "ca", "cert", "yaml")
    assert response.to_json() == {
        "grpcEndpoint": "h:1",
        "caBundle": "ca",
        "certificate": "cert",
        "manifests": "yaml",
    }


def test_the_compiled_registration_script_calls_this_path():
    assert capi.ParentEndpoint(host="cell.example").register_url.endswith(registration.REGISTER_PATH)


def test_a_revocation_refuses_every_certificate_issued_up_to_it_and_none_after() -> None:
    revoked = dt.datetime(2026, 12, 6, 17, 0, tzinfo=dt.UTC)
    reason = ident.revocation_reason("w1", revoked - dt.timedelta(days=3), revoked)
    assert reason is not None
    assert "'w1'" in reason
    assert "2026-12-06T17:00:00Z" in reason
    assert "register again" in reason
    assert ident.revocation_reason("w1", revoked, revoked) is not None  # the same second
    assert ident.revocation_reason("w1", revoked + dt.timedelta(seconds=1), revoked) is None
    assert ident.revocation_reason("w1", revoked, None) is None


def test_stored_revocations_are_parsed_and_every_bad_entry_is_named() -> None:
    revoked, errors = ident.parse_revocations(
        {
            "w1": "2026-12-06T17:00:00+00:00",
            "w2": "2026-12-06T17:00:00",  # no zone
            "w3": "soon",
            "W_4": "2026-12-06T17:00:00Z",
            "w5": 7,
        }
    )
    assert list(revoked) == ["w1"]
    assert sorted(".".join(map(str, e.path)) for e in errors) == ["data.W_4", "data.w2", "data.w3", "data.w5"]


@given(
    st.dictionaries(
        st.sampled_from(["w1", "w2", "w3", "w4"]),
        st.integers(min_value=-90 * 86400, max_value=90 * 86400).map(lambda s: dt.timedelta(seconds=s)),
    )
)
def test_a_revocation_is_prunable_exactly_once_nothing_it_refuses_can_be_valid(
    ages: dict[str, dt.timedelta],
) -> None:
    now = dt.datetime(2026, 12, 7, tzinfo=dt.UTC)
    validity = dt.timedelta(days=31)
    revoked = {cluster: now - age for cluster, age in ages.items()}
    pruned = ident.prunable_revocations(revoked, now, validity)
    assert list(pruned) == sorted(pruned)
    for cluster, at in revoked.items():
        # The longest-lived certificate it refuses: issued at the revocation itself.
        still_valid = at + validity >= now
        assert (cluster in pruned) is not still_valid
