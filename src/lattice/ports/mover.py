"""Moving a cluster's CAPI objects between API servers (``clusterctl move`` to/from a directory)."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol


class MoveError(RuntimeError):
    """The move tool failed; the message carries its own explanation."""


class ClusterMover(Protocol):
    async def export(self, kubeconfig: Path, namespace: str, directory: Path) -> list[Path]:
        """Write every object of ``namespace``'s Cluster graph into ``directory``; return the files.

        The source is left unpaused and unchanged (clusterctl >= 1.12 semantics).
        """
        ...

    async def import_(self, kubeconfig: Path, directory: Path) -> None:
        """Create the objects of an export (owners first); objects that exist are skipped."""
        ...
