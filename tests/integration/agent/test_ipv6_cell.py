"""A cell on an IPv6 address, end to end on ``::1``, with nothing but what the cell writes.

The child's compiled registration script (openssl + curl, as kubeadm runs it) posts to
``https://[::1]:PORT/api/clusters/register``; the payload it gets back runs ``lattice agent
--parent [::1]:PORT``; that command line, run as a process, connects to the cell's gRPC server.
"""

from __future__ import annotations

import asyncio
import base64
import signal
import sys
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from lattice.adapters import agent_hub, registration_http, tls
from lattice.adapters.token_store_memory import InMemoryTokenStore
from lattice.domain import agent_payload, capi
from lattice.domain.endpoint import Endpoint
from lattice.domain.heartbeat import HeartbeatPolicy
from lattice.testing.agents import InMemoryAgentStatusSink

from .conftest import Cell, Pki

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

CLUSTER = "v6child"


async def _register(script: str, bootstrap: Path) -> None:
    """The script's registration steps (up to the first kubectl) with the bootstrap files in place."""
    lines = script.splitlines()
    registration = "\n".join(lines[: next(i for i, line in enumerate(lines) if line.startswith("kubectl"))])
    process = await asyncio.create_subprocess_exec(
        "sh",
        "-c",
        registration,
        env={"LATTICE_BOOTSTRAP_DIR": str(bootstrap), "PATH": "/usr/bin:/bin", "KUBECONFIG": "/dev/null"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    _, stderr = await asyncio.wait_for(process.communicate(), 60)
    assert process.returncode == 0, stderr.decode()


def _agent_command(payload: str, bootstrap: Path) -> list[str]:
    """The payload Deployment's own ``lattice agent`` arguments, with its mounted files here."""
    docs = list(YAML(typ="safe").load_all(payload))
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    [secret] = [
        d for d in docs if d["kind"] == "Secret" and d["metadata"]["name"] == agent_payload.TLS_SECRET
    ]
    cert, ca = bootstrap / "tls.crt", bootstrap / "tls-ca.crt"
    cert.write_bytes(base64.b64decode(secret["data"]["tls.crt"]))
    ca.write_bytes(base64.b64decode(secret["data"]["ca.crt"]))
    files = {agent_payload.CERT_FILE: str(cert), agent_payload.KEY_FILE: str(bootstrap / "agent.key")}
    files[agent_payload.CA_FILE] = str(ca)
    args = deployment["spec"]["template"]["spec"]["containers"][0]["args"]
    return [sys.executable, "-m", "lattice.app.cli", *(files.get(a, a) for a in args)]


async def test_a_child_registers_with_and_streams_to_an_ipv6_cell(cell_pki: Pki, tmp_path: Path) -> None:
    sink = InMemoryAgentStatusSink()
    hub = agent_hub.AgentHub(sink=sink, heartbeat_policy=HeartbeatPolicy(interval=0.5))
    grpc = agent_hub.CellGrpcServer(hub, cell_pki.server_context(), host="::1", port=0)
    await grpc.start()
    store = InMemoryTokenStore()
    webhook = registration_http.RegistrationServer(
        registration_http.registration_app(
            token_store=store,
            signer=cell_pki.ca,
            payload=registration_http.PayloadSettings(
                grpc_endpoint=str(capi.ParentEndpoint("::1", grpc_port=grpc.port).grpc),
                image="ghcr.io/lattice/lattice:test",
            ),
        ),
        tls.server_context(cell_pki.server, require_client_cert=False, alpn=tls.HTTP1_ALPN),
        host="::1",
    )
    await webhook.start()
    process: asyncio.subprocess.Process | None = None
    try:
        cell = capi.ParentEndpoint("::1", bootstrap_port=webhook.port, grpc_port=grpc.port)
        script = capi.registration_script(CLUSTER, cell)
        assert f"url='https://[::1]:{webhook.port}/api/clusters/register'" in script.splitlines()

        bootstrap = tmp_path / "bootstrap"
        bootstrap.mkdir()
        (bootstrap / "bootstrap-token").write_text(await store.issue(CLUSTER))
        (bootstrap / "ca.crt").write_text(cell_pki.ca.ca_bundle_pem())
        await _register(script, bootstrap)

        command = _agent_command((bootstrap / "agent.yaml").read_text(), bootstrap)
        parent = command[command.index("--parent") + 1]
        assert parent == f"[::1]:{grpc.port}"
        assert Endpoint.parse(parent, "--parent") == Endpoint("::1", grpc.port)
        process = await asyncio.create_subprocess_exec(*command, stderr=asyncio.subprocess.PIPE)
        await Cell(hub=hub, server=grpc, sink=sink).wait_connected(CLUSTER, within=30)
        process.send_signal(signal.SIGTERM)
        _, stderr = await asyncio.wait_for(process.communicate(), 15)
        assert process.returncode == 0, stderr.decode()[-2000:]
    finally:
        if process is not None and process.returncode is None:
            process.kill()
            await process.wait()
        await webhook.stop()
        await grpc.stop()
