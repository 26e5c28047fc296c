"""The test-only fault points: armed by LATTICE_FAULT_AT, a no-op otherwise."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
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

    def state() -> str:
        try:
            return child.read_text().split("State:")[1].split()[0]
        except (FileNotFoundError, ProcessLookupError):  # reaped (ESRCH while it goes)
            return "gone"

    # The group's SIGKILL reaches the child asynchronously: a CI run saw it still running (R)
    # just after its parent had died. It must be dead (a zombie until reaped) within seconds.
    deadline = time.monotonic() + 10
    while state() not in {"gone", "Z"} and time.monotonic() < deadline:
        time.sleep(0.05)
    assert state() in {"gone", "Z"}, state()
    assert "fault injected at pivot.imported" in err or err == ""


def test_the_operator_refuses_unknown_points(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(faults.ENV, "nowhere")
    assert main(["operator", "--kubeconfig", "/nonexistent"]) == 2
    assert "unknown fault points ['nowhere']" in capsys.readouterr().err


def test_a_cells_agent_faults_are_read_per_cluster() -> None:
    assert faults.agent_faults({}) == {}
    environ = {faults.AGENT_ENV: "w1=agent.import.received; w2 = agent.import.received+agent.import.done;"}
    assert faults.agent_faults(environ) == {
        "w1": "agent.import.received",
        "w2": "agent.import.received+agent.import.done",
    }
    assert faults.parse("agent.import.received+agent.import.done", faults.AGENT_POINTS) == set(
        faults.AGENT_POINTS
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("agent.import.received", "is not <cluster>=<point>"),
        ("=agent.import.received", "is not <cluster>=<point>"),
        ("w1=pivot.exported", r"unknown fault points \['pivot.exported'\]; known: agent.import.received"),
    ],
)
def test_a_cells_agent_faults_name_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        faults.agent_faults({faults.AGENT_ENV: text})


def test_points_passed_in_are_used_instead_of_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(faults.ENV, "pivot.deleted")
    faults.hit("pivot.deleted", frozenset({"agent.import.done"}))  # still here


def test_the_operator_refuses_a_bad_agent_fault_list(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv(faults.AGENT_ENV, "w1")
    assert main(["operator", "--kubeconfig", "/nonexistent"]) == 2
    assert "LATTICE_AGENT_FAULT_AT: 'w1' is not <cluster>=<point>" in capsys.readouterr().err
