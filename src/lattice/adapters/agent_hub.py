"""The cell end of the agent streams: a grpclib ``LatticeAgent`` service, the transport of the
agent registry (its decisions - status merge, resend on attach, LOST, reply matching, renewal
rate - are :mod:`lattice.domain.agent_registry`'s; the hub reads, calls them, and acts).

:class:`AgentHub` implements the generated ``LatticeAgentBase`` (the ``Connect`` handler) and
the :class:`~lattice.ports.agent.AgentChannel` port:

* **identity** - the cluster is read from the verified client certificate (CN and the
  ``spiffe://lattice/cluster/<name>`` URI SAN must agree). Every AgentMessage whose
  ``cluster_name`` differs is refused: the stream ends with PERMISSION_DENIED and a log line;
* **registry** - one stream per cluster; a newer stream from the same cluster supersedes the
  older one (ABORTED), which is what a reconnect after a half-dead connection looks like;
* **commands** - :meth:`AgentHub.send_command` tags a command with a fresh ``command_id``, and
  waits for the reply carrying that id. A command still unanswered when a stream breaks is
  sent again when the agent comes back (agents answer a repeated id from memory);
* **heartbeats** - acknowledged with HeartbeatAck; a sweeper marks an agent LOST after
  ``max_missed`` missed heartbeats and closes its stream (UNAVAILABLE);
* **discovery** - with a :class:`~lattice.ports.discovery.CellDiscoveryHandler`, service
  announcements, catalog syncs and queries go to it (malformed ones are logged and ignored; a
  malformed query with an id gets a ``found=false`` answer) and what it returns is sent to the
  clusters it names (dropped for clusters not connected); a stream's end (not its supersession)
  is reported to it. Without one, queries are answered "not enabled";
* **certificate renewal** - with an :class:`~lattice.ports.registration.AgentCertificateSigner`,
  a ``CertificateRenewal`` is signed for the stream's own cluster (the CSR must name it) and
  answered with ``CertificateIssued`` (the certificate and the CA bundle), or with the reason it
  was refused. One renewal per cluster per ``renewal_interval`` seconds; more are refused;
* **Kubernetes API proxy** - :attr:`AgentHub.proxy` (:class:`~lattice.adapters.api_proxy_cell.ProxyRelay`)
  sends proxied requests on a cluster's stream and takes their response frames without ever
  waiting on a client (flow control per request); a stream's end fails its requests;
* **status** - every change of connection, state, versions or health goes to the
  :class:`~lattice.ports.agent.AgentStatusSink` (heartbeat timestamps alone do not, so a large
  fleet does not turn into a stream of status writes).

No exception escapes ``Connect``: bad frames end only their stream (INVALID_ARGUMENT,
RESOURCE_EXHAUSTED, UNIMPLEMENTED), anything unexpected is logged and ends it with INTERNAL.
Cancellation by grpclib (connection lost, server shutdown) is let through after cleanup.

:class:`CellGrpcServer` runs the hub in a ``grpclib.server.Server`` on a mutual-TLS context.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import socket
import ssl
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import grpclib.server
from attrs import define, evolve, field
from cryptography import x509
from grpclib.config import Configuration
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from lattice.adapters import agent_wire, discovery_wire
from lattice.adapters.api_proxy_cell import ProxyRelay
from lattice.adapters.conn_limits import ConnectionGuard, ConnectionLimits, TlsGate
from lattice.domain import agent, agent_identity, agent_registry, api_proxy, heartbeat
from lattice.domain.discovery import messages as discovery
from lattice.ports.agent import AgentChannel, AgentNotConnected, AgentStatusSink, CommandTimeout
from lattice.ports.discovery import CellDiscoveryHandler
from lattice.ports.registration import AgentCertificateSigner, CsrRefused
from lattice.proto.agent.v1 import agent_grpc
from lattice.proto.agent.v1 import agent_pb2 as pb

if TYPE_CHECKING:
    AgentStream = grpclib.server.Stream[pb.AgentMessage, pb.CellCommand]
else:
    AgentStream = Any

log = logging.getLogger(__name__)

SERVICE_DISCOVERY_DISABLED = "service discovery is not enabled on this cell"
CELL_GRPC_CONFIG = Configuration(
    http2_connection_window_size=1024 * 1024, http2_stream_window_size=1024 * 1024
)
"""The hub's HTTP/2 receive windows: 1 MiB per connection and per stream instead of grpclib's
4 MiB. What an agent may send before the hub reads it is held in grpclib's buffer, so this
bounds a cell's worst case (5,000 agents x 4 MiB = 20 GiB) at a quarter; an idle stream's
memory does not depend on it (docs/protocol.md, "Scale"). Larger messages (pivot exports,
API proxy responses) still pass: the window is acknowledged as the hub reads."""
CELL_SSL_READ_BUFFER = 4 * 1024
"""Recommended :func:`lattice.adapters.tls.set_ssl_read_buffer` size for a cell process: agents
send small messages, and asyncio's default (256 KiB per connection) dominates a cell's memory."""


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _new_command_id() -> str:
    return uuid.uuid4().hex


@define(eq=False)
class _Session:
    cluster: str
    stream: AgentStream
    task: asyncio.Task[Any] | None
    send_lock: asyncio.Lock = field(factory=asyncio.Lock)
    attached: bool = False
    close_status: Status | None = None
    close_message: str = ""
    certificate_not_after: dt.datetime | None = None
    certificate_not_before: dt.datetime | None = None


@define(eq=False)
class _Pending:
    queued: agent_registry.QueuedCommand
    future: asyncio.Future[agent.Reply]


class AgentHub(agent_grpc.LatticeAgentBase):
    """The ``LatticeAgent`` service and an ``AgentChannel``: the transport of the agent registry,
    whose decisions are :mod:`lattice.domain.agent_registry`'s."""

    def __init__(
        self,
        *,
        sink: AgentStatusSink,
        heartbeat_policy: heartbeat.HeartbeatPolicy | None = None,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = _utcnow,
        new_command_id: Callable[[], str] = _new_command_id,
        max_message_bytes: int = agent_wire.DEFAULT_MAX_AGENT_MESSAGE,
        discovery: CellDiscoveryHandler | None = None,
        signer: AgentCertificateSigner | None = None,
        renewal_interval: float = 10.0,
        revocation: Callable[[str, dt.datetime], str | None] | None = None,
        proxy_limits: api_proxy.ProxyLimits | None = None,
    ) -> None:
        self._sink = sink
        self._signer = signer
        self._revocation = revocation
        self.refused_revoked = 0
        """Streams refused, or closed, because their certificate was revoked (a counter)."""
        self._renewal_interval = renewal_interval
        self._last_renewal: dict[str, float] = {}
        self.renewals = 0
        """Agent certificates issued by renewal (a counter)."""
        self._discovery = discovery
        self._policy = heartbeat_policy or heartbeat.HeartbeatPolicy()
        self._monotonic = monotonic
        self._wall = wall
        self._new_command_id = new_command_id
        self._max_message = max_message_bytes
        self._sessions: dict[str, _Session] = {}
        self._pending: dict[str, _Pending] = {}
        self._agents: dict[str, agent_registry.AgentRecord] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self._closing = False
        self.refused_identity = 0
        """Streams refused for a cluster_name that differs from the certificate (a counter)."""
        self.proxy = ProxyRelay(self.send_proxy, proxy_limits)
        """The Kubernetes API proxy's requests in flight on these streams (docs/api-proxy.md)."""

    # --- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        if self._sweeper is None:
            self._sweeper = asyncio.create_task(self._sweep_forever(), name="agent-hub-sweeper")

    async def close(self) -> None:
        """End every stream with UNAVAILABLE ("cell shutting down") and stop the sweeper."""
        self._closing = True
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        sessions = list(self._sessions.values())
        for session in sessions:
            self._close_session(session, Status.UNAVAILABLE, "the cell is shutting down")
        tasks = [s.task for s in sessions if s.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    # --- AgentChannel -----------------------------------------------------------------------

    def connected(self) -> frozenset[str]:
        return frozenset(name for name, s in self._sessions.items() if s.attached)

    def disconnect(self, cluster_name: str, reason: str) -> bool:
        """End a cluster's stream (UNAVAILABLE, ``reason``); the agent will reconnect."""
        session = self._sessions.get(cluster_name)
        if session is None:
            return False
        self._close_session(session, Status.UNAVAILABLE, reason)
        return True

    def status(self, cluster_name: str) -> agent.AgentStatus | None:
        record = self._agents.get(cluster_name)
        return None if record is None else record.status

    async def send_command(
        self, cluster_name: str, command: agent.Command, reply_within: float
    ) -> agent.Reply:
        command_id = self._new_command_id()
        pending = _Pending(
            queued=agent_registry.QueuedCommand(command_id, cluster_name, command),
            future=asyncio.get_running_loop().create_future(),
        )
        self._pending[command_id] = pending
        try:
            async with asyncio.timeout(reply_within):
                session = self._sessions.get(cluster_name)
                if session is not None and session.attached:
                    await self._deliver(session, command_id, pending)
                return await pending.future
        except TimeoutError:
            if not pending.queued.delivered:
                raise AgentNotConnected(f"the agent of cluster {cluster_name} is not connected") from None
            raise CommandTimeout(
                f"cluster {cluster_name} did not answer command {command_id} "
                f"({type(command).__name__}) within {reply_within} s"
            ) from None
        finally:
            self._pending.pop(command_id, None)

    async def _deliver(self, session: _Session, command_id: str, pending: _Pending) -> None:
        try:
            await self._send(session, agent_wire.command_to_pb(command_id, pending.queued.command))
        except Exception as exc:  # the stream broke; resent when the agent reconnects
            log.info("could not send command %s to %s: %r", command_id, session.cluster, exc)
        else:
            pending.queued = evolve(pending.queued, delivered=True)

    # --- the gRPC handler -------------------------------------------------------------------

    async def Connect(self, stream: AgentStream) -> None:
        cluster = agent_identity.cluster_from_peer(_peer_cert(stream))  # keep no cert dict alive
        if cluster is None:
            log.warning("refused a stream: the client certificate names no Lattice cluster")
            await _finish(
                stream,
                Status.UNAUTHENTICATED,
                "the client certificate does not name a Lattice cluster (CN and "
                "spiffe://lattice/cluster/<name> URI SAN must agree)",
            )
            return
        session = _Session(
            cluster=cluster,
            stream=stream,
            task=asyncio.current_task(),
            certificate_not_after=_peer_time(stream, "notAfter"),
            certificate_not_before=_peer_time(stream, "notBefore"),
        )
        revoked = self._revoked(session)
        if revoked is not None:
            self.refused_revoked += 1
            log.warning("refused the stream of %s: %s", cluster, revoked)
            await _finish(stream, Status.PERMISSION_DENIED, revoked)
            return
        status, message = Status.OK, ""
        try:
            status, message = await self._serve(session)
        except asyncio.CancelledError:
            if session.close_status is None:
                await self._detach(session)
                raise
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
            status, message = session.close_status, session.close_message
        except agent_wire.FrameError as exc:
            log.warning("stream of %s: bad frame: %s", cluster, exc.message)
            status, message = exc.status, exc.message or "bad frame"
        except GRPCError as exc:
            status, message = exc.status, exc.message or ""
        except Exception:
            log.exception("stream of %s failed", cluster)
            status, message = Status.INTERNAL, "internal error in the cell"
        await self._detach(session)
        await _finish(stream, status, message)

    async def _serve(self, session: _Session) -> tuple[Status, str]:
        first = await agent_wire.recv_bounded(session.stream, pb.AgentMessage, self._max_message)
        if first is None:
            return Status.OK, ""
        refused = self._check_identity(session, first)
        if refused is not None:
            return refused
        if first.WhichOneof("payload") != "ready":
            return Status.FAILED_PRECONDITION, "the first message on a stream must be AgentReady"
        await self._attach(session, first.ready)
        while True:
            message = await agent_wire.recv_bounded(session.stream, pb.AgentMessage, self._max_message)
            if message is None:
                return Status.OK, ""
            refused = self._check_identity(session, message)
            if refused is not None:
                return refused
            await self._handle(session, message)

    def _check_identity(self, session: _Session, message: pb.AgentMessage) -> tuple[Status, str] | None:
        if message.cluster_name == session.cluster:
            return None
        self.refused_identity += 1
        log.warning(
            "PERMISSION_DENIED: a stream authenticated as cluster %r sent a message for %r",
            session.cluster,
            message.cluster_name,
        )
        return (
            Status.PERMISSION_DENIED,
            f"cluster_name {message.cluster_name!r} does not match the client certificate, "
            f"which names {session.cluster!r}",
        )

    async def _attach(self, session: _Session, ready: pb.AgentReady) -> None:
        previous = self._sessions.get(session.cluster)
        if previous is not None and previous is not session:
            log.info("cluster %s reconnected; closing its previous stream", session.cluster)
            self._close_session(
                previous, Status.ABORTED, "superseded by a newer stream from the same cluster"
            )
            self.proxy.on_disconnect(session.cluster, "superseded by a newer stream")
        self._sessions[session.cluster] = session
        if not session.attached:
            # response headers tell the agent its identity was accepted (it waits for them)
            async with session.send_lock:
                await session.stream.send_initial_metadata()
        session.attached = True
        reported = agent_registry.StatusChange(
            state=agent_wire.state_from_pb(ready.state),
            agent_version=ready.agent_version,
            kubernetes_version=ready.kubernetes_version,
            certificate_not_after=session.certificate_not_after,
        )
        await self._step(
            agent_registry.attached(self._record(session.cluster), reported, self._monotonic(), self._wall())
        )
        log.info("agent of cluster %s connected (%s)", session.cluster, ready.agent_version)
        queue = [p.queued for p in self._pending.values()]
        for command_id in agent_registry.to_resend(session.cluster, queue):
            pending = self._pending.get(command_id)
            if pending is not None:
                await self._deliver(session, command_id, pending)

    async def _detach(self, session: _Session) -> None:
        if self._sessions.get(session.cluster) is not session:
            return
        del self._sessions[session.cluster]
        self.proxy.on_disconnect(session.cluster, session.close_message or "disconnected")
        self._agents[session.cluster] = agent_registry.released(self._record(session.cluster))
        if self._discovery is not None:
            try:
                await self._discovery.on_disconnect(session.cluster)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("discovery could not forget the services of %s", session.cluster)
        # _step guards the sink; the registry's transition is pure
        await self._step(agent_registry.disconnected(self._record(session.cluster), self._wall()))

    async def _handle(self, session: _Session, message: pb.AgentMessage) -> None:
        kind = message.WhichOneof("payload")
        cluster = session.cluster
        if kind == "heartbeat":
            await self._on_heartbeat(session, message.heartbeat)
        elif kind == "ready":
            await self._attach(session, message.ready)
        elif kind == "cluster_health":
            await self._update(
                cluster, agent_registry.StatusChange(health=agent_wire.health_from_pb(message.cluster_health))
            )
        elif kind == "cluster_deleting" and not message.cluster_deleting.command_id:
            reason = message.cluster_deleting.reason or "deleting"
            await self._update(cluster, agent_registry.StatusChange(deleting_reason=reason))
        elif kind in discovery_wire.AGENT_DISCOVERY_KINDS:
            await self._on_discovery(session, message)
        elif kind == "api_proxy":
            self.proxy.on_frame(cluster, message.api_proxy)
        elif kind == "certificate_renewal":
            await self._on_renewal(session, message.certificate_renewal)
        else:
            reply = agent_wire.reply_from_pb(message)
            if reply is None:
                log.debug("cluster %s sent a message of an unknown kind; ignored", cluster)
                return
            await self._on_reply(cluster, reply)

    async def _on_renewal(self, session: _Session, request: pb.CertificateRenewal) -> None:
        cluster = session.cluster
        answer = pb.CertificateIssued(request_id=request.request_id)
        now = self._monotonic()
        refusal = agent_registry.renewal_refusal(
            enabled=self._signer is not None,
            last=self._last_renewal.get(cluster),
            now=now,
            interval=self._renewal_interval,
        )
        if refusal is not None or self._signer is None:
            answer.error_message = refusal or agent_registry.RENEWAL_DISABLED
        else:
            self._last_renewal[cluster] = now
            try:
                answer.certificate = self._signer.sign_agent_csr(request.csr, cluster)
                answer.ca_bundle = self._signer.ca_bundle_pem()
                answer.success = True
            except CsrRefused as exc:
                answer.error_message = f"{exc.field}: {exc.reason}"
            except Exception:
                log.exception("could not sign the renewal CSR of %s", cluster)
                answer.error_message = "internal error in the cell's CA"
        if answer.success:
            self.renewals += 1
            log.info("renewed the agent certificate of cluster %s", cluster)
            await self._update(
                cluster, agent_registry.StatusChange(certificate_not_after=_not_after(answer.certificate))
            )
        else:
            log.warning("refused the certificate renewal of %s: %s", cluster, answer.error_message)
        await self._send(session, pb.CellCommand(certificate_issued=answer))

    async def _on_discovery(self, session: _Session, message: pb.AgentMessage) -> None:
        cluster = session.cluster
        query_id = message.service_query.query_id if message.HasField("service_query") else ""
        if self._discovery is None:
            if message.HasField("service_query"):
                await self._answer_query(session, query_id, SERVICE_DISCOVERY_DISABLED)
            else:
                log.debug("cluster %s sent a discovery message; %s", cluster, SERVICE_DISCOVERY_DISABLED)
            return
        try:
            decoded = discovery_wire.agent_message_from_pb(message)
        except discovery_wire.DiscoveryWireError as exc:
            log.warning("cluster %s sent a malformed discovery message (%s); ignored", cluster, exc)
            if query_id:
                await self._answer_query(session, query_id, f"malformed query: {exc}")
            return
        if decoded is None:  # pragma: no cover - only called for discovery payloads
            return
        try:
            outgoing = await self._discovery.on_message(cluster, decoded)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discovery failed on a message from %s", cluster)
            if query_id:
                await self._answer_query(session, query_id, "internal error in the cell's catalog")
            return
        for target, item in outgoing:
            if target == cluster:
                await self._send(session, discovery_wire.cell_message_to_pb(item))
            else:
                await self.send_discovery(target, item)

    async def _answer_query(self, session: _Session, query_id: str, error: str) -> None:
        await self._send(
            session,
            pb.CellCommand(
                service_query_response=pb.ServiceQueryResponse(
                    query_id=query_id, found=False, error_message=error
                )
            ),
        )

    async def send_proxy(self, cluster: str, command: pb.CellCommand) -> None:
        """Send an API proxy frame on a cluster's stream; AgentNotConnected without one."""
        session = self._sessions.get(cluster)
        if session is None or not session.attached:
            raise AgentNotConnected(f"the agent of cluster {cluster} is not connected")
        await self._send(session, command)

    def _revoked(self, session: _Session) -> str | None:
        if self._revocation is None or session.certificate_not_before is None:
            return None
        return self._revocation(session.cluster, session.certificate_not_before)

    def close_revoked(self) -> int:
        """Close the open streams whose certificate is now revoked; how many were closed."""
        closed = 0
        for session in list(self._sessions.values()):
            reason = self._revoked(session)
            if reason is not None:
                log.warning("closing the stream of %s: %s", session.cluster, reason)
                self._close_session(session, Status.PERMISSION_DENIED, reason)
                self.refused_revoked += 1
                closed += 1
        return closed

    async def send_discovery(self, cluster: str, message: discovery.CellDiscoveryMessage) -> bool:
        """Push a discovery message to a connected cluster; False if not connected or it failed
        (never raises: a dependant that is down re-queries when it comes back)."""
        session = self._sessions.get(cluster)
        if session is None or not session.attached:
            log.debug("dropped a %s for %s: not connected", type(message).__name__, cluster)
            return False
        try:
            await self._send(session, discovery_wire.cell_message_to_pb(message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.info("could not push a %s to %s: %r", type(message).__name__, cluster, exc)
            return False
        return True

    async def _on_heartbeat(self, session: _Session, beat: pb.Heartbeat) -> None:
        state = agent_wire.state_from_pb(beat.state)
        await self._step(
            agent_registry.heartbeat(self._record(session.cluster), state, self._monotonic(), self._wall())
        )
        await self._send(
            session,
            pb.CellCommand(
                heartbeat_ack=pb.HeartbeatAck(
                    sequence=beat.sequence, received_at=agent_wire.timestamp(self._wall())
                )
            ),
        )

    async def _on_reply(self, cluster: str, reply: agent.Reply) -> None:
        change = agent_registry.report_change(reply)
        if change is not None:
            await self._update(cluster, change)
        pending = self._pending.get(reply.command_id)
        queued = None if pending is None else pending.queued
        match = agent_registry.match_reply(queued, cluster, reply)
        if match is agent_registry.ReplyMatch.UNKNOWN:
            log.debug("cluster %s answered unknown command %r", cluster, reply.command_id)
        elif match is agent_registry.ReplyMatch.OTHER_CLUSTER and queued is not None:
            log.warning(
                "cluster %s answered command %s that was sent to %s; ignored",
                cluster,
                reply.command_id,
                queued.cluster,
            )
        elif match is agent_registry.ReplyMatch.WRONG_KIND and queued is not None:
            log.warning(
                "cluster %s answered %s with a %s; ignored",
                cluster,
                type(queued.command).__name__,
                type(reply).__name__,
            )
        elif match is agent_registry.ReplyMatch.ACCEPTED and pending is not None:
            pending.queued = evolve(pending.queued, answered=True)
            if not pending.future.done():
                pending.future.set_result(reply)

    # --- status -----------------------------------------------------------------------------

    def _record(self, cluster: str) -> agent_registry.AgentRecord:
        return self._agents.get(cluster) or agent_registry.AgentRecord(cluster)

    async def _update(self, cluster: str, change: agent_registry.StatusChange) -> None:
        await self._step(agent_registry.update(self._record(cluster), change, self._wall()))

    async def _step(self, step: agent_registry.Step) -> None:
        """Keep the registry's record; tell the sink when the status changed."""
        self._agents[step.record.cluster] = step.record
        if step.report is None:
            return
        try:
            await self._sink.record(step.report)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("the agent status sink failed for cluster %s", step.record.cluster)

    # --- heartbeat loss -----------------------------------------------------------------------

    async def sweep(self) -> tuple[str, ...]:
        """Mark agents LOST that missed too many heartbeats; close their streams."""
        now = self._monotonic()
        lost = []
        for candidate in agent_registry.sweep(self._agents.values(), self._policy, now, self._wall()):
            cluster = candidate.record.cluster
            # decided again on the current record: the sink of the one before may have waited
            step = agent_registry.lost(self._record(cluster), self._policy, now, self._wall())
            if step is None:
                continue
            lost.append(cluster)
            log.warning(
                "agent of cluster %s is LOST: no heartbeat for %.1f s",
                cluster,
                self._policy.lost_after,
            )
            await self._step(step)
            session = self._sessions.get(cluster)
            if session is not None and step.close is not None:
                self._close_session(session, Status.UNAVAILABLE, step.close)
        return tuple(lost)

    async def _sweep_forever(self) -> None:
        period = max(0.05, self._policy.interval / 2)
        while True:
            await asyncio.sleep(period)
            try:
                await self.sweep()
            except Exception:
                log.exception("heartbeat sweep failed")

    # --- plumbing -----------------------------------------------------------------------------

    def _close_session(self, session: _Session, status: Status, message: str) -> None:
        if session.close_status is not None:
            return
        session.close_status = status
        session.close_message = message
        if session.task is not None and session.task is not asyncio.current_task():
            session.task.cancel()

    async def _send(self, session: _Session, command: pb.CellCommand) -> None:
        async with session.send_lock:
            await session.stream.send_message(command)


def _peer_cert(stream: AgentStream) -> dict[str, Any] | None:
    try:
        cert: dict[str, Any] | None = stream.peer.cert()
    except (AttributeError, ValueError, ssl.SSLError):
        return None
    return cert


def _peer_time(stream: AgentStream, which: str) -> dt.datetime | None:
    cert = _peer_cert(stream)
    text = None if cert is None else cert.get(which)
    if not isinstance(text, str):
        return None
    try:
        return dt.datetime.fromtimestamp(ssl.cert_time_to_seconds(text), dt.UTC)
    except ValueError:
        return None


def _not_after(certificate_pem: str) -> dt.datetime:
    """When a certificate this cell's CA just issued expires."""
    return x509.load_pem_x509_certificate(certificate_pem.encode()).not_valid_after_utc


async def _finish(stream: AgentStream, status: Status, message: str) -> None:
    """Send trailers unless the stream is already closed; never raises."""
    try:
        await stream.send_trailing_metadata(status=status, status_message=message or None)
    except Exception as exc:
        log.debug("could not send trailers (%s): %r", status.name, exc)


class LimitedServer(grpclib.server.Server):
    """A ``grpclib.server.Server`` that applies :class:`~lattice.adapters.conn_limits.ConnectionLimits`.

    grpclib's ``start`` has no handshake timeout and no connection hook, so :meth:`start_limited`
    creates the asyncio server itself around grpclib's protocol factory. It uses grpclib's
    private ``_protocol_factory``, ``_server``, ``_server_closed_fut`` and ``_loop``, as
    ``Server.start`` does; ``tests/integration/agent/test_limits.py`` breaks if they change.
    """

    def __init__(
        self, handlers: list[Any], limits: ConnectionLimits, config: Configuration = CELL_GRPC_CONFIG
    ) -> None:
        super().__init__(handlers, config=config)
        self.guard = ConnectionGuard(limits, "gRPC")

    async def start_limited(self, sock: socket.socket, ssl_context: ssl.SSLContext, backlog: int) -> None:
        if self._server is not None:
            raise RuntimeError("the server is already started")
        self._server = await asyncio.get_running_loop().create_server(
            lambda: TlsGate(self._protocol_factory, self.guard, ssl_context),
            sock=sock,
            backlog=backlog,
        )
        self._server_closed_fut = self._loop.create_future()  # as grpclib's start does


class CellGrpcServer:
    """The hub served over mutual TLS on an already-bound socket."""

    def __init__(
        self,
        hub: AgentHub,
        ssl_context: ssl.SSLContext,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        backlog: int = 4096,
        limits: ConnectionLimits | None = None,
        config: Configuration = CELL_GRPC_CONFIG,
    ) -> None:
        if ssl_context.verify_mode is not ssl.CERT_REQUIRED:
            raise ValueError("the cell's gRPC server requires client certificates (CERT_REQUIRED)")
        self.hub = hub
        self.limits = limits or ConnectionLimits()
        self.config = config
        self._ssl = ssl_context
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._sock = socket.create_server((host, port), family=family, backlog=backlog)
        self._backlog = backlog
        self._server: LimitedServer | None = None

    @property
    def port(self) -> int:
        port: int = self._sock.getsockname()[1]
        return port

    @property
    def server(self) -> LimitedServer | None:
        """The running server (its connection counters), once started."""
        return self._server

    async def start(self) -> None:
        self._server = LimitedServer([self.hub], self.limits, self.config)
        await self._server.start_limited(self._sock, self._ssl, self._backlog)
        self.hub.start()

    async def stop(self) -> None:
        await self.hub.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        self._sock.close()


_channel: type[AgentChannel] = AgentHub
