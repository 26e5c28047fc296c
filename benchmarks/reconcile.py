"""Reconcile throughput of the real operator against a real control plane.

Creates N LatticeClusters (default 1,000) on a fresh kube-apiserver, with `lattice operator`
running as its own process, and measures for each cluster the time from its create call
returning to the moment its last CAPI object (the MachineDeployment, last in apply order) is
seen by a watch; plus the time until all N are applied and the operator's peak RSS (VmHWM).

Targets (issue 5): p50 < 150 ms, p99 < 500 ms, all 1,000 in < 60 s, RSS < 250 MB.
Usage: python benchmarks/reconcile.py [--clusters N] [--concurrency C] [--workers W]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_kr8s import Kr8sKube


def cluster(i: int) -> dict[str, object]:
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": f"bench-{i}"},
        "spec": {
            "cellRef": "mgmt",
            "provider": {"type": "docker", "kubernetes": {"version": "1.35.0"}},
            "nodes": {"controlPlane": 1, "workers": i % 5},
        },
    }


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def run(args: argparse.Namespace, cp: ControlPlane, workdir: Path) -> dict[str, float]:
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    log = (workdir / "operator.log").open("wb")
    operator = subprocess.Popen(  # noqa: ASYNC220 - started once, before anything is measured
        [
            sys.executable,
            "-m",
            "lattice.app.cli",
            "operator",
            "--kubeconfig",
            str(cp.kubeconfig),
            "--cluster-name",
            "mgmt",
            "--cell-endpoint",
            "10.0.0.1",
            "--no-leader-elect",
            "--workers",
            str(args.workers),
            "--health-port",
            str(free_port()),
            "--log-level",
            "warning",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    created: dict[str, float] = {}
    applied: dict[str, float] = {}
    done = asyncio.Event()
    try:
        listed = await api.list("cluster.x-k8s.io/v1beta2", "MachineDeployment")

        async def watch() -> None:
            version = listed.resource_version
            while not done.is_set():
                async for event in api.watch(
                    "cluster.x-k8s.io/v1beta2", "MachineDeployment", version, timeout_seconds=60
                ):
                    meta = event.object.get("metadata", {})
                    version = meta.get("resourceVersion", version)
                    name = meta.get("labels", {}).get("lattice.dev/cluster")
                    if event.type == "ADDED" and name and name not in applied:
                        applied[name] = time.perf_counter()
                        if len(applied) == args.clusters:
                            done.set()
                            return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(3.0)  # the operator is up and its informers are synced
        semaphore = asyncio.Semaphore(args.concurrency)
        start = time.perf_counter()

        async def create(i: int) -> None:
            async with semaphore:
                await api.create(cluster(i))
                created[f"bench-{i}"] = time.perf_counter()

        await asyncio.gather(*(create(i) for i in range(args.clusters)))
        create_all = time.perf_counter() - start
        await asyncio.wait_for(done.wait(), timeout=args.timeout)
        total = max(applied.values()) - start
        watcher.cancel()
        latencies = sorted((applied[n] - created[n]) * 1000 for n in created)
        rss = peak_rss_mb(operator.pid)
    finally:
        operator.terminate()
        operator.wait(30)
        log.close()
    return {
        "create_all_s": create_all,
        "total_s": total,
        "p50_ms": statistics.median(latencies),
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1],
        "rss_mb": rss,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp:
        workdir = Path(tmp)
        cp = ControlPlane.create("bench", base_dir=workdir)
        cp.start()
        try:
            cp.install_capi_crds()
            cp.install_lattice_crds()
            figures = asyncio.run(run(args, cp, workdir))
        finally:
            cp.stop()
    print(
        f"{args.clusters} LatticeClusters: created in {figures['create_all_s']:.1f} s, all applied in "
        f"{figures['total_s']:.1f} s; create→applied p50 {figures['p50_ms']:.0f} ms, "
        f"p99 {figures['p99_ms']:.0f} ms; operator peak RSS {figures['rss_mb']:.0f} MB"
    )
    for metric, unit in (("total_s", "s"), ("p50_ms", "ms"), ("p99_ms", "ms"), ("rss_mb", "MB")):
        print(json.dumps({"metric": f"reconcile_{metric}", "value": round(figures[metric], 1), "unit": unit}))


if __name__ == "__main__":
    main()
