"""``lattice local-kubelet`` refuses a malformed config with every problem named (exit 2) and
says so in its status file, where the machine host reads it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lattice.app import cli
from lattice.domain import local_kubelet as lk


def test_a_malformed_config_is_refused_by_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / lk.CONFIG_FILE).write_text(json.dumps({"node": "n", "heartbeatSeconds": 0}))
    rc = cli.main(["local-kubelet", "--machine-dir", str(tmp_path)])
    assert rc == 2
    err = capsys.readouterr().err
    for field in ("providerID:", "version:", "kubeconfig:", "heartbeatSeconds:"):
        assert field in err
    status = lk.parse_status((tmp_path / lk.STATUS_FILE).read_text())
    assert status.phase is lk.Phase.FAILED
    assert "providerID:" in status.message


def test_a_missing_machine_directory_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc = cli.main(["local-kubelet", "--machine-dir", str(tmp_path / "gone")])
    assert rc == 2
    assert "kubelet.json" in capsys.readouterr().err
    assert not (tmp_path / "gone").exists()
