"""`lattice install`, `lattice demo` and `lattice down` as a user runs them: real processes,
real control planes, real streams. Nothing is mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lattice.adapters.binaries import Toolchain
from lattice.adapters.controlplane import free_port
from lattice.adapters.local_processes import processes_under
from tests.e2e.conftest import kubectl, machine_conditions

pytestmark = pytest.mark.e2e

MGMT = """\
apiVersion: lattice.dev/v1alpha1
kind: LatticeCluster
metadata:
  name: mgmt
spec:
  provider:
    type: local
    kubernetes:
      version: "1.36.3"
  nodes:
    controlPlane: 1
    workers: 1
  parentConfig:
    host: 127.0.0.1
    grpcPort: {grpc}
    bootstrapPort: {bootstrap}
    proxyPort: {proxy}
"""


def lattice(*args: str) -> list[str]:
    return [sys.executable, "-m", "lattice.app.cli", *args]


def down(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lattice("down", "--state-dir", str(state)), capture_output=True, text=True, check=False
    )


def install(manifest: Path, state: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        lattice("install", "-f", str(manifest), "--state-dir", str(state), "--via", "helm"),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, "COLUMNS": "200"},
    )


def test_install_interrupted_after_provisioning_resumes(tmp_path: Path, toolchain: Toolchain) -> None:
    state = tmp_path / "state"
    manifest = tmp_path / "mgmt.yaml"
    manifest.write_text(MGMT.format(grpc=free_port(), bootstrap=free_port(), proxy=free_port()))
    try:
        first = subprocess.Popen(
            # through the Helm chart (the demo installs from the manifests): the CRDs, and the
            # operator the bootstrap cell delivers, are rendered by helm template
            lattice("install", "-f", str(manifest), "--state-dir", str(state), "--via", "helm"),
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, "COLUMNS": "200"},
        )
        assert first.stderr is not None
        seen = []
        try:
            for line in first.stderr:
                seen.append(line)
                if "control plane initialized" in line:
                    break  # the management cluster is provisioned: interrupt here
            else:
                pytest.fail("install ended before provisioning:\n" + "".join(seen))
        finally:
            os.killpg(first.pid, signal.SIGKILL)
            first.wait(30)

        resumed = install(manifest, state, 600)
        assert resumed.returncode == 0, resumed.stderr
        assert "reusing" in resumed.stderr  # the bootstrap cluster was picked up, not recreated
        assert "is self-managing" in resumed.stderr
        record = json.loads((state / "install.json").read_text())
        assert record["via"] == "helm"
        # Exactly one management machine: nothing was duplicated by the resume.
        assert len(list((state / "machines").glob("mgmt-control-plane-*/machine.json"))) == 1
        assert not (state / "bootstrap").exists()
        assert "Ready" in kubectl(toolchain, Path(record["kubeconfig"]), "get", "lc", "mgmt")
        # Its own KCP finds its control plane up to date: the management cluster's own operator
        # compiles it as the bootstrap cell did (as a root, without a parent), so no rollout.
        # The pivot does not carry the Machines' status: the cluster's own controllers write
        # their conditions again, so wait until they have.
        for name, up_to_date in machine_conditions(
            toolchain, Path(record["kubeconfig"]), "capi-mgmt", "UpToDate"
        ).items():
            assert up_to_date.get("status") == "True", (name, up_to_date)
        again = install(manifest, state, 60)  # once more: a no-op
        assert again.returncode == 0
        assert "already installed" in again.stderr
    finally:
        stopped = down(state)
    assert stopped.returncode == 0
    assert processes_under(state) == []
