"""What the cell and an agent say to each other, independent of the wire format.

The gRPC adapter translates these values to and from ``lattice.agent.v1`` protobuf messages;
the application code and the ports only ever see these. Commands travel cell -> agent with a
``command_id``; every command has exactly one reply type, which carries the same id back
(docs/protocol.md, "Command correlation").

Not guaranteed: that a command was executed exactly once. Delivery is at least once (a
command still pending when a stream breaks is re-sent after the reconnect); agents answer a
repeated ``command_id`` from their record of finished commands instead of running it again.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Iterator, Mapping
from datetime import datetime
from typing import Any

from attrs import field, frozen

from lattice.domain.errors import FieldError


class AgentState(enum.Enum):
    """The agent's heartbeat state machine (spec: "Heartbeat State Machine")."""

    UNKNOWN = "Unknown"
    PROVISIONING = "Provisioning"
    PIVOTING = "Pivoting"
    READY = "Ready"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class Connection(enum.Enum):
    """How the cell sees an agent's stream."""

    CONNECTED = "Connected"
    """A stream is open and heartbeats arrive."""
    LOST = "Lost"
    """A stream may still be open but too many heartbeats were missed."""
    DISCONNECTED = "Disconnected"
    """The stream ended; the agent is expected to reconnect."""


@frozen
class ClusterHealth:
    ready_nodes: int = 0
    total_nodes: int = 0
    conditions: tuple[str, ...] = ()


# --- commands (cell -> agent) ---------------------------------------------------------------


@frozen
class ApplyManifests:
    """Apply Kubernetes manifests (the bootstrap step). Reply: :class:`BootstrapResult`."""

    manifests: tuple[bytes, ...]


@frozen
class StatusQuery:
    """Ask for the agent's current status. Reply: :class:`StatusReport`."""


@frozen
class MoveFile:
    """One file of a ``clusterctl move --to-directory`` export."""

    name: str
    content: bytes = field(repr=lambda c: f"<{len(c)} bytes>")


@frozen
class PivotManifests:
    """Import this cluster's CAPI objects. Reply: :class:`PivotResult`."""

    cluster_name: str
    capi_namespace: str
    pivot_id: str
    files: tuple[MoveFile, ...]


@frozen
class SyncResources:
    """Apply resources the parent distributes. Reply: :class:`CommandResult`."""

    manifests: tuple[bytes, ...]
    full_sync: bool = False


@frozen
class Unpivot:
    """Hand this cluster's CAPI objects back to the cell (its LatticeCluster is being deleted).
    Reply: :class:`UnpivotExport`."""

    cluster_name: str
    capi_namespace: str
    cascade: bool = False


@frozen
class UnpivotComplete:
    """The cell holds the objects now; the agent lets its own LatticeCluster go.
    Reply: :class:`CommandResult`."""

    cluster_name: str


Command = ApplyManifests | StatusQuery | PivotManifests | SyncResources | Unpivot | UnpivotComplete


# --- replies (agent -> cell) -----------------------------------------------------------------


@frozen
class BootstrapResult:
    command_id: str
    success: bool
    error: str = ""


@frozen
class PivotResult:
    command_id: str
    pivot_id: str
    success: bool
    error: str = ""


@frozen
class StatusReport:
    command_id: str
    state: AgentState
    kubernetes_version: str = ""
    agent_version: str = ""
    health: ClusterHealth | None = None


@frozen
class CommandResult:
    """Generic reply: to :class:`SyncResources` and to commands an agent does not know."""

    command_id: str
    success: bool
    error: str = ""


@frozen
class UnpivotExport:
    """Reply to :class:`Unpivot` (``ClusterDeleting`` on the wire): the cluster's own export."""

    command_id: str
    success: bool
    error: str = ""
    files: tuple[MoveFile, ...] = ()
    reason: str = ""


Reply = BootstrapResult | PivotResult | StatusReport | CommandResult | UnpivotExport

_REPLY_TYPE: dict[type[object], type[object]] = {
    ApplyManifests: BootstrapResult,
    StatusQuery: StatusReport,
    PivotManifests: PivotResult,
    SyncResources: CommandResult,
    Unpivot: UnpivotExport,
    UnpivotComplete: CommandResult,
}


def reply_type(command: Command) -> type[object]:
    """The reply type that answers ``command``."""
    return _REPLY_TYPE[type(command)]


def answers(command: Command, reply: Reply) -> bool:
    """Whether ``reply`` is a reply of the right kind for ``command``.

    A :class:`CommandResult` with ``success=False`` answers any command: it is how an agent
    says "I cannot do this" (an unknown command, an internal error).
    """
    if isinstance(reply, CommandResult) and not reply.success:
        return True
    return isinstance(reply, reply_type(command))


def failure_reply(command: Command | None, command_id: str, error: str) -> Reply:
    """The reply an agent sends when ``command`` failed (``None``: not understood)."""
    if isinstance(command, ApplyManifests):
        return BootstrapResult(command_id=command_id, success=False, error=error)
    if isinstance(command, PivotManifests):
        return PivotResult(command_id=command_id, pivot_id=command.pivot_id, success=False, error=error)
    if isinstance(command, Unpivot):
        return UnpivotExport(command_id=command_id, success=False, error=error)
    return CommandResult(command_id=command_id, success=False, error=error)


def derive_state(
    *,
    self_managed: bool,
    pivot_running: bool,
    pivot_failed: bool,
    health: ClusterHealth | None,
) -> AgentState:
    """The agent's state from what it knows (spec: "Heartbeat State Machine").

    PIVOTING while a pivot runs; FAILED after a failed pivot (until one succeeds);
    PROVISIONING until the cluster holds its own CAPI objects; then READY, or DEGRADED while
    some nodes are not ready.
    """
    if pivot_running:
        return AgentState.PIVOTING
    if pivot_failed:
        return AgentState.FAILED
    if not self_managed:
        return AgentState.PROVISIONING
    if health is not None and health.ready_nodes < health.total_nodes:
        return AgentState.DEGRADED
    return AgentState.READY


# --- what a cluster reports about its own LatticeCluster ----------------------------------------

REPORT_PREFIX = "LatticeCluster."
MAX_REPORTED = 8
MAX_REPORTED_CHARS = 1024


def own_cluster_report(raw: Mapping[str, Any]) -> tuple[str, ...]:
    """The child's own LatticeCluster in a few lines for ``ClusterHealth.conditions``, so that
    its cell's copy shows the state of the source of truth: phase, the generation applied, and
    a rollout in progress (``RollingOut`` with CAPI's words)."""
    status = raw.get("status") or {}
    out = [f"{REPORT_PREFIX}phase={status.get('phase') or 'Pending'}"]
    if status.get("observedGeneration") is not None:
        out.append(f"{REPORT_PREFIX}observedGeneration={status['observedGeneration']}")
    if status.get("version"):
        out.append(f"{REPORT_PREFIX}version={status['version']}")
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and cond.get("type") == "RollingOut" and cond.get("status") == "True":
            out.append(f"{REPORT_PREFIX}RollingOut=True: {cond.get('message', '')}")
    return tuple(out)


def reported(conditions: tuple[str, ...]) -> tuple[str, ...]:
    """What a cell keeps of a child's report (a peer's input: bounded in number and length)."""
    kept = [c for c in conditions if c.startswith(REPORT_PREFIX)][:MAX_REPORTED]
    return tuple(c if len(c) <= MAX_REPORTED_CHARS else c[: MAX_REPORTED_CHARS - 1] + "…" for c in kept)


# --- agent status, as recorded on the LatticeCluster ------------------------------------------


@frozen
class AgentStatus:
    """What the cell knows about one agent; written into the LatticeCluster's status."""

    cluster_name: str
    connection: Connection
    state: AgentState = AgentState.UNKNOWN
    agent_version: str = ""
    kubernetes_version: str = ""
    last_heartbeat: datetime | None = None
    health: ClusterHealth | None = None
    deleting_reason: str | None = None
    certificate_not_after: datetime | None = None
    """When the client certificate the agent last presented (or was last issued) expires."""


# --- validation of what arrives from the wire --------------------------------------------------

_FILE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,252}$")
MAX_PIVOT_FILES = 10_000


def pivot_errors(command: PivotManifests, own_cluster: str) -> Iterator[FieldError]:
    """Problems with a pivot command, before anything is written to disk.

    File names become paths in a scratch directory handed to ``clusterctl move
    --from-directory``: they must be plain names (no directories, no ``..``), unique.
    """
    if command.cluster_name != own_cluster:
        yield FieldError(
            ("pivotManifests", "clusterName"),
            f"is {command.cluster_name!r} but this agent belongs to {own_cluster!r}",
        )
    if not command.capi_namespace:
        yield FieldError(("pivotManifests", "capiNamespace"), "must not be empty")
    if not command.pivot_id:
        yield FieldError(("pivotManifests", "pivotId"), "must not be empty")
    yield from _file_errors("pivotManifests", command.files)


def unpivot_errors(reply: UnpivotExport) -> Iterator[FieldError]:
    """Problems with the files a child sent back, before any is written to disk."""
    yield from _file_errors("clusterDeleting", reply.files)


def _file_errors(message: str, files: tuple[MoveFile, ...]) -> Iterator[FieldError]:
    """File names become paths in a scratch directory handed to ``clusterctl move
    --from-directory``: they must be plain names (no directories, no ``..``), unique."""
    if not files:
        yield FieldError((message, "files"), "must hold at least one file")
    if len(files) > MAX_PIVOT_FILES:
        yield FieldError((message, "files"), f"more than {MAX_PIVOT_FILES} files")
    seen: set[str] = set()
    for index, move_file in enumerate(files):
        if not _FILE_NAME.match(move_file.name) or move_file.name in {".", ".."}:
            yield FieldError(
                (message, "files", index, "name"),
                f"{move_file.name!r} is not a plain file name (letters, digits, '.', '_', '-')",
            )
        elif move_file.name in seen:
            yield FieldError((message, "files", index, "name"), f"{move_file.name!r} appears twice")
        seen.add(move_file.name)
