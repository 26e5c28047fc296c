"""Simple in-process implementations of the agent ports, for tests and for development.

None of these touches Kubernetes; the real adapters (server-side apply through the API
server, ``clusterctl move --from-directory``) come with the operator. They are clearly named
for what they do:

* :class:`InMemoryAgentStatusSink` keeps the latest :class:`~lattice.domain.agent.AgentStatus`
  per cluster and the full history, and lets tests wait for a condition;
* :class:`RecordingManifestApplier` and :class:`RecordingPivotImporter` remember what they
  were asked to do (optionally failing on demand);
* :class:`DirectoryManifestApplier` and :class:`DirectoryPivotImporter` write what they receive
  into a directory (what ``lattice agent --record-dir`` uses);
* :class:`RecordingUnpivoter` hands back fixed files and remembers what it was asked;
* :class:`UnconfiguredApplier` refuses every command with a clear message;
* :class:`StaticClusterProbe` reports fixed facts.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

from attrs import evolve

from lattice.domain import agent
from lattice.ports.agent import (
    AgentStatusSink,
    ClusterProbe,
    ExecutionError,
    ManifestApplier,
    PivotImporter,
)


class InMemoryAgentStatusSink:
    def __init__(self) -> None:
        self.latest: dict[str, agent.AgentStatus] = {}
        self.history: list[agent.AgentStatus] = []
        self._changed = asyncio.Condition()

    async def record(self, status: agent.AgentStatus) -> None:
        self.latest[status.cluster_name] = status
        self.history.append(status)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[dict[str, agent.AgentStatus]], bool], within: float = 10.0
    ) -> None:
        """Wait until ``predicate(latest)`` holds (raises TimeoutError after ``within`` s)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: predicate(self.latest))


class RecordingUnpivoter:
    def __init__(
        self,
        files: tuple[agent.MoveFile, ...] = (),
        deleting_reason: str | None = None,
        fail_with: str | None = None,
    ) -> None:
        self.files = files
        self.deleting_reason = deleting_reason
        self.fail_with = fail_with
        self.exported: list[agent.Unpivot] = []
        self.released: list[agent.UnpivotComplete] = []

    async def deleting(self) -> str | None:
        return None if self.released else self.deleting_reason

    async def export_own(self, command: agent.Unpivot) -> tuple[agent.MoveFile, ...]:
        if self.fail_with is not None:
            raise ExecutionError(self.fail_with)
        self.exported.append(command)
        return self.files

    async def release(self, command: agent.UnpivotComplete) -> None:
        self.released.append(command)


class RecordingManifestApplier:
    def __init__(self, fail_with: str | None = None) -> None:
        self.applied: list[tuple[bytes, ...]] = []
        self.fail_with = fail_with

    async def apply(self, manifests: tuple[bytes, ...]) -> None:
        if self.fail_with is not None:
            raise ExecutionError(self.fail_with)
        self.applied.append(manifests)


class RecordingPivotImporter:
    def __init__(self, fail_with: str | None = None, delay: float = 0.0) -> None:
        self.imported: list[agent.PivotManifests] = []
        self.fail_with = fail_with
        self.delay = delay

    async def import_move(self, pivot: agent.PivotManifests) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise ExecutionError(self.fail_with)
        self.imported.append(pivot)


class DirectoryManifestApplier:
    """Writes each applied stream to ``<dir>/apply-<sha256[:16]>.yaml``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def apply(self, manifests: tuple[bytes, ...]) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        for manifest in manifests:
            name = f"apply-{hashlib.sha256(manifest).hexdigest()[:16]}.yaml"
            (self.directory / name).write_bytes(manifest)


class DirectoryPivotImporter:
    """Writes a pivot's files to ``<dir>/pivot-<pivot_id>/`` (names were validated as plain)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    async def import_move(self, pivot: agent.PivotManifests) -> None:
        target = self.directory / f"pivot-{pivot.pivot_id}"
        target.mkdir(parents=True, exist_ok=True)
        for move_file in pivot.files:
            (target / move_file.name).write_bytes(move_file.content)


class UnconfiguredApplier:
    """Refuses to apply or import: this build has no Kubernetes adapter wired in."""

    message = "this agent has no Kubernetes applier configured (see `lattice agent --help`)"

    async def apply(self, manifests: tuple[bytes, ...]) -> None:
        raise ExecutionError(self.message)

    async def import_move(self, pivot: agent.PivotManifests) -> None:
        raise ExecutionError(self.message)


class StaticClusterProbe:
    def __init__(
        self,
        kubernetes_version: str = "",
        health: agent.ClusterHealth | None = None,
        *,
        self_managed: bool = False,
    ) -> None:
        self._version = kubernetes_version
        self._health = health or agent.ClusterHealth()
        self._self_managed = self_managed

    async def kubernetes_version(self) -> str:
        return self._version

    async def health(self) -> agent.ClusterHealth:
        return self._health

    async def self_managed(self) -> bool:
        return self._self_managed

    def set_health(self, health: agent.ClusterHealth) -> None:
        self._health = evolve(health)


_sink: type[AgentStatusSink] = InMemoryAgentStatusSink
_applier: type[ManifestApplier] = RecordingManifestApplier
_dir_applier: type[ManifestApplier] = DirectoryManifestApplier
_importer: type[PivotImporter] = RecordingPivotImporter
_dir_importer: type[PivotImporter] = DirectoryPivotImporter
_unconfigured_applier: type[ManifestApplier] = UnconfiguredApplier
_unconfigured_importer: type[PivotImporter] = UnconfiguredApplier
_probe: type[ClusterProbe] = StaticClusterProbe
