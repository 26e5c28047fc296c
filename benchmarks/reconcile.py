"""Reconcile throughput and latency of the real operator against a real control plane, each
figure beside a baseline measured in the same run on the same kube-apiserver + etcd.

1. Baseline: the objects the operator would apply for N clusters (compiled and annotated exactly
   as it does), written by the cheapest client here: a bare httpx client doing only the
   server-side applies (the Namespace first, then the cluster's other 7 objects at once), C
   clusters at a time, 8 requests in flight on 8 connections (HTTP/1.1: HTTP/2 through h2 cost
   this client more CPU per apply), no kr8s, no informers, no status, no Events. It runs again after the
   operator's phases (the machine's load moves; the ratio is against the mean of both).
2. Burst: N LatticeClusters created C at a time with `lattice operator` running as its own
   process; a cluster is applied when a watch sees its MachineDeployment (last in apply order).
   Reported: all-applied time, its throughput as a fraction of the baseline's (goal >= 0.8),
   create→applied p50/p99.
3. Controller writes: what the CAPI controllers and webhooks do to each applied cluster's
   objects (a field the operator set rewritten, a status written; ``--controller-writes`` times),
   and the requests and CPU the operator spends in reply (none are needed).
4. Steady: clusters created at a fixed arrival rate (``--rates``, default 5 and 10 per second,
   ``--steady`` clusters each), create→applied p50/p99 (goal p50 < 150 ms, p99 < 500 ms).

Also per cluster: API requests (the apiserver's own ``apiserver_request_total``, watches
excluded, the benchmark's creates subtracted) for the operator and for the baseline, Events
recorded, and CPU (from /proc) of the operator and of the kube-apiserver in each phase.

Usage:
  python benchmarks/reconcile.py                       # N=100 burst, 5 and 10/s: a few minutes
  python benchmarks/reconcile.py --clusters 1000       # the 1,000-at-once burst of issue 5
  python benchmarks/reconcile.py --profile op.prof     # the operator under cProfile
  python benchmarks/reconcile.py --operator-pythonpath /tmp/old/src   # another checkout's operator
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.domain import capi, cluster_reconcile, serde, validation

CELL_ENDPOINT = capi.ParentEndpoint(host="10.0.0.1")
TICKS = os.sysconf("SC_CLK_TCK")
# What the operator reads and writes (requests to anything else are not its own).
OPERATOR_RESOURCES = {
    "latticeclusters",
    "events",
    "namespaces",
    "clusters",
    "machinedeployments",
    "kubeadmcontrolplanes",
    "kubeadmconfigtemplates",
    "dockerclusters",
    "dockermachinetemplates",
}
REQUEST_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\} (?P<value>\S+)$")


def cluster(name: str, i: int) -> dict[str, Any]:
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": name},
        "spec": {
            "cellRef": "mgmt",
            "provider": {"type": "docker", "kubernetes": {"version": "1.35.0"}},
            "nodes": {"controlPlane": 1, "workers": i % 5},
        },
    }


def compiled(name: str, i: int) -> list[dict[str, Any]]:
    """What the operator applies for ``cluster(name, i)``: compiled and annotated as it does."""
    parsed = serde.cluster_from_dict(cluster(name, i))
    assert not isinstance(parsed, list), parsed
    valid = validation.validate_cluster(parsed)
    assert isinstance(valid, validation.ValidCluster), valid
    objects = capi.compile_cluster(valid, capi.CompileContext(parent=CELL_ENDPOINT))
    return [cluster_reconcile.with_applied_hash(o) for o in objects]


def cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def apiserver_pid(cp: ControlPlane) -> int:
    for pid in cp.pids():
        if Path(f"/proc/{pid}/comm").read_text().strip() == "kube-apiserver":
            return pid
    raise RuntimeError("no kube-apiserver process")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, min(len(ordered) - 1, round(q * len(ordered)) - 1))]


class Apiserver:
    """The bare client: server-side applies and /metrics, nothing else."""

    def __init__(self, cp: ControlPlane, connections: int) -> None:
        context: ssl.SSLContext = cp._ssl_context()  # the admin client certificate
        self.client = httpx.AsyncClient(
            base_url=cp.url,
            verify=context,
            timeout=60.0,
            limits=httpx.Limits(max_connections=connections, max_keepalive_connections=connections),
        )
        self.paths: dict[tuple[str, str], tuple[str, bool]] = {}

    async def discover(self, objects: list[dict[str, Any]]) -> None:
        for obj in objects:
            key = (obj["apiVersion"], obj["kind"])
            if key in self.paths:
                continue
            base = "/api" if obj["apiVersion"] == "v1" else "/apis"
            listing = (await self.client.get(f"{base}/{obj['apiVersion']}")).json()
            for resource in listing["resources"]:
                if resource["kind"] == obj["kind"] and "/" not in resource["name"]:
                    collection = f"{base}/{obj['apiVersion']}/{resource['name']}"
                    self.paths[key] = (collection, resource["namespaced"])

    async def apply(self, obj: dict[str, Any]) -> None:
        collection, namespaced = self.paths[(obj["apiVersion"], obj["kind"])]
        meta = obj["metadata"]
        prefix, _, plural = collection.rpartition("/")
        path = f"{prefix}/namespaces/{meta['namespace']}/{plural}" if namespaced else collection
        response = await self.client.patch(
            f"{path}/{meta['name']}",
            params={"fieldManager": "baseline", "force": "true"},
            content=json.dumps(obj).encode(),
            headers={"Content-Type": "application/apply-patch+yaml"},
        )
        response.raise_for_status()

    async def requests(self) -> dict[tuple[str, str], float]:
        """apiserver_request_total by (resource, verb), watches excluded."""
        text = (await self.client.get("/metrics")).text
        out: dict[tuple[str, str], float] = {}
        for line in text.splitlines():
            match = REQUEST_LINE.match(line)
            if not match:
                continue
            labels = dict(re.findall(r'(\w+)="([^"]*)"', match["labels"]))
            if (
                labels.get("verb") in ("WATCH", "WATCHLIST")
                or labels.get("resource") not in OPERATOR_RESOURCES
            ):
                continue
            key = (
                labels["resource"] + ("/" + labels["subresource"] if labels.get("subresource") else ""),
                labels["verb"],
            )
            out[key] = out.get(key, 0.0) + float(match["value"])
        return out


def delta(after: dict[tuple[str, str], float], before: dict[tuple[str, str], float]) -> dict[str, float]:
    out = {
        f"{verb} {resource}": after[(resource, verb)] - before.get((resource, verb), 0.0)
        for resource, verb in after
    }
    return {k: v for k, v in sorted(out.items()) if v}


async def settle(
    server: Apiserver, quiet_s: float = 3.0, limit_s: float = 120.0
) -> dict[tuple[str, str], float]:
    """The request counters once they have not moved for ``quiet_s`` (the operator is done)."""
    last = await server.requests()
    quiet_since = time.perf_counter()
    start = quiet_since
    while time.perf_counter() - quiet_since < quiet_s and time.perf_counter() - start < limit_s:
        await asyncio.sleep(0.5)
        now = await server.requests()
        if now != last:
            last, quiet_since = now, time.perf_counter()
    return last


async def baseline(
    args: argparse.Namespace, server: Apiserver, cp: ControlPlane, prefix: str = "base"
) -> dict[str, float]:
    objects = {i: compiled(f"{prefix}-{i}", i) for i in range(args.clusters)}
    await server.discover([o for objs in objects.values() for o in objs])
    pid = apiserver_pid(cp)
    semaphore = asyncio.Semaphore(args.concurrency)
    # Requests in flight: more only queue inside httpcore, whose pool scans its queue on each
    # request (140 queued requests made this client slower than the operator).
    in_flight = asyncio.Semaphore(args.baseline_in_flight)

    async def apply(obj: dict[str, Any]) -> None:
        async with in_flight:
            await server.apply(obj)

    async def one(i: int) -> None:
        async with semaphore:
            namespace, *rest = objects[i]
            await apply(namespace)
            await asyncio.gather(*(apply(o) for o in rest))

    before, cpu = await server.requests(), cpu_s(pid)
    start = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(args.clusters)))
    elapsed = time.perf_counter() - start
    requests = delta(await server.requests(), before)
    return {
        "total_s": elapsed,
        "clusters_per_s": args.clusters / elapsed,
        "requests_per_cluster": sum(requests.values()) / args.clusters,
        "apiserver_cpu_ms_per_cluster": (cpu_s(pid) - cpu) * 1000 / args.clusters,
    }


def start_operator(args: argparse.Namespace, cp: ControlPlane, workdir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    if args.operator_pythonpath:
        env["PYTHONPATH"] = args.operator_pythonpath
    profile = ["-m", "cProfile", "-o", str(Path(args.profile).resolve())] if args.profile else []
    return subprocess.Popen(
        [
            sys.executable,
            *profile,
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
        stdout=(workdir / "operator.log").open("wb"),
        stderr=subprocess.STDOUT,
        env=env,
    )


class Watch:
    """When each cluster's MachineDeployment is first seen (its last object applied)."""

    def __init__(self, api: Kr8sKube) -> None:
        self.api = api
        self.applied: dict[str, float] = {}
        self.waiters: dict[int, tuple[Callable[[], bool], asyncio.Event]] = {}

    async def run(self, version: str) -> None:
        while True:
            async for event in self.api.watch(
                "cluster.x-k8s.io/v1beta2", "MachineDeployment", version, timeout_seconds=60
            ):
                meta = event.object.get("metadata", {})
                version = meta.get("resourceVersion", version)
                name = meta.get("labels", {}).get("lattice.dev/cluster")
                if event.type == "ADDED" and name and name not in self.applied:
                    self.applied[name] = time.perf_counter()
                    for check, done in self.waiters.values():
                        if check():
                            done.set()

    async def until(self, check: Callable[[], bool], within: float) -> None:
        done = asyncio.Event()
        key = id(done)
        self.waiters[key] = (check, done)
        try:
            if not check():
                await asyncio.wait_for(done.wait(), within)
        finally:
            del self.waiters[key]


async def burst(
    args: argparse.Namespace, api: Kr8sKube, watch: Watch, server: Apiserver, pids: tuple[int, int]
) -> dict[str, float]:
    operator, apiserver = pids
    names = [f"bench-{i}" for i in range(args.clusters)]
    created: dict[str, float] = {}
    semaphore = asyncio.Semaphore(args.concurrency)

    async def create(i: int) -> None:
        async with semaphore:
            await api.create(cluster(names[i], i))
            created[names[i]] = time.perf_counter()

    before = await server.requests()
    cpu = (cpu_s(operator), cpu_s(apiserver))
    start = time.perf_counter()
    await asyncio.gather(*(create(i) for i in range(args.clusters)))
    create_all = time.perf_counter() - start
    await watch.until(lambda: all(n in watch.applied for n in names), args.timeout)
    total = max(watch.applied[n] for n in names) - start
    cpu_applied = (cpu_s(operator), cpu_s(apiserver))
    after = await settle(server)
    cpu_settled = (cpu_s(operator), cpu_s(apiserver))
    requests = delta(after, before)
    requests.pop("POST latticeclusters", None)  # the benchmark's own creates
    latencies = [(watch.applied[n] - created[n]) * 1000 for n in names]
    return {
        "create_all_s": create_all,
        "total_s": total,
        "clusters_per_s": args.clusters / total,
        "p50_ms": statistics.median(latencies),
        "p99_ms": percentile(latencies, 0.99),
        "requests_per_cluster": sum(requests.values()) / args.clusters,
        "requests": requests,  # type: ignore[dict-item]
        "before": before,  # type: ignore[dict-item]
        "operator_cpu_ms_per_cluster_applied": (cpu_applied[0] - cpu[0]) * 1000 / args.clusters,
        "operator_cpu_ms_per_cluster": (cpu_settled[0] - cpu[0]) * 1000 / args.clusters,
        "apiserver_cpu_ms_per_cluster": (cpu_settled[1] - cpu[1]) * 1000 / args.clusters,
    }


async def controller_writes(
    args: argparse.Namespace, server: Apiserver, operator_pid: int
) -> dict[str, float]:
    """What the CAPI controllers and their webhooks do to the objects of each applied cluster
    (there are no controllers here, so the benchmark does it), ``--controller-writes`` times: a
    field the operator set rewritten (a defaulting webhook's normalisation, which happens again
    after each apply of the operator's) and a status write, each a watch event that reconciles
    the cluster. Counted: the operator's requests and CPU that follow (none are needed)."""
    semaphore = asyncio.Semaphore(args.concurrency)
    own = 0

    async def patch(path: str, body: dict[str, Any]) -> None:
        nonlocal own
        async with semaphore:
            response = await server.client.patch(
                path,
                content=json.dumps(body).encode(),
                headers={"Content-Type": "application/merge-patch+json"},
            )
            response.raise_for_status()
            own += 1

    async def one(i: int) -> None:
        group = "/apis/controlplane.cluster.x-k8s.io/v1beta2"
        path = f"{group}/namespaces/capi-bench-{i}/kubeadmcontrolplanes/bench-{i}-control-plane"
        for n in range(args.controller_writes):
            await patch(path, {"spec": {"version": "v1.35.0+normalised"}})
            await patch(f"{path}/status", {"status": {"replicas": n + 1}})

    before, cpu = await server.requests(), cpu_s(operator_pid)
    await asyncio.gather(*(one(i) for i in range(args.clusters)))
    requests = delta(await settle(server), before)
    for key in ("PATCH kubeadmcontrolplanes", "PATCH kubeadmcontrolplanes/status"):
        requests.pop(key, None)  # the benchmark's own writes
    return {
        "writes_per_cluster": own / args.clusters,
        "requests_per_cluster": sum(requests.values()) / args.clusters,
        "requests": requests,  # type: ignore[dict-item]
        "operator_cpu_ms_per_cluster": (cpu_s(operator_pid) - cpu) * 1000 / args.clusters,
    }


async def steady(args: argparse.Namespace, api: Kr8sKube, watch: Watch, rate: float) -> dict[str, float]:
    names = [f"steady{rate:g}-{i}" for i in range(args.steady)]
    created: dict[str, float] = {}
    tasks: list[asyncio.Task[None]] = []

    async def create(i: int) -> None:
        await api.create(cluster(names[i], i))
        created[names[i]] = time.perf_counter()

    start = time.perf_counter()
    for i in range(args.steady):
        await asyncio.sleep(max(0.0, start + i / rate - time.perf_counter()))
        tasks.append(asyncio.create_task(create(i)))
    await asyncio.gather(*tasks)
    await watch.until(lambda: all(n in watch.applied for n in names), args.timeout)
    latencies = [(watch.applied[n] - created[n]) * 1000 for n in names]
    return {"p50_ms": statistics.median(latencies), "p99_ms": percentile(latencies, 0.99)}


async def run(args: argparse.Namespace, cp: ControlPlane, workdir: Path) -> dict[str, Any]:
    server = Apiserver(cp, connections=args.baseline_in_flight)
    figures: dict[str, Any] = {"baseline": await baseline(args, server, cp)}
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    operator = start_operator(args, cp, workdir)
    watch = Watch(api)
    try:
        listed = await api.list("cluster.x-k8s.io/v1beta2", "MachineDeployment")
        watcher = asyncio.create_task(watch.run(listed.resource_version))
        await wait_ready(api, operator)
        pids = (operator.pid, apiserver_pid(cp))
        figures["burst"] = await burst(args, api, watch, server, pids)
        figures["controllers"] = await controller_writes(args, server, operator.pid)
        for rate in args.rates:
            figures[f"steady_{rate:g}"] = await steady(args, api, watch, rate)
        total = delta(await settle(server), figures["burst"].pop("before"))
        for key in (
            "POST latticeclusters",
            "PATCH kubeadmcontrolplanes",
            "PATCH kubeadmcontrolplanes/status",
        ):
            total.pop(key, None)  # the benchmark's own writes
        figures["run_requests"] = total
        figures["run_requests_per_cluster"] = sum(total.values()) / (
            args.clusters + args.steady * len(args.rates) + 1
        )
        events = await api.list("v1", "Event", namespace="default")
        figures["events_per_cluster"] = len(events.items) / (args.clusters + args.steady * len(args.rates))
        figures["rss_mb"] = peak_rss_mb(operator.pid)
        watcher.cancel()
        # The baseline again, after: the machine's load moves; the ratio uses both runs' mean.
        figures["baseline_after"] = await baseline(args, server, cp, prefix="base2")
    finally:
        operator.terminate()
        operator.wait(60)
        await server.client.aclose()
    return figures


async def wait_ready(api: Kr8sKube, operator: subprocess.Popen[bytes], within: float = 60.0) -> None:
    """The operator is up and its informers synced: a probe cluster gets its objects."""
    probe = cluster("probe", 0)
    await api.create(probe)
    ns = "capi-probe"
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if operator.poll() is not None:
            raise RuntimeError("the operator exited; see operator.log")
        listed = await api.list("cluster.x-k8s.io/v1beta2", "Cluster", namespace=ns)
        if listed.items:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError("the operator did not apply the probe cluster")


def report(args: argparse.Namespace, figures: dict[str, Any]) -> None:
    base, b = figures["baseline"], figures["burst"]
    base_rate = statistics.mean([base["clusters_per_s"], figures["baseline_after"]["clusters_per_s"]])
    ratio = b["clusters_per_s"] / base_rate
    print(
        f"{args.clusters} clusters. baseline (bare server-side applies): {base['total_s']:.1f} s, "
        f"{base['clusters_per_s']:.1f}/s, {base['requests_per_cluster']:.1f} requests and "
        f"{base['apiserver_cpu_ms_per_cluster']:.0f} ms apiserver CPU per cluster; after the operator's "
        f"runs {figures['baseline_after']['clusters_per_s']:.1f}/s; mean {base_rate:.1f}/s"
    )
    print(
        f"operator burst: created in {b['create_all_s']:.1f} s, all applied in {b['total_s']:.1f} s "
        f"({b['clusters_per_s']:.1f}/s = {ratio:.2f} of the baseline's mean); create→applied p50 "
        f"{b['p50_ms']:.0f} ms, p99 {b['p99_ms']:.0f} ms; per cluster {b['requests_per_cluster']:.1f} "
        f"requests, operator CPU {b['operator_cpu_ms_per_cluster']:.0f} ms, apiserver CPU "
        f"{b['apiserver_cpu_ms_per_cluster']:.0f} ms; {figures['events_per_cluster']:.1f} Events; "
        f"peak RSS {figures['rss_mb']:.0f} MB"
    )
    print("operator requests in the burst:", json.dumps(b["requests"]))
    print(
        f"operator requests over the whole run (burst, steady, probe): "
        f"{figures['run_requests_per_cluster']:.1f} per cluster:",
        json.dumps(figures["run_requests"]),
    )
    c = figures["controllers"]
    print(
        f"controller writes ({c['writes_per_cluster']:.0f} per cluster: a field rewritten, a status): the "
        f"operator made {c['requests_per_cluster']:.2f} requests and used "
        f"{c['operator_cpu_ms_per_cluster']:.1f} ms CPU per cluster in reply:",
        json.dumps(c["requests"]),
    )
    for rate in args.rates:
        s = figures[f"steady_{rate:g}"]
        print(
            f"steady {rate:g}/s ({args.steady} clusters): p50 {s['p50_ms']:.0f} ms, p99 {s['p99_ms']:.0f} ms"
        )
    lines: list[tuple[str, float, str]] = [
        ("reconcile_baseline_clusters_per_s", base_rate, "clusters/s"),
        ("reconcile_burst_clusters_per_s", b["clusters_per_s"], "clusters/s"),
        ("reconcile_throughput_ratio_vs_baseline", ratio, "ratio"),
        ("reconcile_total_s", b["total_s"], "s"),
        ("reconcile_p50_ms", b["p50_ms"], "ms"),
        ("reconcile_p99_ms", b["p99_ms"], "ms"),
        ("reconcile_requests_per_cluster", b["requests_per_cluster"], "requests"),
        ("reconcile_run_requests_per_cluster", figures["run_requests_per_cluster"], "requests"),
        ("reconcile_baseline_requests_per_cluster", base["requests_per_cluster"], "requests"),
        ("reconcile_events_per_cluster", figures["events_per_cluster"], "events"),
        ("reconcile_operator_cpu_ms_per_cluster", b["operator_cpu_ms_per_cluster"], "ms"),
        ("reconcile_apiserver_cpu_ms_per_cluster", b["apiserver_cpu_ms_per_cluster"], "ms"),
        ("reconcile_baseline_apiserver_cpu_ms_per_cluster", base["apiserver_cpu_ms_per_cluster"], "ms"),
        ("reconcile_rss_mb", figures["rss_mb"], "MB"),
        ("reconcile_requests_per_cluster_after_controller_writes", c["requests_per_cluster"], "requests"),
        (
            "reconcile_operator_cpu_ms_per_cluster_after_controller_writes",
            c["operator_cpu_ms_per_cluster"],
            "ms",
        ),
    ]
    for rate in args.rates:
        s = figures[f"steady_{rate:g}"]
        lines += [
            (f"reconcile_steady_{rate:g}_per_s_p50_ms", s["p50_ms"], "ms"),
            (f"reconcile_steady_{rate:g}_per_s_p99_ms", s["p99_ms"], "ms"),
        ]
    for metric, value, unit in lines:
        print(json.dumps({"metric": metric, "value": round(value, 2), "unit": unit}))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clusters", type=int, default=100, help="the burst's N (and the baseline's)")
    parser.add_argument("--concurrency", type=int, default=20, help="creates (and baseline clusters) at once")
    parser.add_argument("--workers", type=int, default=8)
    parser.add_argument(
        "--baseline-in-flight",
        type=int,
        default=8,
        help="the baseline client's requests at once (and connections)",
    )
    parser.add_argument(
        "--rates", type=float, nargs="*", default=[5.0, 10.0], help="steady arrival rates, /s"
    )
    parser.add_argument(
        "--controller-writes", type=int, default=3, help="status writes per cluster, as CAPI's controllers do"
    )
    parser.add_argument("--steady", type=int, default=50, help="clusters created at each steady rate")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument("--profile", help="run the operator under cProfile, writing this file")
    parser.add_argument("--operator-pythonpath", help="PYTHONPATH for the operator (another checkout's src)")
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
    report(args, figures)


if __name__ == "__main__":
    main()
