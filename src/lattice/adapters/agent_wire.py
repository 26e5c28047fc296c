"""Translation between ``lattice.agent.v1`` protobuf messages and :mod:`lattice.domain.agent`.

Also the bounded frame reader both ends use: grpclib reads a message of whatever length the
5-byte gRPC prefix announces, so a peer could make us buffer up to 4 GiB. :func:`recv_bounded`
reads the prefix itself and refuses (RESOURCE_EXHAUSTED) anything longer than the limit before
reading the body, refuses compressed frames (UNIMPLEMENTED) and undecodable ones
(INVALID_ARGUMENT). It uses grpclib's ``Stream._stream`` (the HTTP/2 stream) and, on the
client, ``Stream._wrapper`` (what wakes a reader when the connection drops): grpclib 0.4 has
no public hook for this; the integration tests exercise both paths.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, TypeVar

from google.protobuf.message import DecodeError, Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpclib.const import Status
from grpclib.exceptions import GRPCError

from lattice.domain import agent
from lattice.proto.agent.v1 import agent_pb2 as pb

DEFAULT_MAX_AGENT_MESSAGE = 4 * 1024 * 1024
"""Largest AgentMessage a cell accepts (agents send small messages; catalogs are the largest)."""
DEFAULT_MAX_CELL_COMMAND = 256 * 1024 * 1024
"""Largest CellCommand an agent accepts (a pivot carries a cluster's CAPI objects)."""

_M = TypeVar("_M", bound=Message)

_STATE_TO_PB = {
    agent.AgentState.UNKNOWN: pb.AGENT_STATE_UNKNOWN,
    agent.AgentState.PROVISIONING: pb.AGENT_STATE_PROVISIONING,
    agent.AgentState.PIVOTING: pb.AGENT_STATE_PIVOTING,
    agent.AgentState.READY: pb.AGENT_STATE_READY,
    agent.AgentState.DEGRADED: pb.AGENT_STATE_DEGRADED,
    agent.AgentState.FAILED: pb.AGENT_STATE_FAILED,
}
_STATE_FROM_PB: dict[int, agent.AgentState] = {int(value): key for key, value in _STATE_TO_PB.items()}


def state_to_pb(state: agent.AgentState) -> pb.AgentState.ValueType:
    return _STATE_TO_PB[state]


def state_from_pb(value: int) -> agent.AgentState:
    """Unknown enum numbers (a newer agent) read as UNKNOWN."""
    return _STATE_FROM_PB.get(value, agent.AgentState.UNKNOWN)


def health_to_pb(health: agent.ClusterHealth) -> pb.ClusterHealth:
    return pb.ClusterHealth(
        ready_nodes=health.ready_nodes,
        total_nodes=health.total_nodes,
        conditions=list(health.conditions),
    )


def health_from_pb(health: pb.ClusterHealth) -> agent.ClusterHealth:
    return agent.ClusterHealth(
        ready_nodes=health.ready_nodes,
        total_nodes=health.total_nodes,
        conditions=tuple(health.conditions),
    )


def timestamp(moment: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(moment.astimezone(dt.UTC))
    return stamp


def from_timestamp(stamp: Timestamp) -> dt.datetime:
    return stamp.ToDatetime(tzinfo=dt.UTC)


# --- commands ------------------------------------------------------------------------------


def command_to_pb(command_id: str, command: agent.Command) -> pb.CellCommand:
    if isinstance(command, agent.ApplyManifests):
        return pb.CellCommand(
            command_id=command_id,
            apply_manifests=pb.ApplyManifestsCommand(manifests=list(command.manifests)),
        )
    if isinstance(command, agent.StatusQuery):
        return pb.CellCommand(command_id=command_id, status_request=pb.StatusRequest())
    if isinstance(command, agent.PivotManifests):
        return pb.CellCommand(
            command_id=command_id,
            pivot_manifests=pb.PivotManifestsCommand(
                cluster_name=command.cluster_name,
                capi_namespace=command.capi_namespace,
                pivot_id=command.pivot_id,
                files=[pb.MoveFile(name=f.name, content=f.content) for f in command.files],
            ),
        )
    if isinstance(command, agent.Unpivot):
        return pb.CellCommand(
            command_id=command_id,
            unpivot=pb.UnpivotCommand(
                cluster_name=command.cluster_name,
                capi_namespace=command.capi_namespace,
                cascade=command.cascade,
            ),
        )
    if isinstance(command, agent.UnpivotComplete):
        return pb.CellCommand(
            command_id=command_id,
            unpivot_complete=pb.UnpivotComplete(cluster_name=command.cluster_name),
        )
    return pb.CellCommand(
        command_id=command_id,
        sync_resources=pb.SyncDistributedResourcesCommand(
            manifests=list(command.manifests), full_sync=command.full_sync
        ),
    )


def command_from_pb(message: pb.CellCommand) -> agent.Command | None:
    """The domain command, or ``None`` for kinds that are not commands (acks, pushes, unknown)."""
    kind = message.WhichOneof("command")
    if kind == "apply_manifests":
        return agent.ApplyManifests(manifests=tuple(message.apply_manifests.manifests))
    if kind == "status_request":
        return agent.StatusQuery()
    if kind == "pivot_manifests":
        pivot = message.pivot_manifests
        return agent.PivotManifests(
            cluster_name=pivot.cluster_name,
            capi_namespace=pivot.capi_namespace,
            pivot_id=pivot.pivot_id,
            files=tuple(agent.MoveFile(name=f.name, content=f.content) for f in pivot.files),
        )
    if kind == "sync_resources":
        return agent.SyncResources(
            manifests=tuple(message.sync_resources.manifests),
            full_sync=message.sync_resources.full_sync,
        )
    if kind == "unpivot":
        return agent.Unpivot(
            cluster_name=message.unpivot.cluster_name,
            capi_namespace=message.unpivot.capi_namespace,
            cascade=message.unpivot.cascade,
        )
    if kind == "unpivot_complete":
        return agent.UnpivotComplete(cluster_name=message.unpivot_complete.cluster_name)
    return None


# --- replies -------------------------------------------------------------------------------


def reply_to_pb(cluster_name: str, reply: agent.Reply) -> pb.AgentMessage:
    if isinstance(reply, agent.BootstrapResult):
        return pb.AgentMessage(
            cluster_name=cluster_name,
            bootstrap_complete=pb.BootstrapComplete(
                command_id=reply.command_id, success=reply.success, error_message=reply.error
            ),
        )
    if isinstance(reply, agent.PivotResult):
        return pb.AgentMessage(
            cluster_name=cluster_name,
            pivot_complete=pb.PivotComplete(
                success=reply.success,
                error_message=reply.error,
                command_id=reply.command_id,
                pivot_id=reply.pivot_id,
            ),
        )
    if isinstance(reply, agent.StatusReport):
        response = pb.StatusResponse(
            command_id=reply.command_id,
            state=state_to_pb(reply.state),
            kubernetes_version=reply.kubernetes_version,
            agent_version=reply.agent_version,
        )
        if reply.health is not None:
            response.health.CopyFrom(health_to_pb(reply.health))
        return pb.AgentMessage(cluster_name=cluster_name, status_response=response)
    if isinstance(reply, agent.UnpivotExport):
        return pb.AgentMessage(
            cluster_name=cluster_name,
            cluster_deleting=pb.ClusterDeleting(
                cluster_name=cluster_name,
                reason=reply.reason,
                command_id=reply.command_id,
                success=reply.success,
                error_message=reply.error,
                files=[pb.MoveFile(name=f.name, content=f.content) for f in reply.files],
            ),
        )
    return pb.AgentMessage(
        cluster_name=cluster_name,
        command_result=pb.CommandResult(
            command_id=reply.command_id, success=reply.success, error_message=reply.error
        ),
    )


def reply_from_pb(message: pb.AgentMessage) -> agent.Reply | None:
    """The reply an AgentMessage carries, or ``None`` if it is not a reply."""
    kind = message.WhichOneof("payload")
    if kind == "bootstrap_complete":
        done = message.bootstrap_complete
        return agent.BootstrapResult(
            command_id=done.command_id, success=done.success, error=done.error_message
        )
    if kind == "pivot_complete":
        pivot = message.pivot_complete
        return agent.PivotResult(
            command_id=pivot.command_id,
            pivot_id=pivot.pivot_id,
            success=pivot.success,
            error=pivot.error_message,
        )
    if kind == "status_response":
        status = message.status_response
        return agent.StatusReport(
            command_id=status.command_id,
            state=state_from_pb(status.state),
            kubernetes_version=status.kubernetes_version,
            agent_version=status.agent_version,
            health=health_from_pb(status.health) if status.HasField("health") else None,
        )
    if kind == "command_result":
        result = message.command_result
        return agent.CommandResult(
            command_id=result.command_id, success=result.success, error=result.error_message
        )
    if kind == "cluster_deleting" and message.cluster_deleting.command_id:
        deleting = message.cluster_deleting
        return agent.UnpivotExport(
            command_id=deleting.command_id,
            success=deleting.success,
            error=deleting.error_message,
            files=tuple(agent.MoveFile(name=f.name, content=f.content) for f in deleting.files),
            reason=deleting.reason,
        )
    return None


def deleting_notice(cluster_name: str, reason: str) -> pb.AgentMessage:
    """The unsolicited ClusterDeleting: the agent's own LatticeCluster is being deleted."""
    return pb.AgentMessage(
        cluster_name=cluster_name,
        cluster_deleting=pb.ClusterDeleting(cluster_name=cluster_name, reason=reason),
    )


# --- bounded frames --------------------------------------------------------------------------


class FrameError(GRPCError):
    """A frame this end refuses; its status and message go back to the peer."""


async def recv_bounded(
    grpclib_stream: Any, message_type: type[_M], limit: int, *, client: bool = False
) -> _M | None:
    """Receive one message of at most ``limit`` bytes; ``None`` at the end of the stream."""
    raw = grpclib_stream._stream  # private grpclib API: see the module docstring
    if client:
        if not grpclib_stream._recv_initial_metadata_done:
            await grpclib_stream.recv_initial_metadata()
        with grpclib_stream._wrapper:
            return await _read_frame(raw, message_type, limit)
    return await _read_frame(raw, message_type, limit)


async def _read_frame(raw: Any, message_type: type[_M], limit: int) -> _M | None:
    try:
        prefix: bytes = await raw.recv_data(5)
    except AssertionError as exc:  # grpclib: the stream ended inside the prefix
        raise FrameError(Status.INVALID_ARGUMENT, "truncated gRPC frame prefix") from exc
    if not prefix:
        return None
    if len(prefix) != 5:
        raise FrameError(Status.INVALID_ARGUMENT, "truncated gRPC frame prefix")
    if prefix[0] not in (0, 1):
        raise FrameError(Status.INVALID_ARGUMENT, f"invalid gRPC frame flag {prefix[0]}")
    if prefix[0] == 1:
        raise FrameError(Status.UNIMPLEMENTED, "compressed messages are not supported")
    length = int.from_bytes(prefix[1:], "big")
    if length > limit:
        raise FrameError(
            Status.RESOURCE_EXHAUSTED,
            f"message of {length} bytes exceeds the limit of {limit} bytes",
        )
    try:
        body: bytes = await raw.recv_data(length)
    except AssertionError as exc:
        raise FrameError(
            Status.INVALID_ARGUMENT, f"truncated gRPC message (announced {length} bytes)"
        ) from exc
    if len(body) != length:
        raise FrameError(Status.INVALID_ARGUMENT, f"truncated gRPC message (announced {length} bytes)")
    try:
        message = message_type.FromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise FrameError(
            Status.INVALID_ARGUMENT,
            f"not a valid {message_type.DESCRIPTOR.full_name}: {exc}",
        ) from exc
    return message
