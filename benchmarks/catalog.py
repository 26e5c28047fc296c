"""ServiceCatalog at scale: 100,000 services from 1,000 clusters.

Figures: query latency p50/p99 (catalog.query with the bilateral check), full-sync time for one
cluster announcing 10,000 services (first sync, an unchanged periodic resync, and a resync where
every version changed), and the memory the catalog holds (tracemalloc).
Targets (issue 9): lookup p50 < 10 us, full sync of 10,000 services < 100 ms.
Prints one JSON line per figure at the end.
Usage: python benchmarks/catalog.py [--clusters N] [--per-cluster M] [--sync N] [--lookups L]
"""

from __future__ import annotations

import argparse
import datetime as dt
import gc
import json
import random
import time
import tracemalloc

from lattice.domain.discovery.catalog import ServiceCatalog
from lattice.domain.discovery.messages import ServiceAnnouncement, ServiceCatalogSync, ServicePort

NOW = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
ENVIRONMENTS = ("prod", "staging", "dev")
PORTS = (ServicePort("http", 8080, "HTTP"), ServicePort("grpc", 9090, "GRPC"))


def announcements(cluster: str, count: int, version: int = 1) -> tuple[ServiceAnnouncement, ...]:
    out = []
    for i in range(count):
        env = ENVIRONMENTS[i % len(ENVIRONMENTS)]
        name = f"{cluster}-svc-{i}"
        out.append(
            ServiceAnnouncement(
                environment=env,
                service_name=name,
                ports=PORTS,
                allowed_callers=("frontend", f"caller-{i % 7}") if i % 4 else ("*",),
                source_cluster=cluster,
                qualified_dns_name=f"{name}.{env}.{cluster}.lattice.example.com",
                gateway_endpoint=f"gateway.{cluster}.lattice.example.com:443",
                version=version,
            )
        )
    return tuple(out)


def percentile(sorted_values: list[float], p: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(p * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--per-cluster", type=int, default=100)
    parser.add_argument("--sync", type=int, default=10_000)
    parser.add_argument("--lookups", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    clusters = [f"cluster-{c}" for c in range(args.clusters)]
    syncs = {c: ServiceCatalogSync(announcements(c, args.per_cluster), True, c) for c in clusters}

    gc.collect()
    tracemalloc.start()
    before = tracemalloc.take_snapshot()
    catalog = ServiceCatalog("cell")
    start = time.perf_counter()
    for cluster, sync in syncs.items():
        catalog.apply_sync(cluster, sync, NOW)
    build_s = time.perf_counter() - start
    after = tracemalloc.take_snapshot()
    tracemalloc.stop()
    memory = sum(stat.size_diff for stat in after.compare_to(before, "filename"))
    total = catalog.service_count()
    assert total == args.clusters * args.per_cluster, total

    # Lookups: random existing keys (plus 10% misses), each timed on its own.
    rng = random.Random(9)
    keys = []
    for _ in range(args.lookups):
        cluster = rng.choice(clusters)
        i = rng.randrange(args.per_cluster) if rng.random() < 0.9 else args.per_cluster + 1
        keys.append((ENVIRONMENTS[i % len(ENVIRONMENTS)], f"{cluster}-svc-{i}"))
    query = catalog.query
    clock = time.perf_counter_ns
    for env, name in keys[:10_000]:  # warm-up
        query(env, name, "frontend")
    samples = []
    gc.disable()
    for env, name in keys:
        t0 = clock()
        query(env, name, "frontend")
        samples.append(clock() - t0)
    gc.enable()
    samples_us = sorted(s / 1000 for s in samples)
    p50, p99 = percentile(samples_us, 0.50), percentile(samples_us, 0.99)

    # Full sync of one big cluster: first time, unchanged resync, and every version bumped.
    first_ms, same_ms, bumped_ms = [], [], []
    for round_ in range(args.rounds):
        big = f"big-{round_}"
        v1 = ServiceCatalogSync(announcements(big, args.sync, 1), True, big)
        v2 = ServiceCatalogSync(announcements(big, args.sync, 2), True, big)
        for target, sync in ((first_ms, v1), (same_ms, v1), (bumped_ms, v2)):
            t0 = time.perf_counter()
            catalog.apply_sync(big, sync, NOW)
            target.append((time.perf_counter() - t0) * 1000)
        catalog.remove_cluster(big)

    print(
        f"catalog: {total} services from {args.clusters} clusters built in {build_s:.2f} s, "
        f"{memory / 1e6:.1f} MB; {args.lookups} lookups p50 {p50:.2f} us p99 {p99:.2f} us; "
        f"full sync of {args.sync}: first {min(first_ms):.1f} ms, unchanged {min(same_ms):.1f} ms, "
        f"all changed {min(bumped_ms):.1f} ms (best of {args.rounds})"
    )
    figures = [
        ("catalog_lookup_p50", round(p50, 3), "us"),
        ("catalog_lookup_p99", round(p99, 3), "us"),
        ("catalog_full_sync_10k_first", round(min(first_ms), 2), "ms"),
        ("catalog_full_sync_10k_unchanged", round(min(same_ms), 2), "ms"),
        ("catalog_full_sync_10k_all_changed", round(min(bumped_ms), 2), "ms"),
        ("catalog_memory_100k_services", round(memory / 1e6, 1), "MB"),
        ("catalog_memory_per_service", round(memory / total), "bytes"),
    ]
    for metric, value, unit in figures:
        print(json.dumps({"metric": metric, "value": value, "unit": unit}))


if __name__ == "__main__":
    main()
