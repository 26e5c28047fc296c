"""CLI start time: ``lattice --help`` and ``lattice compile`` of one file, as a user runs them.

Goal (issue 18): each under 0.3 s on the 2-core machine. Each command runs ``--runs`` times in
a fresh process (``python -m lattice.app.cli``, what the ``lattice`` console script runs) and
the median wall time is printed. Two baselines come from the same run:

* the limit: ``python -c pass``, the interpreter's own start, which no command can beat;
* the same commands with no bytecode cache at all (``PYTHONPYCACHEPREFIX`` at an empty
  directory, ``PYTHONDONTWRITEBYTECODE=1``): every module, the standard library's too, compiled
  from source at each start. That is an upper bound of the cost ``scripts/python-env.sh``
  removes by compiling the environment's bytecode (a venv installed without it still has the
  standard library's).

Prints one JSON line per figure. Usage: python benchmarks/cli.py [--runs N] [--file F]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GOAL_S = 0.3


def median_wall(argv: list[str], runs: int, env: dict[str, str]) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 4), "unit": unit}), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=15)
    parser.add_argument("--file", default="examples/clusters/mgmt-docker.yaml")
    args = parser.parse_args()

    cli = [sys.executable, "-m", "lattice.app.cli"]
    commands = {"help": [*cli, "--help"], "compile": [*cli, "compile", args.file]}
    cached = dict(os.environ)
    emit("interpreter_start_s", median_wall([sys.executable, "-c", "pass"], args.runs, cached), "s")
    with tempfile.TemporaryDirectory() as empty:
        uncached = {**cached, "PYTHONPYCACHEPREFIX": empty, "PYTHONDONTWRITEBYTECODE": "1"}
        for name, argv in commands.items():
            median = median_wall(argv, args.runs, cached)
            emit(f"{name}_s", median, "s")
            emit(f"{name}_vs_goal", median / GOAL_S, "ratio")
            without = median_wall(argv, args.runs, uncached)
            emit(f"{name}_no_bytecode_cache_s", without, "s")
            emit(f"{name}_vs_no_bytecode_cache", median / without, "ratio")


if __name__ == "__main__":
    main()
