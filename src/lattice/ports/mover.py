"""Moving a cluster's CAPI objects between API servers (export to / import from a directory of
``clusterctl move --to-directory`` files), and the two implementations to choose from."""

from __future__ import annotations

import enum
from pathlib import Path
from typing import Protocol


class MoveError(RuntimeError):
    """The move failed; the message carries its own explanation."""


class MoverKind(enum.Enum):
    """Which :class:`ClusterMover` a process uses (``--mover``)."""

    NATIVE = "native"
    """Through the Kubernetes API (lattice.adapters.mover_native): the default."""
    CLUSTERCTL = "clusterctl"
    """The ``clusterctl move`` binary (lattice.adapters.clusterctl), the native mover's oracle."""


class ClusterMover(Protocol):
    lists_kind_by_kind: bool
    """True when the mover lists the move's kinds one after another (clusterctl): on an API
    server that has not yet built a kind's watch cache each list then waits about a second, so
    the cell lists every kind at once before it moves. False for a mover that lists them all at
    once itself (and retries while a cache is built): the warm-up would only add requests."""

    async def export(self, kubeconfig: Path, namespace: str, directory: Path) -> list[Path]:
        """Write every object of ``namespace``'s Cluster graph into ``directory``; return the files.

        The source is left unpaused and unchanged (clusterctl >= 1.12 semantics).
        """
        ...

    async def import_(self, kubeconfig: Path, directory: Path) -> None:
        """Create the objects of an export (owners first); objects that exist are skipped."""
        ...
