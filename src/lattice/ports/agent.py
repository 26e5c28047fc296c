"""Ports of the agent <-> cell link, on both ends.

Cell side: :class:`AgentChannel` (send a command to a connected agent and await its reply) and
:class:`AgentStatusSink` (where agent state goes: the LatticeCluster status in production).

Agent side: :class:`ManifestApplier`, :class:`PivotImporter`, :class:`Unpivoter` and
:class:`ClusterProbe`, through which the agent executes commands and reports on its own cluster.

Errors are port-level: :class:`AgentNotConnected`, :class:`CommandTimeout` and
:class:`CommandFailed` on the cell side; agent-side adapters raise :class:`ExecutionError`
(any other exception is also caught and reported as a failed command).
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from attrs import field, frozen

from lattice.domain import agent


class AgentRevocations(Protocol):
    """Where a cell records that a cluster's agent certificates are no longer accepted."""

    async def revoke(self, cluster: str, at: dt.datetime) -> None:
        """Refuse every certificate of ``cluster`` issued up to ``at`` (kube.KubeError on failure)."""
        ...


class AgentNotConnected(RuntimeError):
    """No stream from this cluster's agent (it may reconnect later)."""


class CommandTimeout(TimeoutError):
    """The agent did not answer within the timeout; the command may still run (idempotent)."""


class AgentChannel(Protocol):
    """The cell's view of its connected agents."""

    def connected(self) -> frozenset[str]:
        """Clusters with an open stream."""
        ...

    async def send_command(
        self, cluster_name: str, command: agent.Command, reply_within: float
    ) -> agent.Reply:
        """Send ``command`` and wait for its reply.

        Raises :class:`AgentNotConnected` when the agent is not connected and does not come
        back within ``reply_within`` seconds, :class:`CommandTimeout` when no reply arrives in
        time. A reply that reports failure is returned, not raised.
        """
        ...


class AgentStatusSink(Protocol):
    """Receives every change of an agent's status (connection, state, health)."""

    async def record(self, status: agent.AgentStatus) -> None: ...


class ExecutionError(RuntimeError):
    """A command could not be executed; the message goes back to the cell."""


class ManifestApplier(Protocol):
    async def apply(self, manifests: tuple[bytes, ...]) -> None:
        """Apply every YAML/JSON stream in order (server-side apply); raise on failure."""
        ...


class PivotImporter(Protocol):
    async def import_move(self, pivot: agent.PivotManifests) -> None:
        """Import a ``clusterctl move --to-directory`` export; idempotent; raise on failure."""
        ...


class Unpivoter(Protocol):
    """The agent's half of deleting its self-managing cluster: hand the CAPI objects back."""

    async def deleting(self) -> str | None:
        """Why this cluster's own LatticeCluster is being deleted, or None when it is not (or
        the cell already holds the objects)."""
        ...

    async def export_own(self, command: agent.Unpivot) -> tuple[agent.MoveFile, ...]:
        """Pause the cluster's own Cluster and export its graph (``clusterctl move
        --to-directory``); raise :class:`ExecutionError` to refuse (a cell with children)."""
        ...

    async def release(self, command: agent.UnpivotComplete) -> None:
        """The cell holds the objects: mark the own LatticeCluster so its operator lets go."""
        ...


class ClusterProbe(Protocol):
    """What the agent reports about its own cluster."""

    async def kubernetes_version(self) -> str: ...

    async def health(self) -> agent.ClusterHealth: ...

    async def self_managed(self) -> bool:
        """Whether this cluster already holds its own CAPI objects (its pivot is done)."""
        ...


@frozen
class AgentCredentials:
    """An agent's client identity and the CA bundle it trusts, as PEM bytes."""

    cert_pem: bytes
    key_pem: bytes = field(repr=False)
    ca_pem: bytes


class CredentialStore(Protocol):
    """Where a renewed identity is kept so that the agent's next start uses it."""

    async def save(self, credentials: AgentCredentials) -> None:
        """Persist; raise on failure (the running agent keeps the new identity in memory)."""
        ...
