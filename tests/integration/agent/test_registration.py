"""The registration webhook over real HTTPS on loopback: tokens, CSRs, limits, TLS policy."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import signal
import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest
from cryptography import x509
from ruamel.yaml import YAML

from lattice.adapters import registration_http, tls
from lattice.adapters.token_store_memory import InMemoryTokenStore
from lattice.domain import capi
from lattice.ports.registration import TokenStoreUnavailable

from .conftest import Pki, running_agent, running_cell

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

GRPC_ENDPOINT = "127.0.0.1:50051"


class Clock:
    def __init__(self) -> None:
        self.now = dt.datetime.now(dt.UTC)

    def __call__(self) -> dt.datetime:
        return self.now


@attrs.define
class Webhook:
    server: registration_http.RegistrationServer
    store: InMemoryTokenStore
    clock: Clock
    client: httpx.AsyncClient
    pki: Pki

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}/api/clusters/register"

    async def register(self, cluster: str, token: str, csr: str, **headers: str) -> httpx.Response:
        return await self.client.post(
            self.url,
            json={"clusterName": cluster, "csr": csr},
            headers={"Authorization": f"Bearer {token}", **headers},
        )


@contextlib.asynccontextmanager
async def running_webhook(
    cell_pki: Pki,
    grpc_endpoint: str = GRPC_ENDPOINT,
    agent_args: Callable[[str], Sequence[str]] | None = None,
    addons: Callable[[str], Awaitable[Sequence[Mapping[str, Any]]]] | None = None,
    store: InMemoryTokenStore | None = None,
) -> AsyncIterator[Webhook]:
    clock = Clock()
    store = InMemoryTokenStore(clock=clock) if store is None else store
    app = registration_http.registration_app(
        token_store=store,
        signer=cell_pki.ca,
        payload=registration_http.PayloadSettings(
            grpc_endpoint=grpc_endpoint,
            image="ghcr.io/lattice/lattice:test",
            agent_args=agent_args,
            addons=addons,
        ),
    )
    context = tls.server_context(cell_pki.server, require_client_cert=False, alpn=tls.HTTP1_ALPN)
    server = registration_http.RegistrationServer(app, context)
    await server.start()
    client_context = tls.client_context(None, ca=cell_pki.server.ca, alpn=tls.HTTP1_ALPN)
    try:
        async with httpx.AsyncClient(verify=client_context, timeout=10) as client:
            yield Webhook(server=server, store=store, clock=clock, client=client, pki=cell_pki)
    finally:
        await server.stop()


@pytest.fixture
async def webhook(cell_pki: Pki) -> AsyncIterator[Webhook]:
    async with running_webhook(cell_pki) as hook:
        yield hook


def openssl_csr(directory: Path, cluster: str) -> tuple[str, Path]:
    """Key and CSR made exactly as the compiled kubeadm script makes them."""
    directory.mkdir(parents=True, exist_ok=True)
    key, csr = directory / "agent.key", directory / "agent.csr"
    subprocess.run(
        [
            "openssl",
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-sha256",
            "-keyout",
            str(key),
            "-out",
            str(csr),
            "-subj",
            f"/CN={cluster}",
        ],
        check=True,
        capture_output=True,
    )
    return csr.read_text(), key


async def test_register_returns_a_signed_certificate_ca_bundle_and_agent_manifests(
    webhook: Webhook, tmp_path
):
    token = await webhook.store.issue("c1")
    csr, _key = openssl_csr(tmp_path, "c1")
    response = await webhook.register("c1", token, csr)
    assert response.status_code == 200, response.text
    body = response.json()
    assert set(body) == {"grpcEndpoint", "caBundle", "certificate", "manifests"}
    assert body["grpcEndpoint"] == GRPC_ENDPOINT
    assert body["caBundle"] == webhook.pki.ca.ca_bundle_pem()
    cert = x509.load_pem_x509_certificate(body["certificate"].encode())
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(body["caBundle"].encode()))
    assert cert.subject.rfc4514_string() == "CN=c1"
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.UniformResourceIdentifier) == ["spiffe://lattice/cluster/c1"]
    docs = list(YAML(typ="safe").load_all(body["manifests"]))
    secret = next(d for d in docs if d["kind"] == "Secret")
    assert base64.b64decode(secret["data"]["tls.crt"]).decode() == body["certificate"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    assert GRPC_ENDPOINT in deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "PRIVATE KEY" not in response.text
    # the same token cannot be used twice
    again = await webhook.register("c1", token, csr)
    assert again.status_code == 401
    assert again.json()["field"] == "Authorization"


async def test_signals_stay_the_process_s_while_the_server_runs(cell_pki: Pki) -> None:
    """The process's composition root handles SIGTERM and SIGINT (the operator stops everything
    in order); a running webhook must not take them over as uvicorn does by default."""
    handled = (signal.SIGTERM, signal.SIGINT)
    before = {sig: signal.getsignal(sig) for sig in handled}
    async with running_webhook(cell_pki) as hook:
        assert (await hook.client.get(hook.url)).status_code == 405
        assert {sig: signal.getsignal(sig) for sig in handled} == before
    assert {sig: signal.getsignal(sig) for sig in handled} == before


async def test_yaml_is_returned_when_asked_for(webhook: Webhook, tmp_path):
    token = await webhook.store.issue("c1")
    csr, _ = openssl_csr(tmp_path, "c1")
    response = await webhook.register("c1", token, csr, Accept="application/yaml")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/yaml")
    kinds = [d["kind"] for d in YAML(typ="safe").load_all(response.text)]
    assert kinds == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Secret",
        "Deployment",
    ]


@pytest.mark.parametrize(
    "case", ["expired", "revoked", "unknown-cluster", "wrong-token", "other-cluster", "missing"]
)
async def test_bad_tokens_get_401(webhook: Webhook, tmp_path, case):
    token = await webhook.store.issue("c1")
    other_token = await webhook.store.issue("c2")
    csr, _ = openssl_csr(tmp_path, "c1")
    cluster = "c1"
    if case == "expired":
        webhook.clock.now += dt.timedelta(hours=1, seconds=1)
    elif case == "revoked":
        await webhook.store.revoke("c1")
    elif case == "unknown-cluster":
        cluster = "c3"
        csr, _ = openssl_csr(tmp_path / "c3", "c3")
    elif case == "wrong-token":
        token = token[::-1]
    elif case == "other-cluster":
        token = other_token
    if case == "missing":
        response = await webhook.client.post(webhook.url, json={"clusterName": "c1", "csr": csr})
    else:
        response = await webhook.register(cluster, token, csr)
    assert response.status_code == 401
    assert response.json()["field"] == "Authorization"


async def test_malformed_bodies_get_400_naming_the_field_and_do_not_burn_the_token(
    webhook: Webhook, tmp_path
):
    token = await webhook.store.issue("c1")
    headers = {"Authorization": f"Bearer {token}"}
    cases = [
        (b"{not json", "<body>", "not valid JSON"),
        (b"[]", "<root>", "JSON object"),
        (json.dumps({"clusterName": "c1"}).encode(), "csr", "required"),
        (json.dumps({"clusterName": "C_1", "csr": "x"}).encode(), "clusterName", "lowercase"),
        (json.dumps({"clusterName": "c1", "csr": "hello"}).encode(), "csr", "not a PEM"),
        (
            json.dumps({"clusterName": "c1", "csr": "-----BEGIN CERTIFICATE REQUEST-----\nAA==\n"}).encode(),
            "csr",
            "not a parsable",
        ),
        (
            json.dumps({"clusterName": "c1", "csr": openssl_csr(tmp_path / "x", "intruder")[0]}).encode(),
            "csr",
            "CN=c1",
        ),
        (b"\xff\xfe", "<body>", "not valid JSON"),
    ]
    for body, field, fragment in cases:
        response = await webhook.client.post(
            webhook.url, content=body, headers={**headers, "Content-Type": "application/json"}
        )
        assert response.status_code == 400, (body, response.text)
        assert response.json()["field"] == field
        assert fragment in response.json()["error"]
    # the token was released after each refused CSR: a corrected request still succeeds
    csr, _ = openssl_csr(tmp_path, "c1")
    assert (await webhook.register("c1", token, csr)).status_code == 200


async def test_oversized_bodies_get_413_and_the_server_stays_up(webhook: Webhook, tmp_path):
    token = await webhook.store.issue("c1")
    headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
    big = b'{"clusterName": "c1", "csr": "' + b"A" * (65 * 1024) + b'"}'
    response = await webhook.client.post(webhook.url, content=big, headers=headers)
    assert response.status_code == 413

    async def chunks():
        for _ in range(80):
            yield b"A" * 1024

    streamed = await webhook.client.post(webhook.url, content=chunks(), headers=headers)
    assert streamed.status_code == 413
    csr, _ = openssl_csr(tmp_path, "c1")
    assert (await webhook.register("c1", token, csr)).status_code == 200


async def test_other_methods_paths_and_content_types(webhook: Webhook):
    token = await webhook.store.issue("c1")
    get = await webhook.client.get(webhook.url)
    assert get.status_code == 405
    assert get.json()["field"] == "<method>"
    missing = await webhook.client.post(webhook.url.replace("register", "nope"), json={})
    assert missing.status_code == 404
    text = await webhook.client.post(
        webhook.url,
        content=b"clusterName=c1",
        headers={"Authorization": f"Bearer {token}", "Content-Type": "text/plain"},
    )
    assert text.status_code == 415


async def test_concurrent_use_of_one_token_succeeds_exactly_once(webhook: Webhook, tmp_path):
    token = await webhook.store.issue("c1")
    csr, _ = openssl_csr(tmp_path, "c1")
    responses = await asyncio.gather(*(webhook.register("c1", token, csr) for _ in range(8)))
    assert sorted(r.status_code for r in responses) == [200] + [401] * 7


async def test_the_compiled_kubeadm_registration_script_registers_with_the_webhook(
    webhook: Webhook, tmp_path
):
    """Cross-check with the compiler: run the script's own openssl + curl steps against us."""
    token = await webhook.store.issue("c1")
    script = capi.registration_script(
        "c1", capi.ParentEndpoint(host="127.0.0.1", bootstrap_port=webhook.server.port)
    )
    lines = script.splitlines()
    registration_part = "\n".join(
        lines[: next(i for i, line in enumerate(lines) if line.startswith("kubectl"))]
    )
    bootstrap = tmp_path / "bootstrap"
    bootstrap.mkdir()
    (bootstrap / "bootstrap-token").write_text(token)
    (bootstrap / "ca.crt").write_text(webhook.pki.ca.ca_bundle_pem())
    process = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        registration_part,
        env={"LATTICE_BOOTSTRAP_DIR": str(bootstrap), "PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _stdout, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()
    docs = list(YAML(typ="safe").load_all((bootstrap / "agent.yaml").read_text()))
    assert [d["kind"] for d in docs][-1] == "Deployment"
    assert (bootstrap / "agent.key").exists()
    assert "PRIVATE KEY" not in (bootstrap / "agent.yaml").read_text()


async def test_registered_identity_connects_to_the_cell(cell_pki: Pki, tmp_path):
    """register -> CSR signed -> the agent connects with the certificate it was given."""
    async with running_cell(cell_pki) as cell, running_webhook(cell_pki, f"127.0.0.1:{cell.port}") as hook:
        token = await hook.store.issue("reg1")
        csr, key = openssl_csr(tmp_path, "reg1")
        body = (await hook.register("reg1", token, csr)).json()
        files = cell_pki.write_identity("reg1", body["certificate"].encode(), key.read_bytes())
        host, port = body["grpcEndpoint"].rsplit(":", 1)
        (tmp_path / "ca.crt").write_text(body["caBundle"])
        files = tls.TlsFiles(cert=files.cert, key=files.key, ca=tmp_path / "ca.crt")
        async with running_agent(files, "reg1", int(port), host=host):
            status = await cell.wait_connected("reg1")
            assert status.agent_version == "lattice/test"


def s_client(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "localhost", *args],
        input="",
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "accepted"),
    [
        (("-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"), True),
        (("-tls1_3", "-ciphersuites", "TLS_AES_256_GCM_SHA384", "-groups", "P-384"), True),
        (("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-GCM-SHA256"), True),
        (("-tls1_3", "-ciphersuites", "TLS_CHACHA20_POLY1305_SHA256"), False),
        (("-tls1_2", "-cipher", "ECDHE-ECDSA-CHACHA20-POLY1305"), False),
        (("-tls1_2", "-cipher", "ECDHE-ECDSA-AES128-SHA"), False),
        (("-tls1_2", "-cipher", "AES128-GCM-SHA256"), False),
        (("-tls1_3", "-groups", "X25519"), False),
        (("-tls1_1",), False),
        (("-tls1_3", "-sigalgs", "ed25519"), False),
    ],
    ids=[
        "tls13-aes128",
        "tls13-aes256-p384",
        "tls12-ecdhe-aesgcm",
        "tls13-chacha",
        "tls12-chacha",
        "tls12-cbc",
        "tls12-rsa-kx",
        "x25519",
        "tls11",
        "ed25519-sigalg",
    ],
)
async def test_tls_policy_seen_by_a_real_openssl_client(webhook: Webhook, args, accepted):
    result = await asyncio.to_thread(
        s_client, webhook.server.port, "-CAfile", str(webhook.pki.server.ca), *args
    )
    negotiated = "Cipher is (NONE)" not in result.stdout and result.returncode == 0
    assert negotiated is accepted, result.stdout[-800:] + result.stderr[-800:]


class UnavailableStore(InMemoryTokenStore):
    async def lease(self, cluster_name: str, presented: str):
        raise TokenStoreUnavailable("etcd is down")


class LosingStore(InMemoryTokenStore):
    """Its leases always expire before the commit (a very slow delivery)."""

    async def commit(self, lease):
        await self.revoke(lease.cluster_name)
        return await super().commit(lease)


class ExplodingSigner:
    def __init__(self, real) -> None:
        self.real = real
        self.explode = True

    def ca_bundle_pem(self) -> str:
        return self.real.ca_bundle_pem()

    def sign_agent_csr(self, csr_pem: str, cluster_name: str) -> str:
        if self.explode:
            raise RuntimeError("HSM unplugged")
        return self.real.sign_agent_csr(csr_pem, cluster_name)


async def test_backend_failures_map_to_503_and_500_and_release_the_token(cell_pki: Pki, tmp_path):
    context = tls.server_context(cell_pki.server, require_client_cert=False, alpn=tls.HTTP1_ALPN)
    client_context = tls.client_context(None, ca=cell_pki.server.ca, alpn=tls.HTTP1_ALPN)
    csr, _ = openssl_csr(tmp_path, "c1")
    signer = ExplodingSigner(cell_pki.ca)
    stores = {"unavailable": UnavailableStore(), "losing": LosingStore(), "ok": InMemoryTokenStore()}
    for name, store in stores.items():
        app = registration_http.registration_app(
            token_store=store,
            signer=signer if name == "ok" else cell_pki.ca,
            payload=registration_http.PayloadSettings(grpc_endpoint=GRPC_ENDPOINT, image="img"),
        )
        server = registration_http.RegistrationServer(app, context)
        await server.start()
        url = f"https://127.0.0.1:{server.port}/api/clusters/register"
        token = await store.issue("c1")
        try:
            async with httpx.AsyncClient(verify=client_context) as client:
                request = {
                    "url": url,
                    "json": {"clusterName": "c1", "csr": csr},
                    "headers": {"Authorization": f"Bearer {token}"},
                }
                response = await client.post(**request)
                if name == "unavailable":
                    assert response.status_code == 503
                elif name == "losing":
                    assert response.status_code == 401
                    assert "concurrently" in response.json()["error"]
                else:
                    assert response.status_code == 500
                    assert response.json() == {"error": "internal error; retry later", "field": "<server>"}
                    signer.explode = False
                    assert (await client.post(**request)).status_code == 200  # the token was released
        finally:
            await server.stop()


def _agent_args(manifests: str) -> list[str]:
    docs = list(YAML(typ="safe").load_all(manifests))
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    args: list[str] = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return args


async def test_the_cell_adds_per_cluster_agent_flags_and_a_failing_hook_costs_only_the_flags(
    cell_pki: Pki, tmp_path
):
    def flags(cluster: str) -> Sequence[str]:
        if cluster == "broken":
            raise RuntimeError("no spec for you")
        return ("--discovery-base-domain", f"{cluster}.example.com")

    async with running_webhook(cell_pki, agent_args=flags) as hook:
        for cluster in ("c1", "broken"):
            token = await hook.store.issue(cluster)
            csr, _key = openssl_csr(tmp_path / cluster, cluster)
            response = await hook.register(cluster, token, csr)
            assert response.status_code == 200, response.text
            args = _agent_args(response.json()["manifests"])
            if cluster == "c1":
                assert args[-2:] == ["--discovery-base-domain", "c1.example.com"]
            else:
                assert "--discovery-base-domain" not in args


async def test_the_payload_carries_the_cells_add_ons_and_a_failing_render_answers_503_keeping_the_token(
    cell_pki: Pki, tmp_path
):
    broken = {"on": True}

    async def cilium(cluster: str) -> Sequence[Mapping[str, Any]]:
        if broken["on"]:
            raise RuntimeError("helm template cilium failed: values don't meet the specifications")
        return [
            {
                "apiVersion": "apps/v1",
                "kind": "DaemonSet",
                "metadata": {"name": "cilium", "namespace": "kube-system", "labels": {"cluster": cluster}},
            }
        ]

    async with running_webhook(cell_pki, addons=cilium) as hook:
        token = await hook.store.issue("c1")
        csr, _key = openssl_csr(tmp_path, "c1")
        refused = await hook.register("c1", token, csr)
        assert refused.status_code == 503, refused.text
        assert refused.json() == {
            "error": "the cell cannot build this cluster's payload: helm template cilium failed: "
            "values don't meet the specifications",
            "field": "<payload>",
        }
        broken["on"] = False
        response = await hook.register("c1", token, csr)  # the same token: it was not spent
        assert response.status_code == 200, response.text
        docs = list(YAML(typ="safe").load_all(response.json()["manifests"]))
        assert [d["kind"] for d in docs][-2:] == ["Deployment", "DaemonSet"]
        assert docs[-1]["metadata"]["labels"] == {"cluster": "c1"}
