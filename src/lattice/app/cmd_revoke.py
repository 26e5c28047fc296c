"""``lattice revoke-agent CLUSTER``: refuse every agent certificate of CLUSTER issued until now.

The cell refuses a new stream with such a certificate (PERMISSION_DENIED, the reason in the
agent's log) and closes an open one within a few seconds. A cluster registered again afterwards
connects with its new certificate. The revocation is kept in the ConfigMap
``lattice-system/lattice-agent-revocations`` of the cell (docs/protocol.md, "Revocation").
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import sys
from pathlib import Path
from typing import Any

from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.revocations import CONFIG_MAP, NAMESPACE, ConfigMapRevocations
from lattice.ports import kube


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "revoke-agent",
        help="refuse the agent certificates a cluster holds (its cell closes their streams)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cluster", help="the cluster whose agent certificates are revoked")
    parser.add_argument("--kubeconfig", type=Path, default=None, help="the cell's kubeconfig")
    parser.set_defaults(func=run)


async def _revoke(cluster: str, kubeconfig: Path | None, now: dt.datetime) -> None:
    api = await Kr8sKube.connect(None if kubeconfig is None else str(kubeconfig))
    await ConfigMapRevocations(api).revoke(cluster, now)


def run(args: argparse.Namespace) -> int:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    try:
        asyncio.run(_revoke(args.cluster, args.kubeconfig, now))
    except ValueError as exc:
        print(f"lattice revoke-agent: cluster: {exc}", file=sys.stderr)
        return 2
    except kube.KubeError as exc:
        print(f"lattice revoke-agent: cannot write {NAMESPACE}/{CONFIG_MAP}: {exc}", file=sys.stderr)
        return 1
    print(f"revoked the agent certificates of {args.cluster} issued until {now.isoformat()}")
    return 0
