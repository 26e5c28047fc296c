"""The agent end of the stream: dial out to the parent cell, stay connected, obey commands.

:class:`AgentRunner` never listens: it opens one outbound mutual-TLS HTTP/2 connection with
grpclib's client ``Channel`` and calls ``Connect``. On every (re)connect it resynchronises:
``AgentReady`` (versions and current state), ``ClusterHealth``, then the replies of commands
that finished while the stream was down. Then:

* heartbeats every ``interval`` seconds jittered by ``jitter`` (the first after a random
  fraction of an interval, so a fleet reconnecting together does not beat in step); if no
  HeartbeatAck arrives for ``max_missed`` heartbeats the parent is presumed gone and the agent
  reconnects;
* the stream counts as established only when the cell has answered AgentReady with its
  response headers (it accepted the identity);
* commands run through the ports (:class:`~lattice.ports.agent.ManifestApplier`,
  :class:`~lattice.ports.agent.PivotImporter`, :class:`~lattice.ports.agent.ClusterProbe`);
  replies carry the command's id; a repeated id is answered from memory, not run again; a pivot
  already imported (same ``pivot_id``) is not imported twice;
* with a :class:`~lattice.adapters.agent_renewal.CertificateRenewer`: renewal runs as a task
  on each established stream, every connection dials with the newest identity, and an expired
  one is reported (ERROR log, ``last_error``) before each attempt;
* after a stream ends, it reconnects with jittered exponential backoff (reset once a stream
  was established);
* with a :class:`~lattice.ports.discovery.AgentDiscoveryHandler`: ``on_connected`` runs as a
  task after each established stream (cancelled with it), discovery commands from the cell go to
  ``on_message`` (malformed ones are logged and ignored), ``on_disconnected`` when the stream
  ends; :meth:`AgentRunner.send_discovery` sends up (``ParentUnavailable`` without a stream).
* with an :class:`~lattice.adapters.api_proxy_agent.ApiProxyExecutor`: ``api_proxy`` frames
  go to it (each request runs as its own task, never blocking the receive loop); its requests
  stop when the stream ends. Without one, a proxied request is answered 501.

Independence from the parent (spec): losing the parent only produces log lines; nothing in the
cluster depends on this loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import ssl
import time
from collections import OrderedDict
from collections.abc import Callable

import grpclib.client
import grpclib.config
from attrs import field, frozen
from grpclib.exceptions import GRPCError, ProtocolError, StreamTerminatedError

from lattice.adapters import agent_wire, discovery_wire
from lattice.adapters.agent_renewal import CertificateRenewer
from lattice.adapters.api_proxy_agent import ApiProxyExecutor
from lattice.domain import agent
from lattice.domain.backoff import Backoff, jittered
from lattice.domain.discovery import messages as discovery
from lattice.domain.heartbeat import HeartbeatPolicy
from lattice.ports.agent import ClusterProbe, ManifestApplier, PivotImporter, Unpivoter
from lattice.ports.discovery import AgentDiscoveryHandler, ParentUnavailable
from lattice.proto.agent.v1 import agent_grpc
from lattice.proto.agent.v1 import agent_pb2 as pb

log = logging.getLogger(__name__)

_DONE_MEMORY = 256
_MAX_ERROR = 2048


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@frozen
class AgentSettings:
    cluster_name: str
    host: str
    port: int
    agent_version: str = "lattice-agent"
    tls_server_name: str | None = None
    heartbeat: HeartbeatPolicy = field(factory=HeartbeatPolicy)
    backoff: Backoff = field(factory=Backoff)
    connect_timeout: float = 10.0
    max_message_bytes: int = agent_wire.DEFAULT_MAX_CELL_COMMAND


class ParentLostError(Exception):
    """No HeartbeatAck for too long: the stream is presumed dead."""


def _no_fault(_point: str) -> None:
    return None


class ParentLink:
    """The agent's current stream to its parent: what sends up (the runner, discovery, renewal)
    go through. The composition root creates it first and hands it to each sender, so nothing
    is bound after construction; the runner attaches each stream it establishes."""

    def __init__(self, cluster_name: str) -> None:
        self.cluster_name = cluster_name
        self._stream: grpclib.client.Stream[pb.AgentMessage, pb.CellCommand] | None = None
        self._lock = asyncio.Lock()

    @property
    def connected(self) -> bool:
        return self._stream is not None

    def attach(self, stream: grpclib.client.Stream[pb.AgentMessage, pb.CellCommand]) -> None:
        self._stream = stream

    def detach(self) -> None:
        self._stream = None

    async def send(self, message: pb.AgentMessage) -> None:
        """Send on the current stream; ``ConnectionError`` without one."""
        stream = self._stream
        if stream is None:
            raise ConnectionError("not connected")
        async with self._lock:
            await stream.send_message(message)

    async def send_discovery(self, message: discovery.AgentDiscoveryMessage) -> None:
        """Send a discovery message to the parent; ParentUnavailable without a working stream."""
        try:
            await self.send(discovery_wire.agent_message_to_pb(self.cluster_name, message))
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            raise ParentUnavailable(f"cannot send to the parent: {exc}") from exc


class AgentRunner:
    def __init__(
        self,
        settings: AgentSettings,
        ssl_context: ssl.SSLContext,
        *,
        applier: ManifestApplier,
        importer: PivotImporter,
        probe: ClusterProbe,
        rand: Callable[[], float] = random.random,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = _utcnow,
        on_heartbeat_rtt: Callable[[float], None] | None = None,
        on_connected: Callable[[], None] | None = None,
        discovery: AgentDiscoveryHandler | None = None,
        unpivoter: Unpivoter | None = None,
        renewer: CertificateRenewer | None = None,
        fault: Callable[[str], None] | None = None,
        proxy: ApiProxyExecutor | None = None,
        link: ParentLink | None = None,
    ) -> None:
        self.settings = settings
        self.link = link or ParentLink(settings.cluster_name)
        if self.link.cluster_name != settings.cluster_name:
            raise ValueError(
                f"the parent link is for {self.link.cluster_name}, the agent for {settings.cluster_name}"
            )
        self._ssl = ssl_context
        self._applier = applier
        self._importer = importer
        self._probe = probe
        self._rand = rand
        self._monotonic = monotonic
        self._wall = wall
        self._on_rtt = on_heartbeat_rtt
        self._on_connected = on_connected
        self._discovery = discovery
        self._unpivoter = unpivoter
        self._renewer = renewer
        self._fault = fault or _no_fault
        """Test-only: called at the named steps of a pivot import (lattice.app.faults)."""
        self._proxy = proxy
        self._done: OrderedDict[str, agent.Reply] = OrderedDict()
        self._running: set[str] = set()
        self._unsent: OrderedDict[str, agent.Reply] = OrderedDict()
        self._tasks: set[asyncio.Task[None]] = set()
        self._imported_pivots: set[str] = set()
        self._pivot_running = False
        self._pivot_failed = False
        self._self_managed: bool | None = None
        self._last_health: agent.ClusterHealth | None = None
        self._sent_at: dict[int, float] = {}
        self._sequence = 0
        self._last_ack = 0.0
        self.connects = 0
        """Streams established so far (1 + reconnects)."""
        self.last_error: str | None = None

    # --- state --------------------------------------------------------------------------------

    async def state(self) -> agent.AgentState:
        if self._self_managed is None:
            self._self_managed = await self._probe.self_managed()
        return agent.derive_state(
            self_managed=self._self_managed,
            pivot_running=self._pivot_running,
            pivot_failed=self._pivot_failed,
            health=self._last_health,
        )

    @property
    def connected(self) -> bool:
        return self.link.connected

    # --- the reconnect loop ----------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected until ``stop`` is set (never raises, except on cancellation)."""
        attempt = 0
        while not stop.is_set():
            established = await self.run_once(stop)
            if established:
                attempt = 0
            if stop.is_set():
                break
            delay = self.settings.backoff.delay(attempt, self._rand())
            attempt += 1
            log.info("reconnecting to %s:%s in %.2f s", self.settings.host, self.settings.port, delay)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
        for task in list(self._tasks):
            task.cancel()

    async def run_once(self, stop: asyncio.Event) -> bool:
        """One connection: returns whether a stream was established."""
        context, expired = self._dial_context()
        channel = grpclib.client.Channel(
            self.settings.host,
            self.settings.port,
            ssl=context,
            config=grpclib.config.Configuration(
                ssl_target_name_override=self.settings.tls_server_name,
            ),
        )
        established = False
        discovery_task: asyncio.Task[None] | None = None
        renewal_task: asyncio.Task[None] | None = None
        try:
            stream = agent_grpc.LatticeAgentStub(channel).Connect.open()
            async with stream:
                async with asyncio.timeout(self.settings.connect_timeout):
                    await stream.send_request()
                    await self._resync(stream)
                established = True
                self.connects += 1
                self.last_error = None
                log.info(
                    "connected to parent %s:%s as %s",
                    self.settings.host,
                    self.settings.port,
                    self.settings.cluster_name,
                )
                if self._on_connected is not None:
                    self._on_connected()
                if self._discovery is not None:
                    discovery_task = asyncio.create_task(
                        self._discovery_connected(self._discovery), name="agent-discovery-sync"
                    )
                if self._renewer is not None:
                    renewal_task = asyncio.create_task(
                        self._renew(self._renewer), name="agent-certificate-renewal"
                    )
                await self._serve(stream, stop)
        except asyncio.CancelledError:
            raise
        except GRPCError as exc:
            self._note_error(f"the cell ended the stream: {exc.status.name} {exc.message or ''}")
        except (
            OSError,
            ssl.SSLError,
            TimeoutError,
            StreamTerminatedError,
            ProtocolError,
            ParentLostError,
        ) as exc:
            self._note_error(f"{type(exc).__name__}: {exc}")
        except Exception as exc:
            log.exception("agent stream failed")
            self._note_error(f"{type(exc).__name__}: {exc}")
        finally:
            self.link.detach()
            if self._proxy is not None:
                self._proxy.reset()  # the cell forgot the stream's requests too
            for task in (discovery_task, renewal_task):
                if task is not None:
                    task.cancel()
            if established and self._discovery is not None:
                try:
                    self._discovery.on_disconnected()
                except Exception:
                    log.exception("discovery failed to handle the end of the stream")
            channel.close()
        if expired is not None and not established:
            # TLS 1.3 reports the cell's refusal only as a lost connection: say why here
            self.last_error = f"{expired} (the connection attempt: {self.last_error})"
        return established

    async def _discovery_connected(self, handler: AgentDiscoveryHandler) -> None:
        try:
            await handler.on_connected()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discovery failed to resynchronise with the parent")

    def _dial_context(self) -> tuple[ssl.SSLContext, str | None]:
        """The TLS context to dial with (the newest identity), and why it will be refused when
        it has expired (logged here at ERROR)."""
        if self._renewer is None:
            return self._ssl, None
        expired = self._renewer.expired_reason()
        if expired is not None:
            log.error("%s", expired)
        return self._renewer.context, expired

    async def _renew(self, renewer: CertificateRenewer) -> None:
        try:
            await renewer.run(self._send)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("certificate renewal stopped until the next stream")

    async def renew_certificate(self) -> None:
        """Renew the client certificate now, on the current stream (an operator's or a
        benchmark's request; renewal otherwise runs on its own schedule). Raises
        ``ConnectionError`` without a stream, ``RenewalRefused`` with the cell's reason."""
        if self._renewer is None:
            raise RuntimeError("this agent was started without certificate renewal")
        await self._renewer.renew_once(self._send)

    async def send_discovery(self, message: discovery.AgentDiscoveryMessage) -> None:
        """Send a discovery message to the parent; ParentUnavailable without a working stream."""
        await self.link.send_discovery(message)

    def _note_error(self, message: str) -> None:
        self.last_error = message
        log.warning("connection to parent %s:%s: %s", self.settings.host, self.settings.port, message)

    async def _resync(self, stream: grpclib.client.Stream[pb.AgentMessage, pb.CellCommand]) -> None:
        name = self.settings.cluster_name
        await stream.send_message(
            pb.AgentMessage(
                cluster_name=name,
                ready=pb.AgentReady(
                    agent_version=self.settings.agent_version,
                    kubernetes_version=await self._probe.kubernetes_version(),
                    state=agent_wire.state_to_pb(await self.state()),
                ),
            )
        )
        # the cell answers AgentReady with response headers once it accepted this identity;
        # a refusal arrives instead as a status (GRPCError), so nothing is sent to a cell that
        # would drop it
        await stream.recv_initial_metadata()
        self._last_health = await self._probe.health()
        await stream.send_message(
            pb.AgentMessage(cluster_name=name, cluster_health=agent_wire.health_to_pb(self._last_health))
        )
        for command_id, reply in list(self._unsent.items()):
            await stream.send_message(agent_wire.reply_to_pb(name, reply))
            self._unsent.pop(command_id, None)
        self.link.attach(stream)
        self._last_ack = self._monotonic()

    async def _serve(
        self, stream: grpclib.client.Stream[pb.AgentMessage, pb.CellCommand], stop: asyncio.Event
    ) -> None:
        receiver: asyncio.Task[object] = asyncio.create_task(self._receive(stream))
        beater: asyncio.Task[object] = asyncio.create_task(self._heartbeats())
        stopper: asyncio.Task[object] = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({receiver, beater, stopper}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (receiver, beater, stopper):
                task.cancel()
            await asyncio.gather(receiver, beater, stopper, return_exceptions=True)
        for task in done:
            if task is not stopper and not task.cancelled():
                error = task.exception()
                if error is not None:
                    raise error
        if stopper in done:
            with contextlib.suppress(Exception):
                await stream.cancel()

    async def _receive(self, stream: grpclib.client.Stream[pb.AgentMessage, pb.CellCommand]) -> None:
        while True:
            message = await agent_wire.recv_bounded(
                stream, pb.CellCommand, self.settings.max_message_bytes, client=True
            )
            if message is None:
                await stream.end()
                await stream.recv_trailing_metadata()  # raises GRPCError for a non-OK status
                return
            await self._on_command(message)

    async def _heartbeats(self) -> None:
        policy = self.settings.heartbeat
        await asyncio.sleep(policy.interval * self._rand())
        while True:
            if self._monotonic() - self._last_ack > policy.lost_after:
                raise ParentLostError(f"no HeartbeatAck for {policy.lost_after:.1f} s")
            await self._beat()
            await asyncio.sleep(jittered(policy.interval, policy.jitter, self._rand()))

    async def _beat(self) -> None:
        self._sequence += 1
        sent = self._monotonic()
        self._sent_at[self._sequence] = sent
        for old in [seq for seq in self._sent_at if seq < self._sequence - 16]:
            del self._sent_at[old]
        health = await self._probe.health()
        name = self.settings.cluster_name
        if self._unpivoter is not None:
            reason = await self._unpivoter.deleting()
            if reason is not None:  # every beat until the cell takes the objects back
                await self._send(agent_wire.deleting_notice(name, reason))
        if health != self._last_health:
            self._last_health = health
            await self._send(
                pb.AgentMessage(cluster_name=name, cluster_health=agent_wire.health_to_pb(health))
            )
        await self._send(
            pb.AgentMessage(
                cluster_name=name,
                heartbeat=pb.Heartbeat(
                    state=agent_wire.state_to_pb(await self.state()),
                    timestamp=agent_wire.timestamp(self._wall()),
                    sequence=self._sequence,
                ),
            )
        )

    async def _send(self, message: pb.AgentMessage) -> None:
        await self.link.send(message)

    # --- commands --------------------------------------------------------------------------------

    async def _on_command(self, message: pb.CellCommand) -> None:
        kind = message.WhichOneof("command")
        if kind == "heartbeat_ack":
            sent = self._sent_at.pop(message.heartbeat_ack.sequence, None)
            self._last_ack = self._monotonic()
            if sent is not None and self._on_rtt is not None:
                self._on_rtt(self._last_ack - sent)
            return
        if kind in discovery_wire.CELL_DISCOVERY_KINDS:
            await self._on_discovery(message)
            return
        if kind == "api_proxy":
            await self._on_proxy(message.api_proxy)
            return
        if kind == "certificate_issued":
            if self._renewer is None:
                log.warning("ignored a CertificateIssued: this agent does not renew certificates")
            else:
                self._renewer.on_issued(message.certificate_issued)
            return
        command_id = message.command_id
        if not command_id:
            log.warning("ignored a %s command without command_id (cannot answer it)", kind)
            return
        if command_id in self._done:
            await self._reply(self._done[command_id])
            return
        if command_id in self._running:
            return
        command = agent_wire.command_from_pb(message)
        if command is None:
            await self._reply(
                agent.failure_reply(None, command_id, f"unsupported command {kind or '<none>'}")
            )
            return
        self._running.add(command_id)
        task = asyncio.create_task(self._execute(command_id, command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _on_proxy(self, frame: pb.ApiProxyToAgent) -> None:
        if self._proxy is not None:
            self._proxy.on_frame(frame, self._send)
        elif frame.HasField("request"):
            await self._send(
                pb.AgentMessage(
                    cluster_name=self.settings.cluster_name,
                    api_proxy=pb.ApiProxyFromAgent(
                        request_id=frame.request_id,
                        end=pb.ApiProxyEnd(error="the API proxy is not enabled on this agent", status=501),
                    ),
                )
            )

    async def _on_discovery(self, message: pb.CellCommand) -> None:
        if self._discovery is None:
            log.debug("received a discovery message; service discovery is not enabled here")
            return
        try:
            decoded = discovery_wire.cell_message_from_pb(message)
        except discovery_wire.DiscoveryWireError as exc:
            log.warning("the parent sent a malformed discovery message (%s); ignored", exc)
            return
        if decoded is None:  # pragma: no cover - only called for discovery payloads
            return
        try:
            await self._discovery.on_message(decoded)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("discovery failed on a %s from the parent", type(decoded).__name__)

    async def _execute(self, command_id: str, command: agent.Command) -> None:
        try:
            reply = await self._run_command(command_id, command)
        except asyncio.CancelledError:
            self._running.discard(command_id)
            raise
        except Exception as exc:
            log.warning("command %s (%s) failed: %s", command_id, type(command).__name__, exc)
            reply = agent.failure_reply(command, command_id, _describe(exc))
        self._running.discard(command_id)
        self._done[command_id] = reply
        while len(self._done) > _DONE_MEMORY:
            self._done.popitem(last=False)
        await self._reply(reply)

    async def _run_command(self, command_id: str, command: agent.Command) -> agent.Reply:
        if isinstance(command, agent.StatusQuery):
            self._last_health = await self._probe.health()
            return agent.StatusReport(
                command_id=command_id,
                state=await self.state(),
                kubernetes_version=await self._probe.kubernetes_version(),
                agent_version=self.settings.agent_version,
                health=self._last_health,
            )
        if isinstance(command, agent.ApplyManifests):
            await self._applier.apply(command.manifests)
            return agent.BootstrapResult(command_id=command_id, success=True)
        if isinstance(command, agent.PivotManifests):
            return await self._pivot(command_id, command)
        if isinstance(command, agent.Unpivot | agent.UnpivotComplete):
            return await self._unpivot(command_id, command)
        await self._applier.apply(command.manifests)
        return agent.CommandResult(command_id=command_id, success=True)

    async def _pivot(self, command_id: str, command: agent.PivotManifests) -> agent.Reply:
        errors = list(agent.pivot_errors(command, self.settings.cluster_name))
        if errors:
            return agent.failure_reply(command, command_id, "; ".join(str(e) for e in errors))
        if command.pivot_id not in self._imported_pivots:
            self._pivot_running = True
            self._fault("agent.import.received")
            try:
                await self._importer.import_move(command)
            except Exception:
                self._pivot_failed = True
                raise
            finally:
                self._pivot_running = False
            self._imported_pivots.add(command.pivot_id)
            self._fault("agent.import.done")
        self._pivot_failed = False
        self._self_managed = True
        return agent.PivotResult(command_id=command_id, pivot_id=command.pivot_id, success=True)

    async def _unpivot(self, command_id: str, command: agent.Unpivot | agent.UnpivotComplete) -> agent.Reply:
        if command.cluster_name != self.settings.cluster_name:
            return agent.failure_reply(
                command,
                command_id,
                f"clusterName is {command.cluster_name!r} but this agent belongs to "
                f"{self.settings.cluster_name!r}",
            )
        if self._unpivoter is None:
            return agent.failure_reply(
                command, command_id, "this agent has no access to its cluster (run it with --kubeconfig)"
            )
        if isinstance(command, agent.UnpivotComplete):
            await self._unpivoter.release(command)
            return agent.CommandResult(command_id=command_id, success=True)
        files = await self._unpivoter.export_own(command)
        reason = await self._unpivoter.deleting() or "the cell is deleting this cluster"
        return agent.UnpivotExport(command_id=command_id, success=True, files=files, reason=reason)

    async def _reply(self, reply: agent.Reply) -> None:
        message = agent_wire.reply_to_pb(self.settings.cluster_name, reply)
        try:
            await self._send(message)
        except Exception as exc:
            log.info("reply to %s kept for the next connection (%s)", reply.command_id, exc)
            self._unsent[reply.command_id] = reply
            while len(self._unsent) > _DONE_MEMORY:
                self._unsent.popitem(last=False)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text[:_MAX_ERROR]
