"""The agent's ports without a cluster: what ``lattice agent`` runs with no ``--kubeconfig``.

None of these touches Kubernetes (the real adapters are in :mod:`lattice.adapters.agent_kube`):

* :class:`DirectoryManifestApplier` and :class:`DirectoryPivotImporter` write what they receive
  into a directory (``lattice agent --record-dir``);
* :class:`UnconfiguredApplier` refuses every command with a clear message (no directory);
* :class:`StaticClusterProbe` reports fixed facts (tests set its health).

The test doubles (recording and in-memory ports) are in :mod:`lattice.testing.agents`.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from attrs import evolve

from lattice.domain import agent
from lattice.ports.agent import (
    ClusterProbe,
    ExecutionError,
    ManifestApplier,
    PivotImporter,
)


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


_dir_applier: type[ManifestApplier] = DirectoryManifestApplier
_dir_importer: type[PivotImporter] = DirectoryPivotImporter
_unconfigured_applier: type[ManifestApplier] = UnconfiguredApplier
_unconfigured_importer: type[PivotImporter] = UnconfiguredApplier
_probe: type[ClusterProbe] = StaticClusterProbe
