"""``lattice operator`` (run the controller) and ``lattice deploy-manifests`` (install it)."""

from __future__ import annotations

import argparse
import asyncio
import faulthandler
import signal
import sys
from pathlib import Path
from typing import Any

from lattice.adapters.addons_bundle import locate_addons
from lattice.adapters.binaries import BinariesNotBuiltError
from lattice.app import faults, logs, yamlio
from lattice.app.operator.cell_role import CellSettings
from lattice.app.operator.leader import LeaseConfig
from lattice.app.operator.local_infra_runtime import LocalInfraSettings
from lattice.app.operator.process import OperatorSettings, default_identity, run_operator
from lattice.domain import capi, cluster_reconcile, deploy, install_plan
from lattice.domain.endpoint import host_error
from lattice.domain.errors import FieldError
from lattice.ports.mover import MoverKind

EXIT_CONFIG = 2
STDERR_FD = 2


def _endpoint(value: str) -> capi.ParentEndpoint:
    """HOST[:BOOTSTRAP_PORT[:GRPC_PORT]], an IPv6 host in brackets: [ADDR]:BOOTSTRAP_PORT:GRPC_PORT"""
    parsed = capi.ParentEndpoint.parse(value, "endpoint")
    if isinstance(parsed, FieldError):
        raise argparse.ArgumentTypeError(parsed.reason)  # argparse names the flag
    return parsed


def _host(value: str) -> str:
    """An IP address (IPv6 without brackets) or a DNS name."""
    error = host_error(value)
    if error is not None:
        raise argparse.ArgumentTypeError(error)
    return value


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("operator", help="run the LatticeCluster operator")
    parser.add_argument("--kubeconfig", help="kubeconfig of the cluster to manage (default: in-cluster)")
    parser.add_argument("--cluster-name", help="name of the LatticeCluster this operator runs in")
    parser.add_argument(
        "--cell-endpoint",
        type=_endpoint,
        metavar=capi.PARENT_ENDPOINT_FORM,
        help="this cell's endpoint, compiled into its children's registration call "
        "(IPv6: [ADDR]:BOOTSTRAP_PORT:GRPC_PORT)",
    )
    parser.add_argument(
        "--parent-endpoint",
        type=_endpoint,
        metavar=capi.PARENT_ENDPOINT_FORM,
        help="where this cluster itself registered (keeps its own control plane spec stable; "
        "IPv6: [ADDR]:BOOTSTRAP_PORT:GRPC_PORT)",
    )
    parser.add_argument("--identity", default=None, help="leader-election identity (default: host + random)")
    parser.add_argument(
        "--no-leader-elect", action="store_true", help="run without a Lease (one replica only)"
    )
    parser.add_argument("--lease-namespace", default="lattice-system")
    parser.add_argument("--lease-duration", type=int, default=15, help="seconds")
    parser.add_argument("--health-host", default="127.0.0.1")
    parser.add_argument("--health-port", type=int, default=8081, help="0 picks a free port")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--resync", type=float, default=300.0, help="seconds between full resyncs")
    parser.add_argument("--log-level", default="info")
    cell = parser.add_argument_group("cell", "serve children: registration webhook, agent streams, pivots")
    cell.add_argument(
        "--cell-host",
        type=_host,
        help="host children dial: a DNS name or an IP address, IPv6 without brackets (enables the cell)",
    )
    cell.add_argument("--bootstrap-port", type=int, default=8443, help="HTTPS registration webhook port")
    cell.add_argument("--grpc-port", type=int, default=50051, help="agent stream port (mutual TLS)")
    cell.add_argument(
        "--proxy-port",
        type=int,
        help="serve the Kubernetes API of every descendant on this HTTPS port (docs/api-proxy.md; "
        "0 or absent: no proxy); a deployed cell gets it from spec.parentConfig.proxyPort "
        "(default 8444)",
    )
    cell.add_argument("--bind-host", default="127.0.0.1", help="address the cell's servers bind")
    cell.add_argument("--state-dir", type=Path, default=Path(".lattice/cell"), help="CA and pivot work files")
    cell.add_argument("--agent-image", default="ghcr.io/lattice-dev/lattice:0.1.0")
    cell.add_argument(
        "--machines-dir", type=Path, help="where local machines live (default: under --state-dir)"
    )
    cell.add_argument(
        "--operator-via",
        choices=[via.value for via in install_plan.Via],
        default=install_plan.Via.MANIFESTS.value,
        help="render the operator each child receives from the manifests (default) or from the "
        "Helm chart charts/lattice (helm template; the same objects)",
    )
    cell.add_argument(
        "--mover",
        choices=[kind.value for kind in MoverKind],
        default=MoverKind.NATIVE.value,
        help="how pivots move the Cluster API objects: through the Kubernetes API (native, the "
        "default) or with the clusterctl binary (clusterctl move --to-directory/--from-directory)",
    )
    cell.add_argument(
        "--local-infra",
        action="store_true",
        help="run the contract-shaped local infrastructure provider (LocalCluster, LocalMachine); "
        "the real Cluster API managers must run against this cluster",
    )
    cell.add_argument(
        "--capi-managers",
        action="store_true",
        help="with --local-infra: also run the real Cluster API managers against this cluster",
    )
    parser.set_defaults(func=run)

    manifests = subparsers.add_parser(
        "deploy-manifests", help="print the namespace, RBAC and Deployment that install the operator"
    )
    manifests.add_argument("--image", default="ghcr.io/lattice-dev/lattice:0.1.0")
    manifests.add_argument("--cluster-name")
    manifests.add_argument("--replicas", type=int, default=2)
    manifests.set_defaults(func=run_manifests)


def run_manifests(args: argparse.Namespace) -> int:
    sys.stdout.write(
        yamlio.dump_all(
            deploy.operator_manifests(args.image, cluster_name=args.cluster_name, replicas=args.replicas)
        )
    )
    return 0


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    # `kill -USR1 <pid>` writes every thread's Python stack to stderr (docs/operator.md): how to
    # see where an operator that logs nothing is stuck, without stopping it. The process's own
    # stderr (descriptor 2): a replaced sys.stderr may have no descriptor (pytest's capture).
    faulthandler.register(signal.SIGUSR1, file=STDERR_FD, all_threads=True)
    try:
        faults.armed()
        faults.agent_faults()
    except ValueError as exc:
        print(f"lattice operator: {exc}", file=sys.stderr)
        return 2
    duration = args.lease_duration
    cell = None
    cell_endpoint = args.cell_endpoint
    if args.cell_host:
        cell = CellSettings(
            host=args.cell_host,
            bootstrap_port=args.bootstrap_port,
            grpc_port=args.grpc_port,
            proxy_port=args.proxy_port or None,  # 0: no proxy, as parentConfig.proxyPort: 0
            state_dir=args.state_dir,
            bind_host=args.bind_host,
            agent_image=args.agent_image,
            local_infra=args.local_infra,
            machines_dir=args.machines_dir,
            operator_via=install_plan.Via(args.operator_via),
            mover=MoverKind(args.mover),
        )
        cell_endpoint = cell_endpoint or cell.endpoint
        try:  # a cell renders every child's Cilium and sends Flux: say at once if they are not built
            locate_addons()
        except BinariesNotBuiltError as exc:
            print(f"lattice operator: a cell needs the cluster add-ons: {exc}", file=sys.stderr)
            return EXIT_CONFIG
    local_infra = (
        LocalInfraSettings(
            machines_dir=args.machines_dir or args.state_dir / "local-infra",
            state_dir=args.state_dir,
            capi_managers=args.capi_managers,
        )
        if args.local_infra
        else None
    )
    settings = OperatorSettings(
        kubeconfig=args.kubeconfig,
        context=cluster_reconcile.OperatorContext(
            self_name=args.cluster_name,
            cell_endpoint=cell_endpoint,
            self_parent=args.parent_endpoint,
        ),
        identity=args.identity or default_identity(),
        leader_elect=not args.no_leader_elect,
        lease=LeaseConfig(
            namespace=args.lease_namespace,
            lease_duration_s=duration,
            renew_deadline_s=duration * 2 / 3,
            retry_period_s=max(0.2, duration / 7.5),
        ),
        health_host=args.health_host,
        health_port=args.health_port,
        workers=args.workers,
        resync_s=args.resync,
        cell=cell,
        local_infra=local_infra,
    )
    return asyncio.run(run_operator(settings))
