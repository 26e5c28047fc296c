"""A local cluster brought up and deleted by the real Cluster API managers, timed and weighed.

A management control plane runs the three real managers (core, CABPK, KCP) with their webhooks;
the contract-shaped local provider boots each machine from the bootstrap data CABPK rendered.
Prints one JSON line per figure: ``{"metric": ..., "value": ..., "unit": ...}``:

- ``capi_managers_start``: the three managers started and their webhooks registered;
- ``capi_cluster_control_plane_initialized`` / ``capi_cluster_all_machines_running``: from the
  compiled objects applied to KCP's ``controlPlaneInitialized`` / every Machine ``Running`` with
  a nodeRef;
- ``capi_cluster_deleted``: from deleting the Cluster to every Machine gone;
- ``rss_<manager>``, ``rss_machine_control_plane`` (etcd + apiserver + controller-manager +
  scheduler of the cluster's control-plane machine), ``rss_capi_managers_total``.

Usage (from a clone, after ``bash scripts/build-k8s.sh`` and ``bash scripts/python-env.sh --dev``):
``PYTHONPATH=. .venv/bin/python benchmarks/capi_local.py [--workers N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import tempfile
import time
from pathlib import Path
from typing import Any

from lattice.adapters.binaries import locate
from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS
from lattice.adapters.capi_managers import CapiManagers
from lattice.adapters.clock import SystemClock
from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.local_machine_host import LocalMachineHost
from lattice.app.local_infra import LocalInfraProvider
from lattice.domain import models
from tests.compiled import compiled_local, with_post_kubeadm

NAME = "bench"
NAMESPACE = models.capi_namespace(NAME)


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit}), flush=True)


def compiled(workers: int) -> list[dict[str, Any]]:
    # No cell to register with here: the registration call is replaced by a no-op.
    out = with_post_kubeadm(compiled_local(NAME, control_plane=1, workers=workers), ["true"])
    out.append(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": f"{NAME}-lattice-registration", "namespace": NAMESPACE},
            "stringData": {"token": "unused", "ca.crt": "unused"},
        }
    )
    return out


def _initialized(kcp: dict[str, Any]) -> bool:
    return bool(((kcp.get("status") or {}).get("initialization") or {}).get("controlPlaneInitialized"))


async def until(cp: ControlPlane, what: str, probe: Any, within: float = 600.0) -> None:
    deadline = time.monotonic() + within
    while True:
        items = json.loads(
            (await asyncio.to_thread(cp.kubectl, "get", what, "-n", NAMESPACE, "-o", "json")).stdout
        )["items"]
        if probe(items):
            return
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting on {what}")
        await asyncio.sleep(0.5)


async def run(cp: ControlPlane, managers: CapiManagers, workers: int, base: Path) -> None:
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    host = LocalMachineHost(cp.toolchain, base / "machines", SystemClock())
    provider = LocalInfraProvider(api, host, SystemClock(), random=random.random, free_port=free_port)
    stop = asyncio.Event()
    task = asyncio.create_task(provider.run(stop))
    try:
        started = time.monotonic()
        await asyncio.to_thread(cp.apply, compiled(workers))
        await until(
            cp,
            "kubeadmcontrolplanes",
            lambda items: any(_initialized(i) for i in items),
        )
        emit("capi_cluster_control_plane_initialized", time.monotonic() - started, "s")
        await until(
            cp,
            "machines",
            lambda items: (
                len(items) == workers + 1
                and all(i["status"].get("phase") == "Running" and i["status"].get("nodeRef") for i in items)
            ),
        )
        emit("capi_cluster_all_machines_running", time.monotonic() - started, "s")
        await asyncio.sleep(5)
        emit("rss_machine_control_plane", sum(rss_mib(pid) for pid in host.pids()), "MiB")
        total = 0.0
        for proc in managers._procs.values():
            if proc.pid:
                mib = rss_mib(proc.pid)
                total += mib
                emit(f"rss_{proc.name}", mib, "MiB")
        emit("rss_capi_managers_total", total, "MiB")
        started = time.monotonic()
        await asyncio.to_thread(cp.kubectl, "delete", "cluster", NAME, "-n", NAMESPACE, "--wait=false")
        await until(cp, "machines,localmachines", lambda items: not items)
        emit("capi_cluster_deleted", time.monotonic() - started, "s")
    finally:
        stop.set()
        await task
        for machine in host.machines():
            await host.stop(machine)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    tools = locate()
    with tempfile.TemporaryDirectory(prefix="lattice-bench-") as tmp:
        base = Path(tmp)
        cp = ControlPlane.create("mgmt", base_dir=base, toolchain=tools, controller_manager=True).start()
        try:
            cp.install_capi_crds(LOCAL_CAPI_PROVIDERS)
            cp.install_lattice_crds()
            started = time.monotonic()
            managers = CapiManagers(cp).start()
            emit("capi_managers_start", time.monotonic() - started, "s")
            try:
                asyncio.run(run(cp, managers, args.workers, base))
            finally:
                managers.stop()
        finally:
            cp.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
