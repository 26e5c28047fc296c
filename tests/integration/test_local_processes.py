"""local_processes: the one place that signals the processes Lattice starts."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from lattice.adapters import local_processes

pytestmark = pytest.mark.integration


def _group(script: str) -> subprocess.Popen[bytes]:
    """A shell leading its own process group, with a child of its own in it, once it has run
    its first line (it prints ``ready`` then)."""
    proc = subprocess.Popen(["/bin/sh", "-c", script], start_new_session=True, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    return proc


def test_a_group_that_stops_on_sigterm_is_not_killed() -> None:
    proc = _group("echo ready; sleep 60 & wait")
    assert not local_processes.terminate([proc.pid], 30, group=True, alive=lambda: proc.poll() is None)
    assert proc.returncode == -signal.SIGTERM


def test_a_group_that_ignores_sigterm_is_killed_after_the_timeout() -> None:
    proc = _group("trap '' TERM; echo ready; sleep 60 & wait; sleep 60")
    killed = local_processes.terminate([proc.pid], 0.5, group=True, alive=lambda: proc.poll() is None)
    assert killed
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL


def test_without_a_predicate_it_waits_for_the_pids_to_leave_proc() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    # Reaped by a thread of its own, so the pid leaves /proc once the process exits.
    threading.Thread(target=proc.wait, daemon=True).start()
    assert not local_processes.terminate([proc.pid], 30)
    assert not Path(f"/proc/{proc.pid}").exists()


def test_signalling_a_process_that_is_gone_is_no_error() -> None:
    proc = subprocess.Popen(["/bin/true"])
    proc.wait()
    local_processes.send(proc.pid, signal.SIGTERM)
    local_processes.send(proc.pid, signal.SIGKILL, group=True)
