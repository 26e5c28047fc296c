"""The kubelet stand-in of a local machine, as its own process: a control plane that cannot
start is reported in its status file with the reason (the host turns that into the
LocalMachine's BootFailed condition), and nothing is left running."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lattice.adapters.binaries import Toolchain
from lattice.domain import local_kubelet as lk

pytestmark = pytest.mark.integration


def test_static_pods_that_cannot_start_are_reported(toolchain: Toolchain, tmp_path: Path) -> None:
    config = lk.KubeletConfig(
        node="m0",
        provider_id="local://c/m0",
        version=toolchain.versions.kubernetes,
        kubeconfig=str(tmp_path / "kubelet.conf"),
        control_plane=lk.StaticControlPlane(
            dir=str(tmp_path / "cp"), pki_dir=str(tmp_path / "no-pki"), apiserver_port=1
        ),
    )
    (tmp_path / lk.CONFIG_FILE).write_text(lk.dump_config(config))
    done = subprocess.run(
        [sys.executable, "-m", "lattice.app.cli", "local-kubelet", "--machine-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    status = lk.parse_status((tmp_path / lk.STATUS_FILE).read_text())
    assert status.phase is lk.Phase.FAILED
    assert "no-pki/ca.crt" in status.message
