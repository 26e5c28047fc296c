"""Finding and stopping the processes Lattice started under a state directory (machines, their
kubelet stand-ins and pods, managers), by their command lines: what ``lattice down`` and the
tests use to leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

__all__ = ["processes_under", "stop_all"]


def processes_under(state_dir: Path) -> list[int]:
    """Pids of every process whose command line mentions ``state_dir`` (machines and pods)."""
    marker = str(state_dir.resolve())
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


STOP_ROUNDS = 3


def stop_all(state_dir: Path, timeout: float = 10.0) -> list[int]:
    """Stop every machine and pod the local provider started under ``state_dir``.

    Looks again after each round: a process that was stopping may have started another
    meanwhile (an operator killed while it started its Cluster API managers, which are started
    from a worker thread and so have no parent-death signal)."""
    stopped: list[int] = []
    for _ in range(STOP_ROUNDS):
        pids = [pid for pid in processes_under(state_dir) if pid not in stopped]
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in pids):
            time.sleep(0.1)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        stopped += pids
    return stopped
