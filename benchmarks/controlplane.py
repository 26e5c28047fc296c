"""Start three real control planes at once and print what that costs.

One JSON line per figure: ``{"metric": ..., "value": ..., "unit": ...}``. Needs the binaries
of scripts/build-k8s.sh. Usage: ``python benchmarks/controlplane.py [--count N] [--kcm]``.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

from lattice.adapters.binaries import locate
from lattice.adapters.controlplane import ControlPlane, start_control_planes


def rss_kib(pid: int) -> int:
    """Resident set size of ``pid`` in KiB, from /proc."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit}), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--count", type=int, default=3)
    parser.add_argument("--kcm", action="store_true", help="also run kube-controller-manager")
    args = parser.parse_args()
    tools = locate()
    with tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp:
        base = Path(tmp)
        # One alone first: the start time of a single control plane.
        started = time.monotonic()
        single = ControlPlane.create(
            "single", base_dir=base, toolchain=tools, controller_manager=args.kcm
        ).start()
        emit("controlplane_start_single", time.monotonic() - started, "s")
        single.stop()

        started = time.monotonic()
        cps = start_control_planes(args.count, base_dir=base, toolchain=tools, controller_manager=args.kcm)
        elapsed = time.monotonic() - started
        try:
            emit(f"controlplane_start_{args.count}_concurrent", elapsed, "s")
            time.sleep(5)  # let start-up work settle before measuring memory
            totals = []
            for cp in cps:
                per_process = {p.name: rss_kib(p.pid) for p in cp._procs.values() if p.pid}
                totals.append(sum(per_process.values()))
                for name, kib in per_process.items():
                    emit(f"rss_{cp.name}_{name}", kib / 1024, "MiB")
            emit("rss_per_controlplane_mean", sum(totals) / len(totals) / 1024, "MiB")
            started = time.monotonic()
            cps[0].install_capi_crds()
            emit("install_capi_crds", time.monotonic() - started, "s")
            emit("rss_with_capi_crds", sum(rss_kib(p) for p in cps[0].pids()) / 1024, "MiB")
            started = time.monotonic()
            cps[0].restart_apiserver()
            emit("apiserver_restart", time.monotonic() - started, "s")
        finally:
            for cp in cps:
                cp.stop()
    emit("cpus", os.cpu_count() or 0, "count")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
