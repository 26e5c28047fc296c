"""``lattice operator`` as a cell refuses to start without the cluster add-ons, naming the
script that builds them (exit 2), before it connects to anything."""

from __future__ import annotations

from pathlib import Path

import pytest

from lattice.app import cli


def test_a_cell_without_its_add_ons_is_refused_with_the_script_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LATTICE_ADDONS_DIR", str(tmp_path / "not-built"))
    rc = cli.main(
        [
            "operator",
            "--kubeconfig",
            str(tmp_path / "kc"),
            "--cell-host",
            "127.0.0.1",
            "--state-dir",
            str(tmp_path),
        ]
    )
    assert rc == 2
    err = capsys.readouterr().err
    assert "a cell needs the cluster add-ons" in err
    assert "bash scripts/build-addons.sh" in err
