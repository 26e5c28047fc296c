"""The Kubernetes API proxy over the agents' outbound streams: the decisions, no I/O.

A cell serves the API of each child at ``/clusters/<child>/<path>`` on its proxy endpoint. The
request travels to the child's agent as ``ApiProxyToAgent`` frames on the agent's own stream;
the agent performs it against its API server impersonating the caller and streams the
response back as ``ApiProxyFromAgent`` frames (docs/api-proxy.md). A path that names a
grandchild (``/clusters/<child>/clusters/<grandchild>/...``) is relayed by the child's agent to
the cell in its own cluster, which proxies it in turn.

This module decides, for both ends:

* :func:`parse_target` - which child a request path names, and the path on that child;
* :func:`verb_for` / :func:`access_attributes` - the SubjectAccessReview the cell asks: may the
  caller use ``latticeclusters/proxy`` on that cluster, with the verb of the HTTP method
  (``get``, ``create``, ``update``, ``patch``, ``delete``) as for ``nodes/proxy``;
* :func:`requested_impersonation` / :func:`impersonation_checks` - a caller that sends
  ``Impersonate-*`` headers (an agent relaying for a grandchild) acts as someone else only if
  it may ``impersonate`` them, as on an API server;
* :func:`forward_request_headers`, :func:`forward_response_headers`,
  :func:`impersonation_headers` - what crosses the proxy (allowlists; never the caller's
  credentials);
* :func:`certificate_user` - a verified client certificate's user (CN) and groups (O), as the
  API server's x509 authenticator maps them, refused unless FIPS-approved;
* :func:`is_streaming` - watches and followed logs have no overall deadline;
* :class:`Window` - the flow control of a response: the agent sends body bytes only within
  the credit the cell granted, so a slow client holds its own response, never the stream.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, quote, unquote

from attrs import field, frozen, validators

from lattice.domain.agent_identity import cluster_name_errors
from lattice.domain.errors import FieldError

PATH_PREFIX = "/clusters/"
"""The proxy's paths: ``/clusters/<name>/<the API server's path>``."""
API_GROUP = "lattice.dev"
RESOURCE = "latticeclusters"
SUBRESOURCE = "proxy"

VERBS: Mapping[str, str] = {
    "GET": "get",
    "HEAD": "get",
    "POST": "create",
    "PUT": "update",
    "PATCH": "patch",
    "DELETE": "delete",
}
"""HTTP method -> the verb checked on ``latticeclusters/proxy`` (as the API server checks
``nodes/proxy`` and ``services/proxy``)."""

REQUEST_HEADERS = frozenset(
    {
        "accept",
        "content-type",
        "user-agent",
        "kubectl-command",
        "kubectl-session",
        "x-kubernetes-pf-flowschema-uid",
        "x-kubernetes-pf-prioritylevel-uid",
    }
)
"""Request headers forwarded to the target (lower case). Not ``Authorization`` (the agent
acts with its own credentials and the caller's identity), not ``Impersonate-*`` (set from the
authenticated identity), not ``Accept-Encoding`` (bodies travel as the server writes them) and
no hop-by-hop header."""

RESPONSE_HEADERS = frozenset(
    {
        "content-type",
        "audit-id",
        "warning",
        "cache-control",
        "x-kubernetes-pf-flowschema-uid",
        "x-kubernetes-pf-prioritylevel-uid",
        "content-disposition",
    }
)
"""Response headers passed back to the client (lower case); the proxy frames the body itself
(no ``Content-Length`` or ``Transfer-Encoding`` from the target)."""

IMPERSONATE_USER = "impersonate-user"
IMPERSONATE_GROUP = "impersonate-group"
IMPERSONATE_UID = "impersonate-uid"
IMPERSONATE_EXTRA = "impersonate-extra-"

_MAX_HEADERS = 64
_MAX_HEADER_VALUE = 8 * 1024
_SERVICE_ACCOUNT = re.compile(r"^system:serviceaccount:([^:]+):([^:]+)$")


@frozen
class ProxyLimits:
    """Bounds of the proxy, per request and per agent stream."""

    max_request_body: int = field(default=3 * 1024 * 1024, validator=validators.gt(0))
    """The API server's own limit for an object is 3 MiB; a larger body is refused (413)."""
    max_response_body: int = field(default=256 * 1024 * 1024, validator=validators.gt(0))
    """A response that is not streaming (a list) is cut off after this many bytes."""
    chunk_bytes: int = field(default=64 * 1024, validator=validators.gt(0))
    """Largest ``data`` frame: the stream's other messages (heartbeats) wait at most one."""
    window_bytes: int = field(default=1024 * 1024, validator=validators.gt(0))
    """Body bytes an agent may send ahead of the client: the cell's buffer per request."""
    max_concurrent: int = field(default=32, validator=validators.gt(0))
    """Requests open at once on one agent stream; more are answered 429."""
    head_timeout: float = field(default=30.0, validator=validators.gt(0))
    """Seconds until the status and headers must have arrived (504 otherwise)."""
    request_timeout: float = field(default=300.0, validator=validators.gt(0))
    """Seconds a request that is not streaming may take in all."""


@frozen
class UserInfo:
    """An authenticated caller (what TokenReview answers, or a verified client certificate)."""

    username: str
    uid: str = ""
    groups: tuple[str, ...] = ()
    extra: tuple[tuple[str, tuple[str, ...]], ...] = ()


@frozen
class Target:
    """The cluster a proxy path names, and the path (with the query) on that cluster."""

    cluster: str
    path: str


def parse_target(path: str, query: str = "") -> Target | FieldError:
    """``/clusters/<name>/<rest>`` -> ``Target(name, "/<rest>?<query>")``."""
    if not path.startswith(PATH_PREFIX):
        return FieldError(("<path>",), f"must start with {PATH_PREFIX}<cluster>/")
    name, slash, rest = path[len(PATH_PREFIX) :].partition("/")
    for error in cluster_name_errors(name, ("<path>", "cluster")):
        return error
    rest = slash + rest
    if not rest or rest == "/":
        return FieldError(("<path>",), f"names cluster {name} but no API path after it (e.g. /api)")
    if any(segment in {".", ".."} for segment in rest.split("/")) or "//" in rest:
        return FieldError(("<path>",), "must not contain empty, '.' or '..' segments")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in rest + query):
        return FieldError(("<path>",), "must not contain spaces or control characters")
    return Target(name, f"{rest}?{query}" if query else rest)


def relays(path: str) -> bool:
    """Whether an agent relays this path to the cell in its cluster (a descendant's request)."""
    return path.startswith(PATH_PREFIX)


def verb_for(method: str) -> str | None:
    """The verb checked for an HTTP method; None for a method the proxy does not carry."""
    return VERBS.get(method.upper())


def access_attributes(user: UserInfo, cluster: str, verb: str) -> dict[str, Any]:
    """The spec of the SubjectAccessReview the cell asks before proxying."""
    return review_spec(
        user,
        {
            "group": API_GROUP,
            "resource": RESOURCE,
            "subresource": SUBRESOURCE,
            "name": cluster,
            "verb": verb,
        },
    )


def review_spec(user: UserInfo, resource_attributes: Mapping[str, str]) -> dict[str, Any]:
    spec: dict[str, Any] = {"user": user.username, "resourceAttributes": dict(resource_attributes)}
    if user.groups:
        spec["groups"] = list(user.groups)
    if user.uid:
        spec["uid"] = user.uid
    if user.extra:
        spec["extra"] = {key: list(values) for key, values in user.extra}
    return spec


def requested_impersonation(headers: Iterable[tuple[str, str]]) -> UserInfo | FieldError | None:
    """The identity a caller asks to act as (``Impersonate-*`` headers), None if it asks none."""
    user: str | None = None
    uid = ""
    groups: list[str] = []
    extra: dict[str, list[str]] = {}
    seen = False
    for raw_name, value in headers:
        name = raw_name.lower()
        if name == IMPERSONATE_USER:
            if user is not None:
                return FieldError(("Impersonate-User",), "must be given once")
            user = value
        elif name == IMPERSONATE_GROUP:
            groups.append(value)
        elif name == IMPERSONATE_UID:
            uid = value
        elif name.startswith(IMPERSONATE_EXTRA):
            extra.setdefault(unquote(name[len(IMPERSONATE_EXTRA) :]), []).append(value)
        else:
            continue
        seen = True
    if not seen:
        return None
    if not user:
        return FieldError(
            ("Impersonate-User",), "is required with Impersonate-Group, -Uid or -Extra-* (and not empty)"
        )
    return UserInfo(
        username=user,
        uid=uid,
        groups=tuple(groups),
        extra=tuple((key, tuple(values)) for key, values in sorted(extra.items())),
    )


def impersonation_checks(wanted: UserInfo) -> tuple[dict[str, str], ...]:
    """The ``impersonate`` resource attributes an impersonator must be allowed, as the API
    server checks them: the user (or the service account), each group, the uid, each extra."""
    match = _SERVICE_ACCOUNT.match(wanted.username)
    checks: list[dict[str, str]] = [
        {"verb": "impersonate", "resource": "serviceaccounts", "namespace": match[1], "name": match[2]}
        if match
        else {"verb": "impersonate", "resource": "users", "name": wanted.username}
    ]
    checks += [{"verb": "impersonate", "resource": "groups", "name": group} for group in wanted.groups]
    if wanted.uid:
        checks.append(
            {"verb": "impersonate", "group": "authentication.k8s.io", "resource": "uids", "name": wanted.uid}
        )
    for key, values in wanted.extra:
        checks += [
            {
                "verb": "impersonate",
                "group": "authentication.k8s.io",
                "resource": "userextras",
                "subresource": key,
                "name": value,
            }
            for value in values
        ]
    return tuple(checks)


def impersonation_headers(user: UserInfo) -> list[tuple[str, str]]:
    """The headers with which the agent acts as ``user`` on its API server."""
    headers = [("Impersonate-User", user.username)]
    headers += [("Impersonate-Group", group) for group in user.groups]
    if user.uid:
        headers.append(("Impersonate-Uid", user.uid))
    for key, values in user.extra:
        # header names cannot hold "/" (extra keys often do): percent-encoded, as the API server expects
        headers += [(f"Impersonate-Extra-{quote(key, safe='')}", value) for value in values]
    return headers


def forward_request_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]] | FieldError:
    """The allowed request headers, bounded in number and size."""
    kept = [(name.lower(), value) for name, value in headers if name.lower() in REQUEST_HEADERS]
    if len(kept) > _MAX_HEADERS:
        return FieldError(("<headers>",), f"at most {_MAX_HEADERS} forwarded headers")
    for name, value in kept:
        if len(value) > _MAX_HEADER_VALUE:
            return FieldError((name,), f"longer than {_MAX_HEADER_VALUE} characters")
    return kept


def forward_response_headers(headers: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    return [(name.lower(), value) for name, value in headers if name.lower() in RESPONSE_HEADERS][
        :_MAX_HEADERS
    ]


def is_streaming(method: str, path: str) -> bool:
    """A watch or a followed log: long-lived, no overall deadline, no size limit."""
    if method.upper() != "GET":
        return False
    base, _, query = path.partition("?")
    params = dict(parse_qsl(query, keep_blank_values=True))
    if params.get("watch", "").lower() in {"1", "true"}:
        return True
    if "/watch/" in base or base.endswith("/watch"):
        return True
    return base.endswith("/log") and params.get("follow", "").lower() in {"1", "true"}


def chunks(data: bytes, size: int) -> Iterator[bytes]:
    """``data`` in pieces of at most ``size`` bytes (nothing for empty data)."""
    for start in range(0, len(data), size):
        yield data[start : start + size]


@frozen
class Window:
    """Credit for response body bytes: the agent spends it, the cell grants more."""

    available: int

    def spend(self, count: int) -> Window | None:
        """The window after sending ``count`` bytes; None if that exceeds the credit."""
        if count > self.available:
            return None
        return Window(self.available - count)

    def grant(self, count: int, ceiling: int) -> Window | FieldError:
        """More credit; more than ``ceiling`` outstanding is a peer's error."""
        total = self.available + count
        if total > ceiling:
            return FieldError(("windowUpdate",), f"credit {total} exceeds the limit {ceiling}")
        return Window(total)


def status_text(code: int, message: str, reason: str) -> dict[str, Any]:
    """A ``metav1.Status`` failure body, so kubectl prints the message."""
    return {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }


REASONS: Mapping[int, str] = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    405: "MethodNotAllowed",
    413: "RequestEntityTooLarge",
    429: "TooManyRequests",
    500: "InternalError",
    501: "NotImplemented",
    502: "BadGateway",
    503: "ServiceUnavailable",
    504: "Timeout",
}


def failure(code: int, message: str) -> dict[str, Any]:
    return status_text(code, message, REASONS.get(code, "Unknown"))


def user_from_review(status: Mapping[str, Any]) -> UserInfo | None:
    """The user of a TokenReview's status, None unless it says authenticated."""
    if status.get("authenticated") is not True:
        return None
    user = status.get("user") or {}
    name = user.get("username")
    if not isinstance(name, str) or not name:
        return None
    extra = user.get("extra") or {}
    return UserInfo(
        username=name,
        uid=str(user.get("uid") or ""),
        groups=tuple(str(g) for g in user.get("groups") or ()),
        extra=tuple(
            (str(key), tuple(str(v) for v in values or ()))
            for key, values in sorted(extra.items())
            if isinstance(values, Sequence)
        ),
    )


FIPS_CURVES = frozenset({"secp256r1", "secp384r1"})
FIPS_HASHES = frozenset({"sha256", "sha384", "sha512"})
MIN_RSA_BITS = 2048


@frozen
class ClientCertificate:
    """What the cell reads from a client certificate its TLS layer verified against the cluster's
    client CA (``lattice.adapters.api_proxy_http``)."""

    common_name: str
    organizations: tuple[str, ...] = ()
    key_type: str = "rsa"
    """``rsa``, ``ec``, or the name of another key type (refused)."""
    key_bits: int = 0
    curve: str = ""
    signature_hash: str = ""
    """The hash of the issuer's signature (``sha256``...), empty when it has none (Ed25519)."""
    client_auth: bool = True
    """Its extended key usage allows client authentication (or it has none)."""


def certificate_user(cert: ClientCertificate) -> UserInfo | str:
    """The caller a client certificate names: the user is its Common Name, the groups its
    Organizations (as the API server's x509 authenticator), no uid; a str says why it is refused
    (a key or signature that is not FIPS-approved, no client-auth usage, no Common Name)."""
    problems: list[str] = []
    if cert.key_type == "rsa":
        if cert.key_bits < MIN_RSA_BITS:
            problems.append(f"an RSA key of {cert.key_bits} bits (at least {MIN_RSA_BITS})")
    elif cert.key_type == "ec":
        if cert.curve not in FIPS_CURVES:
            problems.append(f"an EC key on {cert.curve or 'an unnamed curve'} (P-256 or P-384)")
    else:
        problems.append(f"a {cert.key_type} key (RSA of 2048 bits or more, ECDSA P-256 or P-384)")
    if cert.signature_hash not in FIPS_HASHES:
        problems.append(f"a signature with {cert.signature_hash or 'no hash'} (SHA-256, SHA-384 or SHA-512)")
    if not cert.client_auth:
        problems.append("an extended key usage without client authentication")
    if not cert.common_name:
        problems.append("no Common Name (the user name)")
    if problems:
        return "the client certificate has " + "; ".join(problems)
    return UserInfo(username=cert.common_name, groups=(*cert.organizations, "system:authenticated"))


def route(clusters: Sequence[str]) -> str:
    """The proxy path of a cluster reached through its ancestors below the cell:
    ``("child", "grandchild")`` -> ``/clusters/child/clusters/grandchild``."""
    return "".join(f"{PATH_PREFIX}{name}" for name in clusters)


def route_errors(text: str) -> list[FieldError]:
    """``CLUSTER`` or ``CHILD/GRANDCHILD/...``: every name a cluster name."""
    names = text.split("/")
    errors: list[FieldError] = []
    for index, name in enumerate(names):
        errors += cluster_name_errors(name, ("CLUSTER", str(index)))
    return errors


def kubeconfig(
    path: Sequence[str],
    proxy_url: str,
    ca_pem: str | None,
    token: str | None,
    client_certificate: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A kubeconfig whose server is the cell's proxy path for the cluster at ``path``; its user
    a bearer ``token``, else ``client_certificate`` (base64 certificate and key data, as a
    kubeconfig holds them)."""
    name = path[-1]
    cluster: dict[str, Any] = {"server": proxy_url.rstrip("/") + route(path)}
    if ca_pem:
        cluster["certificate-authority-data"] = base64.b64encode(ca_pem.encode()).decode()
    user: dict[str, Any] = {}
    if token:
        user["token"] = token
    elif client_certificate is not None:
        user["client-certificate-data"], user["client-key-data"] = client_certificate
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": name, "cluster": cluster}],
        "users": [{"name": f"{name}-via-proxy", "user": user}],
        "contexts": [{"name": name, "context": {"cluster": name, "user": f"{name}-via-proxy"}}],
        "current-context": name,
    }
