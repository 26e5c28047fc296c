"""Real cells and agents on loopback: a cell CA, server certificates, agent identities."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ssl
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from lattice.adapters import agent_client, agent_hub, agent_local, agent_renewal, cell_ca, pki, tls
from lattice.adapters.api_proxy_agent import ApiProxyExecutor
from lattice.adapters.binaries import Toolchain
from lattice.adapters.conn_limits import ConnectionLimits
from lattice.adapters.controlplane import ControlPlane
from lattice.domain import agent
from lattice.domain.backoff import Backoff
from lattice.domain.heartbeat import HeartbeatPolicy
from lattice.testing import agents as agent_doubles
from lattice.testing.agents import InMemoryAgentStatusSink
from lattice.testing.fixtures import ControlPlaneFactory


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@attrs.define
class Pki:
    """A cell CA, the cell's server certificate for 127.0.0.1, and agent identities on demand."""

    ca: cell_ca.CellCertificateAuthority
    directory: Path
    server: tls.TlsFiles

    @classmethod
    def create(cls, directory: Path, name: str = "lattice-cell-ca") -> Pki:
        ca = cell_ca.CellCertificateAuthority.generate(name)
        cert, key, bundle = ca.write_server_files(
            directory, ip_addresses=["127.0.0.1", "::1"], dns_names=["localhost"]
        )
        return cls(ca=ca, directory=directory, server=tls.TlsFiles(cert=cert, key=key, ca=bundle))

    def agent_files(self, cluster: str) -> tls.TlsFiles:
        """An agent identity obtained the real way: the agent's own key, a CSR, the CA signs."""
        key = ec.generate_private_key(ec.SECP256R1())
        csr = pki.csr_to_pem(pki.new_csr(key, cluster)).decode()
        cert = self.ca.sign_agent_csr(csr, cluster)
        return self.write_identity(cluster, cert.encode(), pki.key_to_pem(key))

    def write_identity(self, label: str, cert_pem: bytes, key_pem: bytes) -> tls.TlsFiles:
        folder = self.directory / f"agent-{label}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tls.crt").write_bytes(cert_pem)
        pki.write_private_file(folder / "tls.key", key_pem)
        return tls.TlsFiles(cert=folder / "tls.crt", key=folder / "tls.key", ca=self.server.ca)

    def server_context(self) -> ssl.SSLContext:
        return tls.server_context(self.server, require_client_cert=True)


@pytest.fixture(scope="module")
def cell_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("cell-pki"))


@attrs.define
class Cell:
    hub: agent_hub.AgentHub
    server: agent_hub.CellGrpcServer
    sink: InMemoryAgentStatusSink

    @property
    def port(self) -> int:
        return self.server.port

    async def wait_connected(self, cluster: str, within: float = 10.0) -> agent.AgentStatus:
        await self.sink.wait_for(
            lambda latest: (
                cluster in latest
                and latest[cluster].connection is agent.Connection.CONNECTED
                and cluster in self.hub.connected()
            ),
            within,
        )
        return self.sink.latest[cluster]


@contextlib.asynccontextmanager
async def running_cell(
    cell_pki: Pki,
    *,
    port: int = 0,
    heartbeat: HeartbeatPolicy | None = None,
    max_message_bytes: int | None = None,
    signer: cell_ca.CellCertificateAuthority | None = None,
    renewal_interval: float = 10.0,
    limits: ConnectionLimits | None = None,
    revocation: Callable[[str, dt.datetime], str | None] | None = None,
) -> AsyncIterator[Cell]:
    sink = InMemoryAgentStatusSink()
    kwargs = {} if max_message_bytes is None else {"max_message_bytes": max_message_bytes}
    hub = agent_hub.AgentHub(
        sink=sink,
        heartbeat_policy=heartbeat or HeartbeatPolicy(interval=0.5),
        signer=signer,
        renewal_interval=renewal_interval,
        revocation=revocation,
        **kwargs,
    )
    server = agent_hub.CellGrpcServer(hub, cell_pki.server_context(), port=port, limits=limits)
    await server.start()
    try:
        yield Cell(hub=hub, server=server, sink=sink)
    finally:
        await server.stop()


@attrs.define
class RunningAgent:
    runner: agent_client.AgentRunner
    applier: agent_doubles.RecordingManifestApplier
    importer: agent_doubles.RecordingPivotImporter
    probe: agent_local.StaticClusterProbe
    rtts: list[float]
    stop: asyncio.Event
    task: asyncio.Task[None]


@contextlib.asynccontextmanager
async def running_agent(
    files: tls.TlsFiles,
    cluster: str,
    port: int,
    *,
    interval: float = 0.5,
    importer: agent_doubles.RecordingPivotImporter | None = None,
    applier: agent_doubles.RecordingManifestApplier | None = None,
    tls_server_name: str | None = None,
    host: str = "127.0.0.1",
    unpivoter: agent_doubles.RecordingUnpivoter | None = None,
    renewer: agent_renewal.CertificateRenewer | None = None,
    proxy: ApiProxyExecutor | None = None,
) -> AsyncIterator[RunningAgent]:
    applier = applier or agent_doubles.RecordingManifestApplier()
    importer = importer or agent_doubles.RecordingPivotImporter()
    probe = agent_local.StaticClusterProbe("v1.34.1", agent.ClusterHealth(ready_nodes=1, total_nodes=1))
    rtts: list[float] = []
    runner = agent_client.AgentRunner(
        agent_client.AgentSettings(
            cluster_name=cluster,
            host=host,
            port=port,
            agent_version="lattice/test",
            tls_server_name=tls_server_name,
            heartbeat=HeartbeatPolicy(interval=interval, jitter=0.2, max_missed=3),
            backoff=Backoff(initial=0.05, maximum=0.5),
            connect_timeout=5.0,
        ),
        tls.client_context(files),
        applier=applier,
        importer=importer,
        probe=probe,
        on_heartbeat_rtt=rtts.append,
        unpivoter=unpivoter,
        renewer=renewer,
        proxy=proxy,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        yield RunningAgent(runner, applier, importer, probe, rtts, stop, task)
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


@pytest.fixture(scope="module")
def control_plane(toolchain: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    """One real apiserver per test module (the Secret token store, the revocation list)."""
    factory = ControlPlaneFactory(toolchain, tmp_path_factory.mktemp("control-plane"))
    try:
        yield factory.one()
    finally:
        factory.stop_all()


def token_kubeconfig(cp: ControlPlane, token: str) -> dict[str, Any]:
    """A kubeconfig for ``cp`` that authenticates with a bearer ``token``."""
    ca = base64.b64encode(cp.ca_file.read_bytes()).decode()
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": {"server": cp.url, "certificate-authority-data": ca}}],
        "users": [{"name": "me", "user": {"token": token}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": "me"}}],
        "current-context": "c",
    }
