"""``lattice local-lb``: the load-balancer stand-in of a local cluster (not for users).

The local kubelet stand-in runs it for Cilium's operator pod (``lattice.domain.local_pods``),
with that pod's ServiceAccount token: Cilium cannot run without a kubelet and a datapath, so
this assigns LoadBalancer addresses from the cluster's Cilium LB-IPAM pools and forwards the
loopback ones to the Services' endpoints (``lattice.domain.local_lb``; docs/local-provider.md).

Exit codes: 0 after SIGTERM/SIGINT; 1 when the cluster cannot be reached at start.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.local_lb import LocalLoadBalancer
from lattice.app import logs
from lattice.app.operator.process import QuietServer
from lattice.domain.endpoint import Endpoint
from lattice.domain.errors import FieldError
from lattice.ports import kube

EXIT_FAILED = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "local-lb",
        help="(internal) the load-balancer stand-in of a local cluster",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--kubeconfig", required=True, help="the pod's ServiceAccount kubeconfig")
    parser.add_argument(
        "--health-addr",
        type=_health_addr,
        default="127.0.0.1:0",
        help="HOST:PORT of /healthz ([ADDR]:PORT for IPv6; port 0 picks a free one)",
    )
    parser.add_argument("--interval", type=float, default=2.0, help="seconds between syncs")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)


def _health_addr(value: str) -> Endpoint:
    parsed = Endpoint.parse(value, "--health-addr", allow_port_zero=True)
    if isinstance(parsed, FieldError):
        raise argparse.ArgumentTypeError(parsed.reason)  # argparse names the flag
    return parsed


async def _healthz(_: Request) -> Response:
    return PlainTextResponse("ok")


async def _serve(args: argparse.Namespace) -> int:
    try:
        api = await Kr8sKube.connect(args.kubeconfig)
    except (kube.KubeError, OSError) as exc:
        print(f"lattice local-lb: {exc}", file=sys.stderr)
        return EXIT_FAILED
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    health = QuietServer(
        uvicorn.Config(
            Starlette(routes=[Route("/healthz", _healthz)]),
            host=args.health_addr.host,
            port=args.health_addr.port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    served = asyncio.create_task(health.serve())
    try:
        await LocalLoadBalancer(api).run(stop, args.interval)
    finally:
        health.should_exit = True
        await served
    return 0


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    return asyncio.run(_serve(args))
