"""Compile throughput: parse + validate + compile 1,000 varied LatticeClusters on one core.

Target (issue 3): >= 2,000 clusters/s. Prints one JSON line per figure at the end.
Usage: python benchmarks/compile.py [--clusters N] [--rounds R]
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from typing import Any

from lattice.domain import capi, models, serde, validation

PROVIDERS: list[dict[str, Any]] = [
    {"type": "docker"},
    {
        "type": "aws",
        "aws": {
            "region": "us-west-2",
            "sshKeyName": "k",
            "controlPlaneInstanceType": "m6i.large",
            "workerInstanceType": "m6i.xlarge",
            "vpcId": "vpc-1",
            "subnetIds": ["subnet-1", "subnet-2"],
        },
    },
    {
        "type": "gcp",
        "gcp": {
            "project": "p",
            "region": "europe-west4",
            "controlPlaneMachineType": "n2-standard-4",
            "workerMachineType": "n2-standard-8",
        },
    },
    {
        "type": "azure",
        "azure": {
            "location": "westeurope",
            "subscriptionId": "00000000-1111-2222-3333-444444444444",
            "controlPlaneVmSize": "Standard_D4s_v5",
            "workerVmSize": "Standard_D8s_v5",
            "sshPublicKey": "ecdsa-sha2-nistp256 AAAA x@y",
        },
    },
]


def make_docs(count: int) -> list[dict[str, Any]]:
    docs = []
    for i in range(count):
        provider = copy.deepcopy(PROVIDERS[i % len(PROVIDERS)])
        provider["kubernetes"] = {"version": f"1.{31 + i % 6}.{i % 10}", "certSANs": [f"c{i}.example.com"]}
        docs.append(
            {
                "apiVersion": "lattice.dev/v1alpha1",
                "kind": "LatticeCluster",
                "metadata": {"name": f"cluster-{i}"},
                "spec": {
                    "cellRef": "mgmt",
                    "provider": provider,
                    "nodes": {"controlPlane": 1 + 2 * (i % 3), "workers": i % 20},
                    "networking": {"default": {"cidr": f"10.{i // 256 % 256}.{i % 256}.0/28"}},
                },
            }
        )
    return docs


def compile_one(doc: dict[str, Any], context: capi.CompileContext) -> int:
    cluster = serde.cluster_from_dict(doc)
    assert isinstance(cluster, models.LatticeCluster)
    valid = validation.validate_cluster(cluster)
    assert isinstance(valid, validation.ValidCluster)
    return len(capi.compile_cluster(valid, context))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--clusters", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    docs = make_docs(args.clusters)
    context = capi.CompileContext(parent=capi.ParentEndpoint(host="cell.example.com"))
    for doc in docs[:50]:  # warm-up: cattrs generates its structuring code lazily
        compile_one(doc, context)
    best = float("inf")
    objects = 0
    for _ in range(args.rounds):
        start = time.perf_counter()
        objects = sum(compile_one(doc, context) for doc in docs)
        best = min(best, time.perf_counter() - start)
    rate = args.clusters / best
    elapsed_ms = best * 1000
    print(
        f"compiled {args.clusters} clusters ({objects} objects) "
        f"in {elapsed_ms:.1f} ms (best of {args.rounds})"
    )
    print(json.dumps({"metric": "compile_throughput", "value": round(rate, 1), "unit": "clusters/s"}))
    print(
        json.dumps(
            {"metric": "compile_latency_mean", "value": round(best / args.clusters * 1e6, 1), "unit": "us"}
        )
    )


if __name__ == "__main__":
    main()
