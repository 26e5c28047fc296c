"""One pivot through Lattice vs. clusterctl move directly, on real control planes.

Lattice: a cell (real control plane + `lattice operator` with the local provider) provisions one
child; the cell logs the pivot's phases (`export`, `transfer_and_import` — the files over the
agent's mutual-TLS stream, the agent's `clusterctl move --from-directory`, status restore —
and `delete` of the source). The end-to-end pivot time is those three added up.

Direct: the same cluster's objects (now in the child) moved with clusterctl alone,
`--to-directory` then `--from-directory` into a fresh control plane, timed the same way. The
child's API server first lists every kind clusterctl lists (as the cell does before its export):
a kube-apiserver builds a custom resource's watch cache on its first request and answers 429
(Retry-After 1 s) until then, which costs a cold export about a second per kind. The cold
figure is reported too (`pivot_clusterctl_direct_cold_export`: the first export from the child).

Native: the same export and import with the native mover (lattice.adapters.mover_native, through
the Kubernetes API; what the cell and the agent use by default, `--mover native`) from the child
into another fresh control plane, timed the same way, connections included (a new mover each
time, as clusterctl is a new process each time): `pivot_native_direct`, and its ratio to
clusterctl alone, `pivot_native_vs_clusterctl` (issue 18's goal: <= 0.5). Both direct moves run
ROUNDS times, interleaved and each first in turn (the machine is shared; the targets are emptied
between rounds), and the medians are reported. The cell's own pivot runs with the native mover,
so `pivot_lattice_vs_clusterctl` is a whole pivot (export, the stream, import, deleting the
source) against clusterctl's export and import alone.

Then the way back: the child's LatticeCluster is deleted on the cell, which takes the objects
back over the stream (the unpivot: the child's export, the files over the stream, the cell's
import, both with the native mover), then deletes the machines with its own CAPI
controllers. Reported: delete -> objects back on the cell (`unpivot_lattice`, compared with the
same direct clusterctl move), and delete -> LatticeCluster gone (`delete_lattice_total`).

Targets: issue 7, Lattice's pivot < 3 s; issue 18, the native mover at most 0.5x clusterctl.
Usage: PYTHONPATH=. python benchmarks/pivot.py
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from lattice.adapters.binaries import locate
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.local_processes import stop_all
from lattice.adapters.mover_native import NativeMover
from lattice.domain import move_graph
from lattice.ports import kube
from lattice.ports.kube import ResourceRef
from tests.e2e.conftest import Cell, child_kubeconfig, local_cluster, start_cell, wait_for


def pivot_timings(log: Path, name: str) -> dict[str, float]:
    for line in log.read_text(errors="replace").splitlines():
        if '"pivot complete"' in line and f'"cluster": "{name}"' in line:
            record = json.loads(line)
            return {k: float(record[k]) for k in ("export", "transfer_and_import", "delete")}
    raise AssertionError("no pivot timings in the operator log")


def clusterctl(*args: str) -> float:
    started = time.perf_counter()
    subprocess.run(
        [str(locate().clusterctl), *args],
        check=True,
        capture_output=True,
        env={**os.environ, "CLUSTERCTL_DISABLE_VERSIONCHECK": "true"},
    )
    return time.perf_counter() - started


def native(kubeconfig: Path, namespace: str, directory: Path, target: Path) -> tuple[float, float]:
    """Export then import with the native mover; seconds for each, connections included."""

    async def run() -> tuple[float, float]:
        started = time.perf_counter()
        await NativeMover().export(kubeconfig, namespace, directory)
        exported = time.perf_counter()
        await NativeMover().import_(target, directory)
        return exported - started, time.perf_counter() - exported

    return asyncio.run(run())


ROUNDS = 3


def median_pair(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    return statistics.median(a for a, _ in pairs), statistics.median(b for _, b in pairs)


def wipe(kubeconfig: Path, namespace: str) -> None:
    """Delete every object a move created in ``namespace`` (finalizers dropped: no controllers
    run on the targets), so that the next round imports into an empty namespace again."""

    async def run() -> None:
        api = await Kr8sKube.connect(str(kubeconfig))
        crds = await api.list(
            "apiextensions.k8s.io/v1", "CustomResourceDefinition", label_selector=move_graph.CLUSTERCTL_LABEL
        )
        for kind in move_graph.move_types(crds.items):
            for obj in (await api.list(kind.api_version, kind.kind, namespace=namespace)).items:
                ref = ResourceRef.of(obj)
                await api.delete(ref)
                try:
                    await api.merge_patch(ref, {"metadata": {"finalizers": None}})
                except kube.NotFound:
                    continue

    asyncio.run(run())


def warm(kubectl: Path, kubeconfig: Path) -> None:
    """List every kind labelled for clusterctl move, concurrently (see the module's doc)."""
    base = [str(kubectl), f"--kubeconfig={kubeconfig}"]
    names = subprocess.run(
        [*base, "get", "crd", "-l", "clusterctl.cluster.x-k8s.io", "-o", "name"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    listers = [
        subprocess.Popen(
            [*base, "get", name.split("/", 1)[1], "-A"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        for name in names
    ]
    for lister in listers:
        lister.wait()


def time_deletion(cell: Cell, name: str) -> tuple[float, float]:
    """Seconds from the delete to the objects back on the cell, and to the LatticeCluster gone."""
    started = time.perf_counter()
    cell.kubectl("delete", "lc", name, "--wait=false")
    back: float | None = None
    while time.perf_counter() - started < 300:
        found = cell.kubectl("get", "lc", name, "-o", "json", "--ignore-not-found")
        if not found.strip():
            return (
                back if back is not None else time.perf_counter() - started
            ), time.perf_counter() - started
        step = ((json.loads(found).get("status") or {}).get("unpivot") or {}).get("step")
        if back is None and step in ("Imported", "Released"):
            back = time.perf_counter() - started
        time.sleep(0.05)
    raise AssertionError(f"{name} not deleted within 300 s")


def main() -> None:
    toolchain = locate()
    with tempfile.TemporaryDirectory(prefix="lattice-pivot-bench-") as tmp:
        base = Path(tmp)
        cell = start_cell(toolchain, base)
        target = ControlPlane.create("target", base_dir=base / "target", toolchain=toolchain)
        native_target = ControlPlane.create(
            "native-target", base_dir=base / "native-target", toolchain=toolchain
        )
        try:
            cell.control_plane.apply([local_cluster("bench-1", cell.name, workers=2)])
            wait_for(
                lambda: cell.lc("bench-1").get("status", {}).get("phase") == "Ready", 300, "Ready", cell.log
            )
            lattice = pivot_timings(cell.log, "bench-1")
            objects = cell.lc("bench-1")["status"]["pivot"]["objects"]

            threads = [threading.Thread(target=cp.start) for cp in (target, native_target)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            for cp in (target, native_target):
                cp.install_capi_crds()
                cp.install_lattice_crds()
            child = child_kubeconfig(cell, "bench-1")
            export_dir = base / "direct"
            export_dir.mkdir()
            cold_dir = base / "cold"
            cold_dir.mkdir()
            cold_export = clusterctl(
                "move", "--kubeconfig", str(child), "-n", "capi-bench-1", "--to-directory", str(cold_dir)
            )
            warm(toolchain.kubectl, child)
            by_clusterctl: list[tuple[float, float]] = []
            natively: list[tuple[float, float]] = []
            for round_ in range(ROUNDS):  # interleaved, each first in turn: the machine is shared

                def with_clusterctl(round_: int = round_) -> None:
                    directory = export_dir / str(round_)
                    directory.mkdir()
                    by_clusterctl.append(
                        (
                            clusterctl(
                                "move",
                                "--kubeconfig",
                                str(child),
                                "-n",
                                "capi-bench-1",
                                "--to-directory",
                                str(directory),
                            ),
                            clusterctl(
                                "move",
                                "--to-kubeconfig",
                                str(target.kubeconfig),
                                "--from-directory",
                                str(directory),
                            ),
                        )
                    )
                    wipe(target.kubeconfig, "capi-bench-1")

                def with_native(round_: int = round_) -> None:
                    natively.append(
                        native(child, "capi-bench-1", base / f"native-{round_}", native_target.kubeconfig)
                    )
                    wipe(native_target.kubeconfig, "capi-bench-1")

                for run in (
                    (with_clusterctl, with_native) if round_ % 2 == 0 else (with_native, with_clusterctl)
                ):
                    run()
            unpivot, deleted = time_deletion(cell, "bench-1")
        finally:
            cell.stop_operator()
            stop_all(cell.state_dir)
            cell.control_plane.stop()
            target.stop()
            native_target.stop()
    total = sum(lattice.values())
    direct_export, direct_import = median_pair(by_clusterctl)
    direct = statistics.median(e + i for e, i in by_clusterctl)
    overhead = (total - direct) / direct * 100
    native_export, native_import = median_pair(natively)
    native_direct = statistics.median(e + i for e, i in natively)
    ratios = [(ne + ni) / (ce + ci) for (ne, ni), (ce, ci) in zip(natively, by_clusterctl, strict=True)]
    print(
        f"pivot of {objects} objects through Lattice: {total:.2f} s (export {lattice['export']:.2f}, "
        f"transfer+import+restore {lattice['transfer_and_import']:.2f}, "
        f"delete source {lattice['delete']:.2f}); "
        f"clusterctl directly: {direct:.2f} s (export {direct_export:.2f}, import {direct_import:.2f}); "
        f"Lattice overhead {overhead:+.0f}%; native mover: {native_direct:.2f} s (export "
        f"{native_export:.2f}, import {native_import:.2f}), {native_direct / direct:.2f}x clusterctl "
        f"(medians of {ROUNDS} rounds; "
        f"each round's ratio: {', '.join(f'{r:.2f}' for r in ratios)})"
    )
    for metric, value, unit in (
        ("pivot_lattice_total", total, "s"),
        ("pivot_lattice_export", lattice["export"], "s"),
        ("pivot_lattice_transfer_import", lattice["transfer_and_import"], "s"),
        ("pivot_lattice_delete_source", lattice["delete"], "s"),
        ("pivot_clusterctl_direct", direct, "s"),
        ("pivot_overhead", overhead, "%"),
        ("pivot_native_direct", native_direct, "s"),
        ("pivot_native_direct_export", native_export, "s"),
        ("pivot_native_direct_import", native_import, "s"),
        ("pivot_native_vs_clusterctl", native_direct / direct, "ratio"),
        ("pivot_lattice_vs_clusterctl", total / direct, "ratio"),
        ("pivot_clusterctl_direct_cold_export", cold_export, "s"),
        ("unpivot_lattice", unpivot, "s"),
        ("unpivot_vs_clusterctl_direct", unpivot / direct, "ratio"),
        ("delete_lattice_total", deleted, "s"),
    ):
        print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit}))


if __name__ == "__main__":
    main()
