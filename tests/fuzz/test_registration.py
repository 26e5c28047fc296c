"""Fuzz target ``registration``: the webhook's pure parsing, and the real ASGI application driven
in-process (httpx.ASGITransport) with an in-memory token store and a real cell CA.

Invariant: ``parse_request`` returns a request or a FieldError naming a field; ``bearer_token``
a token without spaces or ``None``; the application answers 200 (only for a valid token and an
acceptable CSR), or 400/401/413/415/503 with a JSON ``{"error", "field"}`` body that names the
field; never 500.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from cryptography.x509.oid import NameOID
from hypothesis import event, given
from hypothesis import strategies as st

from lattice.adapters.cell_ca import CellCertificateAuthority
from lattice.adapters.registration_http import PayloadSettings, registration_app
from lattice.adapters.token_store_memory import InMemoryTokenStore
from lattice.domain import registration
from lattice.domain.errors import FieldError
from tests.fuzz import keys
from tests.fuzz.plugin import fuzz
from tests.fuzz.strategies import json_values, weird_strings
from tests.unit.strategies import names

CLUSTERS = ("alpha", "beta")
REFUSALS = {400, 401, 413, 415, 503}
# Header values httpx can send: visible Latin-1, spaces and tabs (no CR/LF).
header_text = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)


# ---------------------------------------------------------------- the pure parsing


GOOD_CSRS = {c: keys.csr("ec-p256", keys.cn(c)) for c in CLUSTERS}
BAD_CSRS = [
    keys.csr("ec-p256", keys.cn("gamma")),  # another cluster's name
    keys.csr("rsa-1024", keys.cn("alpha")),  # too small a key
    keys.csr("ec-p256", [*keys.cn("alpha"), (NameOID.ORGANIZATION_NAME, "system:masters")]),
    GOOD_CSRS["alpha"].replace("A", "B", 3),  # garbled
    "-----BEGIN CERTIFICATE REQUEST-----\nnot base64\n-----END CERTIFICATE REQUEST-----\n",
]
csr_values = st.one_of(
    st.sampled_from([*GOOD_CSRS.values(), *BAD_CSRS]),
    weird_strings,
    st.text(max_size=40).map(
        lambda t: f"-----BEGIN CERTIFICATE REQUEST-----\n{t}\n-----END CERTIFICATE REQUEST-----\n"
    ),
    st.just("x" * (registration.MAX_CSR_CHARS + 1)),
)
bodies = st.one_of(
    json_values,
    st.fixed_dictionaries(
        {
            "clusterName": st.one_of(names, weird_strings, json_values),
            "csr": st.one_of(csr_values, json_values),
        },
        optional={"extra": json_values, "clusterName ": json_values},
    ),
)


@given(body=bodies)
@fuzz("registration.parse_request", examples=300)
def test_parse_request(body: Any) -> None:
    parsed = registration.parse_request(body)
    if isinstance(parsed, FieldError):
        assert parsed.reason.strip()
        assert parsed.path or not isinstance(body, dict), parsed
    else:
        assert isinstance(parsed, registration.RegistrationRequest)
        assert parsed.cluster_name == body["clusterName"]
        assert parsed.csr_pem == body["csr"]


@given(
    header=st.one_of(
        st.none(),
        header_text,
        st.tuples(st.sampled_from(["Bearer", "bearer", "BEARER", "Basic", "Bearer\t", ""]), header_text).map(
            " ".join
        ),
    ),
    accept=st.one_of(
        st.none(),
        header_text,
        st.lists(
            st.sampled_from(
                [
                    "application/yaml",
                    "application/json",
                    "*/*",
                    "text/yaml;q=0.5",
                    ";q=x",
                    "q=nan",
                    "application/yaml;q=inf",
                    ",",
                ]
            ),
            max_size=4,
        ).map(",".join),
    ),
)
@fuzz("registration.headers", examples=300)
def test_bearer_token_and_accept(header: str | None, accept: str | None) -> None:
    token = registration.bearer_token(header)
    if token is not None:
        assert token
        assert " " not in token
        assert registration.bearer_token(f"Bearer {token}") == token
    assert registration.wants_yaml(accept) in (True, False)


# ---------------------------------------------------------------- the ASGI application


class Webhook:
    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.tokens = InMemoryTokenStore()
        self.app = registration_app(
            token_store=self.tokens,
            signer=CellCertificateAuthority.generate(),
            payload=PayloadSettings(
                grpc_endpoint="cell.example.com:50051", image="ghcr.io/lattice-dev/lattice:0.1.0"
            ),
        )

    def send(self, cluster: str, request: dict[str, Any]) -> httpx.Response:
        async def go() -> httpx.Response:
            token = await self.tokens.issue(cluster)
            headers = dict(request["headers"])
            authorization = request["authorization"]
            if authorization == "valid":
                headers["Authorization"] = f"Bearer {token}"
            elif authorization is not None:
                headers["Authorization"] = authorization
            encoded = {name: value.encode("latin-1") for name, value in headers.items()}  # as sent
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="https://cell.example.com") as client:
                return await client.request(
                    request["method"], request["path"], content=request["body"], headers=encoded
                )

        return self.loop.run_until_complete(go())


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    hook = Webhook()
    yield hook
    hook.loop.close()


def _json_body(value: Any) -> bytes:
    return json.dumps(value).encode()


def _good_body(cluster: str) -> st.SearchStrategy[bytes]:
    """The request a registering cluster makes, sometimes with one thing changed."""
    good = {"clusterName": cluster, "csr": GOOD_CSRS[cluster]}
    changed = st.fixed_dictionaries(
        {
            "clusterName": st.sampled_from([cluster, *CLUSTERS]),
            "csr": st.sampled_from([*GOOD_CSRS.values(), *BAD_CSRS]),
        }
    )
    return st.one_of(st.just(good), changed).map(_json_body)


BODY_KINDS = ["good"] * 4 + ["json", "binary", "text", "oversized", "deep", "long number"]


@st.composite
def requests(draw: st.DrawFn, cluster: str) -> dict[str, Any]:
    kind = draw(st.sampled_from(BODY_KINDS))
    body = draw(
        {
            "good": _good_body(cluster),
            "json": bodies.map(_json_body),
            "binary": st.binary(max_size=300),
            "text": st.text(max_size=100).map(lambda t: t.encode("utf-8", "surrogatepass")),
            "oversized": st.just(b"x" * (registration.MAX_BODY_BYTES + 1)),
            "deep": st.integers(1, 5000).map(lambda n: b"[" * n + b"]" * n),
            "long number": st.integers(1, 6000).map(lambda n: b'{"clusterName": ' + b"9" * n + b"}"),
        }[kind]
    )
    rare = draw(st.sampled_from([False] * 19 + [True]))  # off the route: 404/405
    authorization = draw(st.sampled_from(["valid"] * 4 + [None, "other"]))
    return {
        "method": draw(st.sampled_from(["GET", "PUT", "DELETE"])) if rare and draw(st.booleans()) else "POST",
        "path": draw(st.sampled_from(["/", "/api/clusters/register/x"]))
        if rare
        else registration.REGISTER_PATH,
        "authorization": draw(header_text) if authorization == "other" else authorization,
        "headers": draw(
            st.fixed_dictionaries(
                {},
                optional={
                    "Content-Type": st.one_of(
                        st.sampled_from(
                            [
                                "application/json",
                                "application/json; charset=utf-8",
                                "APPLICATION/JSON",
                                "",
                                "text/plain",
                                "application/yaml",
                            ]
                        ),
                        header_text,
                    ),
                    "Accept": st.one_of(
                        st.sampled_from(["application/yaml", "application/json", "*/*"]), header_text
                    ),
                },
            )
        ),
        "body": body,
    }


@given(data=st.data(), cluster=st.sampled_from(CLUSTERS))
@fuzz("registration.webhook", examples=400)
def test_webhook(webhook: Webhook, data: st.DataObject, cluster: str) -> None:
    request = data.draw(requests(cluster), label="request")
    response = webhook.send(cluster, request)
    event(f"status {response.status_code}")
    routed = request["method"] == "POST" and request["path"] == registration.REGISTER_PATH
    allowed = REFUSALS | {200} if routed else {404, 405}
    assert response.status_code in allowed, (response.status_code, response.text)
    if response.status_code == 200:
        if registration.wants_yaml(request["headers"].get("Accept")):
            assert "kind: Secret" in response.text
        else:
            assert set(response.json()) == {"grpcEndpoint", "caBundle", "certificate", "manifests"}
        return
    answer = response.json()
    assert set(answer) == {"error", "field"}, answer
    assert answer["error"].strip(), answer
    assert answer["field"].strip(), answer


# ---------------------------------------------------------------- found by the fuzzer, fixed


def test_found_deeply_nested_json_body_is_a_400(webhook: Webhook) -> None:
    body = b"[" * 3000 + b"]" * 3000  # 6 KB, well under the 64 KiB limit
    request = {
        "method": "POST",
        "path": registration.REGISTER_PATH,
        "authorization": "valid",
        "headers": {},
        "body": body,
    }
    response = webhook.send("alpha", request)
    assert response.status_code == 400, response.text
    assert response.json()["field"] == "<body>"


def test_found_json_integer_over_4300_digits_is_a_400(webhook: Webhook) -> None:
    body = b'{"clusterName": ' + b"9" * 4301 + b', "csr": ""}'
    request = {
        "method": "POST",
        "path": registration.REGISTER_PATH,
        "authorization": "valid",
        "headers": {},
        "body": body,
    }
    response = webhook.send("alpha", request)
    assert response.status_code == 400, response.text
