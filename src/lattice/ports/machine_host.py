"""Where machines run: the one port through which the local infrastructure provider starts and
stops the processes that stand in for a VM (the adapter alone starts processes)."""

from __future__ import annotations

from typing import Protocol

from lattice.domain.bootstrap_data import BootstrapData
from lattice.domain.local_infra import Boot


class MachineBootError(RuntimeError):
    """The machine could not boot from its bootstrap data; the message says which step failed."""


class MachineHost(Protocol):
    def booted(self, machine: str) -> bool:
        """Whether ``machine`` has booted (its bootstrap commands all ran) and still runs."""
        ...

    async def boot(self, request: Boot, data: BootstrapData) -> None:
        """Lay the files, run kubeadm's part (emulated) and every other command verbatim.

        Idempotent: a machine that has booted is left alone."""
        ...

    async def stop(self, machine: str) -> bool:
        """Stop every process of ``machine`` and remove it, disk included, as a cloud deletes a
        VM; False when there was nothing left of it (already released)."""
        ...

    async def close(self) -> None:
        """Stop the host's own background work (heartbeats); the machines keep running."""
        ...
