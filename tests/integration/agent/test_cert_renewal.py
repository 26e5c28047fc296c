"""Certificate renewal over the stream, between a real cell and a real agent (mutual TLS on loopback).

The proof that the agent uses its renewed identity is the clock: its first certificate expires
a few seconds after the start, the cell's TLS refuses expired client certificates, and the agent
still reconnects afterwards.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import random

import grpclib.client
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from lattice.adapters import agent_renewal, cell_ca, pki, tls
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.domain import agent_payload
from lattice.ports.kube import ResourceRef
from lattice.proto.agent.v1 import agent_grpc
from lattice.proto.agent.v1 import agent_pb2 as pb
from lattice.testing.fixtures import ControlPlaneFactory

from .conftest import Pki, running_agent, running_cell
from .streams import ready

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(60)]


def _short_lived(cell_pki: Pki, cluster: str, ttl: dt.timedelta) -> tls.TlsFiles:
    """An identity from the same CA that expires ``ttl`` from now (negative: already expired)."""
    short = cell_ca.CellCertificateAuthority(cell_pki.ca.authority, agent_cert_ttl=ttl)
    key = ec.generate_private_key(ec.SECP256R1())
    cert = short.sign_agent_csr(pki.csr_to_pem(pki.new_csr(key, cluster)).decode(), cluster)
    return cell_pki.write_identity(f"{cluster}-short", cert.encode(), pki.key_to_pem(key))


def _renewer(files: tls.TlsFiles, cluster: str) -> agent_renewal.CertificateRenewer:
    return agent_renewal.CertificateRenewer(
        cluster,
        agent_renewal.read_credentials(files),
        agent_renewal.FileCredentialStore(files),
        rand=random.Random(7).random,
    )


async def _until(predicate, within: float = 15.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls state another task changes
            await asyncio.sleep(0.05)


async def test_the_agent_renews_before_expiry_and_reconnects_with_the_new_certificate(cell_pki: Pki) -> None:
    files = _short_lived(cell_pki, "r1", dt.timedelta(seconds=4))
    first = x509.load_pem_x509_certificate(files.cert.read_bytes())
    renewer = _renewer(files, "r1")
    async with (
        running_cell(cell_pki, signer=cell_pki.ca) as cell,
        running_agent(files, "r1", cell.port, renewer=renewer) as running,
    ):
        await cell.wait_connected("r1")
        seen = [s.certificate_not_after for s in cell.sink.history if s.cluster_name == "r1"]
        # read from the handshake; the latest status may already show the renewed certificate
        assert next(filter(None, seen)) == first.not_valid_after_utc
        await _until(lambda: renewer.renewals == 1)  # 60-80 % of its life had passed: due at once
        assert cell.hub.renewals == 1
        saved = x509.load_pem_x509_certificate(files.cert.read_bytes())
        assert saved.serial_number != first.serial_number
        assert saved.not_valid_after_utc - first.not_valid_after_utc > dt.timedelta(days=29)
        assert saved.subject == first.subject
        tls.client_context(files)  # the saved key matches the saved certificate
        await _until(lambda: cell.sink.latest["r1"].certificate_not_after == saved.not_valid_after_utc)
        assert renewer.due > dt.datetime.now(dt.UTC) + dt.timedelta(days=17)

        await asyncio.sleep(
            max(0.0, (first.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()) + 1
        )
        connects = running.runner.connects
        assert cell.hub.disconnect("r1", "test: reconnect after the first certificate expired")
        await _until(lambda: running.runner.connects > connects)
        await cell.wait_connected("r1")
        assert renewer.renewals == 1  # no renewal storm


async def test_a_refused_renewal_is_logged_with_the_cells_reason_and_the_stream_stays(
    cell_pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    files = _short_lived(cell_pki, "r2", dt.timedelta(minutes=1))  # renewal due at once
    renewer = _renewer(files, "r2")
    caplog.set_level(logging.WARNING)
    async with (
        running_cell(cell_pki) as cell,  # no signer: renewal is not enabled on this cell
        running_agent(files, "r2", cell.port, renewer=renewer) as running,
    ):
        await cell.wait_connected("r2")
        await _until(lambda: renewer.last_error is not None)
        assert "renewal is not enabled on this cell" in (renewer.last_error or "")
        beats = len(running.rtts)
        await _until(lambda: len(running.rtts) > beats + 2)
        assert running.runner.connects == 1
    assert any("certificate renewal failed: the parent refused" in r.getMessage() for r in caplog.records)


async def _renew_raw(
    port: int, files: tls.TlsFiles, cluster: str, csrs: list[str]
) -> list[pb.CertificateIssued]:
    channel = grpclib.client.Channel("127.0.0.1", port, ssl=tls.client_context(files))
    answers = []
    try:
        async with asyncio.timeout(10):
            stream = agent_grpc.LatticeAgentStub(channel).Connect.open()
            async with stream:
                await stream.send_message(ready(cluster))
                await stream.recv_initial_metadata()
                for i, csr in enumerate(csrs):
                    await stream.send_message(
                        pb.AgentMessage(
                            cluster_name=cluster,
                            certificate_renewal=pb.CertificateRenewal(request_id=f"q{i}", csr=csr),
                        )
                    )
                    while True:
                        message = await stream.recv_message()
                        assert message is not None
                        if message.HasField("certificate_issued"):
                            answers.append(message.certificate_issued)
                            break
                await stream.cancel()
    finally:
        channel.close()
    return answers


def _csr(cluster: str, curve: ec.EllipticCurve | None = None) -> str:
    key = ec.generate_private_key(curve or ec.SECP256R1())
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name([x509.NameAttribute(x509.oid.NameOID.COMMON_NAME, cluster)])
    )
    return pki.csr_to_pem(builder.sign(key, hashes.SHA256())).decode()


async def test_the_cell_signs_only_for_the_streams_own_cluster_and_rate_limits(cell_pki: Pki) -> None:
    files = cell_pki.agent_files("r3")
    async with running_cell(cell_pki, signer=cell_pki.ca, renewal_interval=0.0) as cell:
        other, weak, garbage = await _renew_raw(
            cell.port, files, "r3", [_csr("someone-else"), _csr("r3", ec.SECP521R1()), "not a csr"]
        )
    assert (other.success, other.request_id) == (False, "q0")
    assert "someone-else" in other.error_message
    assert not weak.success
    assert "secp521r1" in weak.error_message.lower() or "P-521" in weak.error_message
    assert not garbage.success
    assert garbage.error_message.startswith("csr:")
    async with running_cell(cell_pki, signer=cell_pki.ca, renewal_interval=60.0) as cell:
        good, again = await _renew_raw(cell.port, files, "r3", [_csr("r3"), _csr("r3")])
    assert good.success
    assert good.ca_bundle == cell_pki.ca.ca_bundle_pem()
    assert x509.load_pem_x509_certificate(good.certificate.encode()).subject.rfc4514_string() == "CN=r3"
    assert not again.success
    assert "too many renewals" in again.error_message


async def test_an_expired_certificate_is_refused_and_the_agent_says_why(
    cell_pki: Pki, caplog: pytest.LogCaptureFixture
) -> None:
    files = _short_lived(cell_pki, "r4", dt.timedelta(minutes=-1))
    renewer = _renewer(files, "r4")
    caplog.set_level(logging.WARNING)
    async with (
        running_cell(cell_pki, signer=cell_pki.ca) as cell,
        running_agent(files, "r4", cell.port, renewer=renewer) as running,
    ):
        await _until(lambda: running.runner.last_error is not None)
        await asyncio.sleep(0.3)
        assert cell.hub.connected() == frozenset()
        assert running.runner.connects == 0
    assert any(
        "client certificate expired at" in r.getMessage() and "register the cluster again" in r.getMessage()
        for r in caplog.records
    )
    assert (running.runner.last_error or "").startswith("this agent's client certificate expired at")


async def test_the_secret_store_writes_what_the_agents_deployment_mounts(
    cell_pki: Pki, control_plane_factory: ControlPlaneFactory
) -> None:
    api = await Kr8sKube.connect(str(control_plane_factory.one().kubeconfig))
    files = cell_pki.agent_files("r5")
    old = agent_renewal.read_credentials(files)
    for obj in agent_payload.agent_manifests(
        agent_payload.AgentPayloadParams(
            cluster_name="r5",
            grpc_endpoint="127.0.0.1:1",
            image="lattice:test",
            certificate_pem=old.cert_pem.decode(),
            ca_bundle_pem=old.ca_pem.decode(),
        )
    ):
        if obj["kind"] in {"Namespace", "Secret"}:
            await api.apply(obj, "registration")
    await api.create(  # what the child's registration script stores
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": agent_payload.KEY_SECRET, "namespace": agent_payload.NAMESPACE},
            "data": {"tls.key": base64.b64encode(old.key_pem).decode()},
        }
    )
    renewed = agent_renewal.read_credentials(cell_pki.agent_files("r5"))
    await agent_renewal.SecretCredentialStore(api).save(renewed)

    def data(name: str) -> dict[str, bytes]:
        return {k: base64.b64decode(v) for k, v in stored[name]["data"].items()}

    stored = {
        name: await api.get(ResourceRef("v1", "Secret", name, agent_payload.NAMESPACE))
        for name in (agent_payload.TLS_SECRET, agent_payload.KEY_SECRET)
    }
    assert data(agent_payload.TLS_SECRET) == {"tls.crt": renewed.cert_pem, "ca.crt": renewed.ca_pem}
    assert data(agent_payload.KEY_SECRET) == {"tls.key": renewed.key_pem}
