"""The benchmarks of the pure core run from a fresh clone as docs/ says (small sizes here: the
figures come from the full runs, never from tests). compile.py had drifted out of the supported
Kubernetes range and failed on its first cluster without anything noticing."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    "args",
    [
        ["benchmarks/compile.py", "--clusters", "60", "--rounds", "1"],
        [
            "benchmarks/catalog.py",
            "--clusters",
            "5",
            "--per-cluster",
            "3",
            "--sync",
            "2",
            "--lookups",
            "20",
            "--rounds",
            "1",
        ],
    ],
)
def test_a_pure_benchmark_prints_its_figures(args: list[str]) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT)])}
    done = subprocess.run(
        [sys.executable, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
    figures = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    assert figures
    assert all({"metric", "value", "unit"} <= set(figure) for figure in figures)
