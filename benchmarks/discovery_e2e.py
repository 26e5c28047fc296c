"""Cross-cluster discovery end to end: from a LatticeService created in one child to its
dependant's ServiceEntry in another child.

A real cell (``lattice operator`` with the local provider) provisions two children with
``spec.discovery`` enabled; their agents stream to the cell and reconcile LatticeServices. Two
paths are timed, ``--rounds`` times each:

* push: the dependant already exists in child B (Pending, so the cell watches the name for B);
  the service is created in child A at t0; the cell pushes the announcement to B, whose
  controller applies the ServiceEntry;
* query: the service exists in A; the dependant is created in B at t0; B's controller queries
  the cell and applies the ServiceEntry.

The figure is t0 until the ServiceEntry is readable from B's API server (polled every 20 ms).
Prints one JSON line per figure at the end. Usage: python benchmarks/discovery_e2e.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from lattice.adapters.binaries import locate
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.local_processes import stop_all
from lattice.ports import kube
from lattice.ports.kube import ResourceRef
from tests.e2e.conftest import child_kubeconfig, install_mesh_crds, local_cluster, start_cell, wait_for

NAMESPACE = "bench"
WAIT_LIMIT = 60.0


def service(name: str, *, outbound: str | None = None, inbound: str | None = None) -> dict[str, Any]:
    resources = {}
    if outbound:
        resources[outbound] = {"type": "service", "direction": "outbound"}
    if inbound:
        resources[inbound] = {"type": "service", "direction": "inbound"}
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeService",
        "metadata": {"name": name, "namespace": NAMESPACE},
        "spec": {
            "environment": "prod",
            "service": {"ports": {"http": {"port": 8080}}},
            "resources": resources,
        },
    }


async def wait_entry(api: Kr8sKube, name: str, started: float) -> float:
    ref = ResourceRef("networking.istio.io/v1", "ServiceEntry", name, NAMESPACE)
    while time.perf_counter() - started < WAIT_LIMIT:
        try:
            await api.get(ref)
            return time.perf_counter() - started
        except kube.NotFound:
            await asyncio.sleep(0.02)
    raise TimeoutError(f"no ServiceEntry {name} after {WAIT_LIMIT} s")


async def measure(a_config: Path, b_config: Path, rounds: int) -> dict[str, list[float]]:
    a, b = await Kr8sKube.connect(str(a_config)), await Kr8sKube.connect(str(b_config))
    namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
    for api in (a, b):
        await api.apply(namespace, "bench")
    push: list[float] = []
    query: list[float] = []
    for i in range(rounds):
        # push path: the dependant waits in B, then the service appears in A
        await b.create(service(f"pcaller-{i}", outbound=f"pserve-{i}"))
        await asyncio.sleep(1.5)  # B's controller has queried (not found): the cell watches for B
        started = time.perf_counter()
        await a.create(service(f"pserve-{i}", inbound=f"pcaller-{i}"))
        push.append(await wait_entry(b, f"remote-bench-a-pserve-{i}", started))
        # query path: the service exists in A and is in the catalog, then the dependant appears in B
        await a.create(service(f"qserve-{i}", inbound=f"qcaller-{i}"))
        await asyncio.sleep(1.5)
        started = time.perf_counter()
        await b.create(service(f"qcaller-{i}", outbound=f"qserve-{i}"))
        query.append(await wait_entry(b, f"remote-bench-a-qserve-{i}", started))
    return {"push": push, "query": query}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=10)
    args = parser.parse_args()
    toolchain = locate()
    with tempfile.TemporaryDirectory(prefix="lattice-discovery-bench-") as tmp:
        cell = start_cell(toolchain, Path(tmp))
        try:
            discovery = {"enabled": True, "baseDomain": "bench.example.com"}
            names = ("bench-a", "bench-b")
            clusters = [local_cluster(n, cell.name, workers=1, discovery=discovery) for n in names]
            cell.control_plane.apply(clusters)
            for name in names:
                ready = lambda n=name: cell.lc(n).get("status", {}).get("phase") == "Ready"  # noqa: E731
                wait_for(ready, 300, f"{name} Ready", cell.log)
            configs = [child_kubeconfig(cell, n) for n in names]
            for config in configs:
                install_mesh_crds(toolchain, config)
            figures = asyncio.run(measure(configs[0], configs[1], args.rounds))
        finally:
            cell.stop_operator()
            stop_all(cell.state_dir)
            cell.control_plane.stop()
    results = []
    for path, values in figures.items():
        print(
            f"{path}: service in A -> ServiceEntry in B over {len(values)} rounds: "
            f"p50 {statistics.median(values) * 1000:.0f} ms, max {max(values) * 1000:.0f} ms"
        )
        results += [
            (f"discovery_e2e_{path}_p50", statistics.median(values) * 1000, "ms"),
            (f"discovery_e2e_{path}_p99", percentile(values, 0.99) * 1000, "ms"),
            (f"discovery_e2e_{path}_max", max(values) * 1000, "ms"),
        ]
    for metric, value, unit in results:
        print(json.dumps({"metric": metric, "value": round(value, 1), "unit": unit}))


if __name__ == "__main__":
    main()
