"""`lattice demo` then `lattice down` as a user runs them: real processes, real control planes,
the real Cluster API controllers. Nothing is mocked."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from lattice.adapters.controlplane import port_in_use
from lattice.adapters.local_processes import processes_under
from tests.e2e.test_install import down, lattice

pytestmark = pytest.mark.e2e


def test_demo_then_down_leaves_nothing_behind(tmp_path: Path) -> None:
    state = tmp_path / "demo"
    started = time.monotonic()
    ports: list[int] = []
    try:
        demo = subprocess.run(
            lattice("demo", "--state-dir", str(state)),
            capture_output=True,
            text=True,
            timeout=900,
            check=False,
            env={**os.environ, "COLUMNS": "200"},
        )
        elapsed = time.monotonic() - started
        assert demo.returncode == 0, demo.stderr[-3000:]
        print(f"\nlattice demo: both workload clusters Ready in {elapsed:.0f} s")
        assert "workload-a kubeconfig:" in demo.stdout
        assert "workload-b kubeconfig:" in demo.stdout
        assert "get lc" in demo.stdout
        record = json.loads((state / "install.json").read_text())
        ports = [record["cluster"]["spec"]["parentConfig"][k] for k in ("grpcPort", "bootstrapPort")]
        assert processes_under(state)  # the demo leaves its clusters running for the user
    finally:
        stopped = down(state)
    assert stopped.returncode == 0
    time.sleep(1.0)
    assert processes_under(state) == []
    assert not state.exists()
    assert not any(port_in_use(port) for port in ports)
