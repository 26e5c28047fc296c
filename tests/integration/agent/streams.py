"""Message builders for raw test streams."""

from __future__ import annotations

from lattice.proto.agent.v1 import agent_pb2 as pb


def ready(cluster: str, state: int = pb.AGENT_STATE_PROVISIONING) -> pb.AgentMessage:
    return pb.AgentMessage(
        cluster_name=cluster,
        ready=pb.AgentReady(agent_version="raw/1", kubernetes_version="v1.34.1", state=state),
    )


def beat(cluster: str, sequence: int) -> pb.AgentMessage:
    return pb.AgentMessage(
        cluster_name=cluster, heartbeat=pb.Heartbeat(state=pb.AGENT_STATE_READY, sequence=sequence)
    )
