"""Stopping processes Lattice started: the one place that signals them (:func:`send`,
:func:`terminate`), used by the control planes' processes, the machine host's kubelet stand-ins,
the installer's bootstrap operator, and :func:`stop_all`, which finds every process started under
a state directory (machines, their kubelet stand-ins and pods, managers) by its command line:
what ``lattice down`` and the tests use to leave nothing behind."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Sequence
from pathlib import Path

__all__ = ["processes_under", "send", "stop_all", "terminate"]

POLL_SECONDS = 0.1


def send(pid: int, sig: signal.Signals, *, group: bool = False) -> None:
    """Signal a process, or with ``group`` the process group it leads; one already gone (or no
    longer ours) is no error."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        if group:
            os.killpg(pid, sig)
        else:
            os.kill(pid, sig)


def _any_exists(pids: Sequence[int]) -> bool:
    return any(Path(f"/proc/{pid}").exists() for pid in pids)


def terminate(
    pids: Sequence[int],
    timeout: float,
    *,
    group: bool = False,
    alive: Callable[[], bool] | None = None,
) -> bool:
    """SIGTERM each process (its group, with ``group``), wait up to ``timeout`` seconds while
    ``alive()`` (by default: while any of them is in /proc), then SIGKILL them if still alive.
    Returns whether SIGKILL was needed."""
    still = alive if alive is not None else (lambda: _any_exists(pids))
    for pid in pids:
        send(pid, signal.SIGTERM, group=group)
    deadline = time.monotonic() + timeout
    while still() and time.monotonic() < deadline:
        time.sleep(POLL_SECONDS)
    if not still():
        return False
    for pid in pids:
        send(pid, signal.SIGKILL, group=group)
    return True


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
        terminate(pids, timeout)
        stopped += pids
    return stopped
