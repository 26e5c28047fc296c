"""The test-only fault points: armed by LATTICE_FAULT_AT, a no-op otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from lattice.app import faults
from lattice.app.cli import main


def test_nothing_is_armed_without_the_variable() -> None:
    assert faults.armed({}) == frozenset()
    assert faults.armed({faults.ENV: " pivot.exported , pivot.deleted,"}) == {
        "pivot.exported",
        "pivot.deleted",
    }


def test_an_unknown_point_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"unknown fault points \['pivot\.typo'\]; known: pivot\.exported"):
        faults.armed({faults.ENV: "pivot.typo"})


def test_a_point_not_armed_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "pivot.deleted")
    faults.hit("pivot.exported")  # still here


def test_an_armed_point_kills_the_whole_process_group() -> None:
    code = "import subprocess, time; from lattice.app import faults; " + (
        "child = subprocess.Popen(['sleep', '30']); print(child.pid, flush=True); "
        "faults.hit('pivot.imported'); time.sleep(30)"
    )
    process = subprocess.Popen(
        [sys.executable, "-c", code],
        env={**os.environ, faults.ENV: "pivot.imported"},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, err = process.communicate(timeout=20)
    assert process.returncode == -signal.SIGKILL
    child = Path(f"/proc/{int(out.split()[0])}/status")
    state = child.read_text().split("State:")[1].split()[0] if child.exists() else "gone"
    assert state in {"gone", "Z"}, state  # killed with its parent (a zombie until reaped)
    assert "fault injected at pivot.imported" in err or err == ""


def test_the_operator_refuses_unknown_points(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(faults.ENV, "nowhere")
    assert main(["operator", "--kubeconfig", "/nonexistent"]) == 2
    assert "unknown fault points ['nowhere']" in capsys.readouterr().err
