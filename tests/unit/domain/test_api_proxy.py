"""The API proxy's decisions: targets, verbs, reviews, impersonation, headers, flow control."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import api_proxy as ap
from lattice.domain.errors import FieldError
from tests.unit.strategies import names

ALICE = ap.UserInfo(
    username="system:serviceaccount:team:alice",
    uid="u-1",
    groups=("system:serviceaccounts", "system:authenticated"),
    extra=(("authentication.kubernetes.io/credential-id", ("JTI=1",)),),
)


@pytest.mark.parametrize(
    ("path", "query", "expected"),
    [
        ("/clusters/prod/api/v1/pods", "", ap.Target("prod", "/api/v1/pods")),
        ("/clusters/prod/api", "watch=1&rv=2", ap.Target("prod", "/api?watch=1&rv=2")),
        ("/clusters/a/clusters/b/version", "", ap.Target("a", "/clusters/b/version")),
    ],
)
def test_targets(path: str, query: str, expected: ap.Target) -> None:
    assert ap.parse_target(path, query) == expected


@pytest.mark.parametrize(
    ("path", "reason"),
    [
        ("/api/v1/pods", "must start with /clusters/<cluster>/"),
        ("/clusters/", "must not be empty"),
        ("/clusters/Prod/api", "lowercase"),
        ("/clusters/prod", "no API path"),
        ("/clusters/prod/", "no API path"),
        ("/clusters/prod/api/../secrets", "'..'"),
        ("/clusters/prod/api//v1", "empty"),
        ("/clusters/prod/api/v1\x01", "control characters"),
    ],
)
def test_bad_targets_name_the_reason(path: str, reason: str) -> None:
    error = ap.parse_target(path)
    assert isinstance(error, FieldError)
    assert reason in str(error)


@given(names, st.lists(st.from_regex(r"[a-z0-9.-]{1,12}", fullmatch=True), min_size=1, max_size=5))
def test_a_target_keeps_the_path_it_was_given(cluster: str, segments: list[str]) -> None:
    rest = "/" + "/".join(segments)
    parsed = ap.parse_target(ap.PATH_PREFIX + cluster + rest)
    if any(s in {".", ".."} for s in segments):
        assert isinstance(parsed, FieldError)
    else:
        assert parsed == ap.Target(cluster, rest)


def test_verbs_follow_the_method() -> None:
    assert [
        ap.verb_for(m) for m in ("GET", "head", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT")
    ] == [
        "get",
        "get",
        "create",
        "update",
        "patch",
        "delete",
        None,
        None,
    ]


def test_access_review_spec() -> None:
    assert ap.access_attributes(ALICE, "prod", "get") == {
        "user": "system:serviceaccount:team:alice",
        "groups": ["system:serviceaccounts", "system:authenticated"],
        "uid": "u-1",
        "extra": {"authentication.kubernetes.io/credential-id": ["JTI=1"]},
        "resourceAttributes": {
            "group": "lattice.dev",
            "resource": "latticeclusters",
            "subresource": "proxy",
            "name": "prod",
            "verb": "get",
        },
    }
    assert ap.access_attributes(ap.UserInfo("bob"), "prod", "delete") == {
        "user": "bob",
        "resourceAttributes": {
            "group": "lattice.dev",
            "resource": "latticeclusters",
            "subresource": "proxy",
            "name": "prod",
            "verb": "delete",
        },
    }


def test_impersonation_headers_round_trip() -> None:
    headers = ap.impersonation_headers(ALICE)
    assert ("Impersonate-Extra-authentication.kubernetes.io%2Fcredential-id", "JTI=1") in headers
    assert ap.requested_impersonation([("x-other", "1"), *headers]) == ALICE
    assert ap.requested_impersonation([("Accept", "application/json")]) is None


@given(
    st.from_regex(r"[a-z][a-z0-9:@.-]{0,30}", fullmatch=True),
    st.lists(st.from_regex(r"[a-z:][a-z0-9:.-]{0,20}", fullmatch=True), max_size=4),
    st.dictionaries(
        st.from_regex(r"[a-z][a-z0-9./-]{0,20}", fullmatch=True),
        st.lists(st.from_regex(r"[A-Za-z0-9=]{1,10}", fullmatch=True), min_size=1, max_size=2),
        max_size=3,
    ),
)
def test_impersonation_round_trips_for_any_identity(
    user: str, groups: list[str], extra: dict[str, list[str]]
) -> None:
    wanted = ap.UserInfo(
        username=user,
        groups=tuple(groups),
        extra=tuple((k, tuple(v)) for k, v in sorted(extra.items())),
    )
    assert ap.requested_impersonation(ap.impersonation_headers(wanted)) == wanted


def test_impersonation_needs_one_user() -> None:
    twice = ap.requested_impersonation([("Impersonate-User", "a"), ("Impersonate-User", "b")])
    assert isinstance(twice, FieldError)
    assert "once" in str(twice)
    missing = ap.requested_impersonation([("Impersonate-Group", "g"), ("impersonate-uid", "1")])
    assert isinstance(missing, FieldError)
    assert "Impersonate-User" in str(missing)


def test_impersonation_checks_as_the_api_server_makes_them() -> None:
    assert ap.impersonation_checks(ALICE) == (
        {"verb": "impersonate", "resource": "serviceaccounts", "namespace": "team", "name": "alice"},
        {"verb": "impersonate", "resource": "groups", "name": "system:serviceaccounts"},
        {"verb": "impersonate", "resource": "groups", "name": "system:authenticated"},
        {"verb": "impersonate", "group": "authentication.k8s.io", "resource": "uids", "name": "u-1"},
        {
            "verb": "impersonate",
            "group": "authentication.k8s.io",
            "resource": "userextras",
            "subresource": "authentication.kubernetes.io/credential-id",
            "name": "JTI=1",
        },
    )
    assert ap.impersonation_checks(ap.UserInfo("jane")) == (
        {"verb": "impersonate", "resource": "users", "name": "jane"},
    )


def test_request_headers_are_an_allowlist() -> None:
    kept = ap.forward_request_headers(
        [
            ("Authorization", "Bearer secret"),
            ("Impersonate-User", "root"),
            ("Accept", "application/json"),
            ("Content-Type", "application/apply-patch+yaml"),
            ("Connection", "keep-alive"),
            ("Accept-Encoding", "gzip"),
        ]
    )
    assert kept == [("accept", "application/json"), ("content-type", "application/apply-patch+yaml")]
    too_long = ap.forward_request_headers([("Accept", "x" * 9000)])
    assert isinstance(too_long, FieldError)
    assert too_long.field == "accept"
    too_many = ap.forward_request_headers([("Accept", "x")] * 65)
    assert isinstance(too_many, FieldError)


def test_response_headers_are_an_allowlist() -> None:
    assert ap.forward_response_headers(
        [
            ("Content-Type", "application/json"),
            ("Content-Length", "3"),
            ("Audit-Id", "1"),
            ("Set-Cookie", "x"),
        ]
    ) == [("content-type", "application/json"), ("audit-id", "1")]


@pytest.mark.parametrize(
    ("method", "path", "streaming"),
    [
        ("GET", "/api/v1/pods?watch=1", True),
        ("GET", "/api/v1/pods?watch=true&labelSelector=a", True),
        ("GET", "/api/v1/pods?watch=false", False),
        ("GET", "/api/v1/watch/pods", True),
        ("GET", "/api/v1/namespaces/a/pods/p/log?follow=true", True),
        ("GET", "/api/v1/namespaces/a/pods/p/log", False),
        ("GET", "/api/v1/pods", False),
        ("POST", "/api/v1/pods?watch=1", False),
    ],
)
def test_streaming(method: str, path: str, streaming: bool) -> None:
    assert ap.is_streaming(method, path) is streaming


@given(st.binary(max_size=2000), st.integers(1, 300))
def test_chunks_cover_the_data_in_bounded_pieces(data: bytes, size: int) -> None:
    pieces = list(ap.chunks(data, size))
    assert b"".join(pieces) == data
    assert all(0 < len(p) <= size for p in pieces)


@given(st.integers(1, 10_000), st.lists(st.tuples(st.booleans(), st.integers(0, 5000)), max_size=30))
def test_window_never_goes_negative_nor_over_its_ceiling(ceiling: int, steps: list[tuple[bool, int]]) -> None:
    window = ap.Window(ceiling)
    for spend, count in steps:
        if spend:
            after = window.spend(count)
            if count > window.available:
                assert after is None
            else:
                assert after == ap.Window(window.available - count)
                window = after
        else:
            granted = window.grant(count, ceiling)
            if window.available + count > ceiling:
                assert isinstance(granted, FieldError)
            else:
                assert isinstance(granted, ap.Window)
                window = granted
        assert 0 <= window.available <= ceiling


def test_failure_is_a_status() -> None:
    assert ap.failure(403, "no") == {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": "no",
        "reason": "Forbidden",
        "code": 403,
    }
    assert ap.failure(418, "tea")["reason"] == "Unknown"


def test_user_from_token_review() -> None:
    assert ap.user_from_review({"authenticated": False}) is None
    assert ap.user_from_review({"authenticated": True, "user": {}}) is None
    assert (
        ap.user_from_review(
            {
                "authenticated": True,
                "user": {
                    "username": "system:serviceaccount:team:alice",
                    "uid": "u-1",
                    "groups": ["system:serviceaccounts", "system:authenticated"],
                    "extra": {"authentication.kubernetes.io/credential-id": ["JTI=1"]},
                },
            }
        )
        == ALICE
    )


def test_routes_and_kubeconfig() -> None:
    assert ap.route(["a"]) == "/clusters/a"
    assert ap.route(["a", "b"]) == "/clusters/a/clusters/b"
    assert ap.route_errors("a/b") == []
    assert [str(e) for e in ap.route_errors("a//B")] == [
        "CLUSTER.1: must not be empty",
        "CLUSTER.2: must be lowercase letters, digits and '-', starting and ending alphanumeric",
    ]
    config = ap.kubeconfig(["a", "b"], "https://cell:8444/", "PEM", "tok")
    assert config["clusters"] == [
        {
            "name": "b",
            "cluster": {
                "server": "https://cell:8444/clusters/a/clusters/b",
                "certificate-authority-data": base64.b64encode(b"PEM").decode(),
            },
        }
    ]
    assert config["users"] == [{"name": "b-via-proxy", "user": {"token": "tok"}}]
    assert config["current-context"] == "b"
    bare = ap.kubeconfig(["a"], "https://cell:8444", None, None)
    assert bare["clusters"][0]["cluster"] == {"server": "https://cell:8444/clusters/a"}
    assert bare["users"][0]["user"] == {}


def test_limits_are_positive() -> None:
    with pytest.raises(ValueError, match="window_bytes"):
        ap.ProxyLimits(window_bytes=0)


def test_a_client_certificate_names_the_user_and_its_groups() -> None:
    cert = ap.ClientCertificate(
        "dave",
        ("team-a", "proxy-users"),
        key_type="ec",
        key_bits=256,
        curve="secp256r1",
        signature_hash="sha256",
    )
    assert ap.certificate_user(cert) == ap.UserInfo(
        username="dave", groups=("team-a", "proxy-users", "system:authenticated")
    )
    rsa = ap.ClientCertificate("erin", key_type="rsa", key_bits=3072, signature_hash="sha384")
    assert ap.certificate_user(rsa) == ap.UserInfo(username="erin", groups=("system:authenticated",))


@pytest.mark.parametrize(
    ("cert", "reason"),
    [
        (
            ap.ClientCertificate("a", key_type="rsa", key_bits=1024, signature_hash="sha256"),
            "RSA key of 1024 bits",
        ),
        (
            ap.ClientCertificate("a", key_type="ec", curve="secp521r1", signature_hash="sha256"),
            "EC key on secp521r1",
        ),
        (ap.ClientCertificate("a", key_type="ec", signature_hash="sha256"), "an unnamed curve"),
        (ap.ClientCertificate("a", key_type="ed25519", signature_hash=""), "a ed25519 key"),
        (
            ap.ClientCertificate("a", key_type="rsa", key_bits=2048, signature_hash="sha1"),
            "a signature with sha1",
        ),
        (ap.ClientCertificate("a", key_type="rsa", key_bits=2048, signature_hash=""), "with no hash"),
        (
            ap.ClientCertificate(
                "a", key_type="rsa", key_bits=2048, signature_hash="sha256", client_auth=False
            ),
            "without client authentication",
        ),
        (ap.ClientCertificate("", key_type="rsa", key_bits=2048, signature_hash="sha256"), "no Common Name"),
    ],
)
def test_a_client_certificate_is_refused_naming_why(cert: ap.ClientCertificate, reason: str) -> None:
    refused = ap.certificate_user(cert)
    assert isinstance(refused, str)
    assert reason in refused
