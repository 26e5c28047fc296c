"""The agent's certificate renewal over its existing stream (docs/protocol.md, "Certificate renewal").

:class:`CertificateRenewer` holds the agent's current identity (:class:`AgentCredentials`) and
the TLS client context built from it. While a stream is up, :meth:`CertificateRenewer.run`
waits until the renewal point (:func:`lattice.domain.cert_renewal.renew_at`, jittered), then:

1. generates a new ECDSA P-256 key **on the agent** and a CSR for ``CN=<cluster>``;
2. sends ``CertificateRenewal`` and waits for the ``CertificateIssued`` with its request id;
3. checks the certificate (:func:`lattice.domain.cert_renewal.issued_errors`), then swaps the
   identity in memory (the next connection presents it; the current stream goes on) and saves
   it through the :class:`~lattice.ports.agent.CredentialStore`.

A refusal or a timeout is logged with the cell's reason and retried
(:func:`~lattice.domain.cert_renewal.retry_after`). The private key never leaves the process
except into the store. Stores: :class:`FileCredentialStore` (the files given on the command
line) and :class:`SecretCredentialStore` (the Secrets the agent's Deployment mounts).
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import logging
import os
import ssl
import tempfile
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.x509.oid import NameOID

from lattice.adapters import pki, tls
from lattice.domain import agent_identity, agent_payload, cert_renewal
from lattice.ports.agent import AgentCredentials, CredentialStore
from lattice.ports.kube import KubeApi, ResourceRef
from lattice.proto.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 30.0


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def read_credentials(files: tls.TlsFiles) -> AgentCredentials:
    """The identity in ``files``; :class:`~lattice.adapters.tls.TlsConfigError` names the file."""
    parts = []
    for label, path in (("certificate", files.cert), ("key", files.key), ("CA bundle", files.ca)):
        try:
            parts.append(path.read_bytes())
        except OSError as exc:
            raise tls.TlsConfigError(f"cannot read the {label} file {path}: {exc}") from exc
    return AgentCredentials(cert_pem=parts[0], key_pem=parts[1], ca_pem=parts[2])


def client_context(credentials: AgentCredentials) -> ssl.SSLContext:
    """A client context for ``credentials`` (``ssl`` loads identities only from files: they are
    written to a private temporary directory and removed at once)."""
    with tempfile.TemporaryDirectory(prefix="lattice-agent-tls-") as directory:
        root = Path(directory)
        os.chmod(root, 0o700)
        cert = root / "tls.crt"
        cert.write_bytes(credentials.cert_pem)
        key = pki.write_private_file(root / "tls.key", credentials.key_pem)
        ca = root / "ca.crt"
        ca.write_bytes(credentials.ca_pem)
        return tls.client_context(tls.TlsFiles(cert=cert, key=key, ca=ca))


def validity(cert_pem: bytes) -> tuple[dt.datetime, dt.datetime]:
    cert = x509.load_pem_x509_certificate(cert_pem)
    return cert.not_valid_before_utc, cert.not_valid_after_utc


def issued_facts(
    cert_pem: bytes, key: pki.PrivateKey, ca_bundle_pem: bytes, current_bundle_pem: bytes
) -> cert_renewal.IssuedFacts:
    """What :func:`~lattice.domain.cert_renewal.issued_errors` needs; ValueError if unparsable."""
    cert = x509.load_pem_x509_certificate(cert_pem)
    cas = x509.load_pem_x509_certificates(ca_bundle_pem)
    try:
        current = set(x509.load_pem_x509_certificates(current_bundle_pem))
    except ValueError:
        current = set()
    issued_by = False
    for ca in cas:
        try:
            cert.verify_directly_issued_by(ca)
        except (InvalidSignature, ValueError, TypeError):
            continue
        issued_by = True
        break
    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        spiffe = tuple(sans.get_values_for_type(x509.UniformResourceIdentifier))
    except x509.ExtensionNotFound:
        spiffe = ()
    return cert_renewal.IssuedFacts(
        common_names=tuple(str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)),
        spiffe_ids=spiffe,
        matches_new_key=cert.public_key() == key.public_key(),
        issued_by_bundle=issued_by,
        bundle_overlaps=any(ca in current for ca in cas),
        not_before=cert.not_valid_before_utc,
        not_after=cert.not_valid_after_utc,
    )


class RenewalRefused(Exception):
    """The cell refused, or returned a certificate this agent will not install."""


class CertificateRenewer:
    def __init__(
        self,
        cluster_name: str,
        credentials: AgentCredentials,
        store: CredentialStore | None,
        *,
        policy: cert_renewal.RenewalPolicy | None = None,
        rand: Callable[[], float],
        wall: Callable[[], dt.datetime] = _utcnow,
        new_request_id: Callable[[], str] = lambda: uuid.uuid4().hex,
        timeout: float = DEFAULT_TIMEOUT,
        on_renewed: Callable[[AgentCredentials], None] | None = None,
    ) -> None:
        self.cluster_name = cluster_name
        self._credentials = credentials
        self._context = client_context(credentials)
        self._store = store
        self._policy = policy or cert_renewal.RenewalPolicy()
        self._rand = rand
        self._wall = wall
        self._new_request_id = new_request_id
        self._timeout = timeout
        self._on_renewed = on_renewed
        self._waiting: dict[str, asyncio.Future[pb.CertificateIssued]] = {}
        self._due = self._draw_due()
        self.renewals = 0
        self.last_error: str | None = None

    @property
    def credentials(self) -> AgentCredentials:
        return self._credentials

    @property
    def context(self) -> ssl.SSLContext:
        """The TLS client context to dial with (the newest identity)."""
        return self._context

    @property
    def due(self) -> dt.datetime:
        return self._due

    def _draw_due(self) -> dt.datetime:
        not_before, not_after = validity(self._credentials.cert_pem)
        return cert_renewal.renew_at(not_before, not_after, self._rand(), self._policy)

    def expired_reason(self) -> str | None:
        """Why the parent will refuse this identity, when it is expired (else None)."""
        _, not_after = validity(self._credentials.cert_pem)
        if self._wall() < not_after:
            return None
        return (
            f"this agent's client certificate expired at {not_after.isoformat()}; the parent "
            "refuses it and renewal needs a working stream: register the cluster again "
            "(docs/protocol.md, 'Certificate renewal')"
        )

    def on_issued(self, answer: pb.CertificateIssued) -> None:
        """The cell's answer arrived on the stream."""
        waiter = self._waiting.pop(answer.request_id, None)
        if waiter is None or waiter.done():
            log.warning("ignored a CertificateIssued for an unknown request %r", answer.request_id)
            return
        waiter.set_result(answer)

    async def run(self, send: Callable[[pb.AgentMessage], Awaitable[None]]) -> None:
        """Renew whenever due, for as long as the stream lasts (cancelled with it)."""
        while True:
            wait = (self._due - self._wall()).total_seconds()
            if wait > 0:
                await asyncio.sleep(wait)
            try:
                await self.renew_once(send)
            except (
                RenewalRefused,
                TimeoutError,
                ConnectionError,
                ValueError,
                pki.PKIError,
                tls.TlsConfigError,
            ) as exc:
                self.last_error = str(exc)
                _, not_after = validity(self._credentials.cert_pem)
                delay = cert_renewal.retry_after(not_after, self._wall(), self._policy)
                log.warning("certificate renewal failed: %s; retrying in %.0f s", exc, delay)
                await asyncio.sleep(delay)

    async def renew_once(self, send: Callable[[pb.AgentMessage], Awaitable[None]]) -> None:
        key = pki.generate_key()
        csr = pki.csr_to_pem(pki.new_csr(key, self.cluster_name)).decode("ascii")
        request_id = self._new_request_id()
        waiter: asyncio.Future[pb.CertificateIssued] = asyncio.get_running_loop().create_future()
        self._waiting[request_id] = waiter
        try:
            await send(
                pb.AgentMessage(
                    cluster_name=self.cluster_name,
                    certificate_renewal=pb.CertificateRenewal(request_id=request_id, csr=csr),
                )
            )
            async with asyncio.timeout(self._timeout):
                answer = await waiter
        finally:
            self._waiting.pop(request_id, None)
        if not answer.success:
            raise RenewalRefused(f"the parent refused: {answer.error_message or 'no reason given'}")
        cert_pem, ca_pem = answer.certificate.encode(), answer.ca_bundle.encode()
        _, current_not_after = validity(self._credentials.cert_pem)
        errors = cert_renewal.issued_errors(
            issued_facts(cert_pem, key, ca_pem, self._credentials.ca_pem),
            self.cluster_name,
            agent_identity.spiffe_id(self.cluster_name),
            self._wall(),
            current_not_after,
        )
        if errors:
            raise RenewalRefused("the parent's certificate is not installed: " + "; ".join(errors))
        renewed = AgentCredentials(cert_pem=cert_pem, key_pem=pki.key_to_pem(key), ca_pem=ca_pem)
        self._context = client_context(renewed)
        self._credentials = renewed
        self._due = self._draw_due()
        self.last_error = None
        log.info(
            "renewed this agent's client certificate (valid until %s; next renewal at %s)",
            validity(cert_pem)[1].isoformat(),
            self._due.isoformat(),
        )
        if self._on_renewed is not None:
            self._on_renewed(renewed)
        if self._store is not None:
            try:
                await self._store.save(renewed)
            except Exception as exc:
                log.warning(
                    "the renewed certificate is in use but could not be saved (%s); a restart "
                    "would present the previous one",
                    exc,
                )
        self.renewals += 1  # counted once saved (or not), so a watcher reads what is stored


class FileCredentialStore:
    """Writes the identity back to the files the agent was started with (atomically; the key
    0600)."""

    def __init__(self, files: tls.TlsFiles) -> None:
        self._files = files

    async def save(self, credentials: AgentCredentials) -> None:
        await asyncio.to_thread(self._write, credentials)

    def _write(self, credentials: AgentCredentials) -> None:
        pki.write_private_file(self._files.key, credentials.key_pem)
        for path, data in ((self._files.cert, credentials.cert_pem), (self._files.ca, credentials.ca_pem)):
            tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
            tmp.write_bytes(data)
            tmp.replace(path)


class SecretCredentialStore:
    """Writes the identity into the Secrets the agent's Deployment mounts
    (:mod:`lattice.domain.agent_payload`): ``lattice-agent-key`` (``tls.key``), then
    ``lattice-agent-tls`` (``tls.crt``, ``ca.crt``). The two writes are not atomic: a crash
    between them leaves a key that does not match the certificate, which the agent reports at
    its next start."""

    def __init__(self, api: KubeApi) -> None:
        self._api = api

    async def save(self, credentials: AgentCredentials) -> None:
        def b64(data: bytes) -> str:
            return base64.b64encode(data).decode("ascii")

        namespace = agent_payload.NAMESPACE
        await self._api.merge_patch(
            ResourceRef("v1", "Secret", agent_payload.KEY_SECRET, namespace),
            {"data": {"tls.key": b64(credentials.key_pem)}},
        )
        await self._api.merge_patch(
            ResourceRef("v1", "Secret", agent_payload.TLS_SECRET, namespace),
            {"data": {"tls.crt": b64(credentials.cert_pem), "ca.crt": b64(credentials.ca_pem)}},
        )


_stores: tuple[type[CredentialStore], ...] = (FileCredentialStore, SecretCredentialStore)
