"""``lattice install``, ``lattice demo`` and ``lattice down``."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from lattice.adapters.binaries import BinariesNotBuiltError, locate
from lattice.adapters.chart import ChartNotFoundError, locate_operator_chart
from lattice.adapters.controlplane import free_port
from lattice.adapters.local_processes import stop_all
from lattice.app import installer
from lattice.domain import install_plan

DEFAULT_STATE = Path(".lattice")
CLOUD_CREDENTIALS = {
    "aws": (("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"), ("AWS_PROFILE",)),
    "gcp": (("GOOGLE_APPLICATION_CREDENTIALS",),),
    "azure": (("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"),),
}


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("install", help="create a self-managing management cell")
    parser.add_argument("-f", "--filename", type=Path, required=True, help="the management LatticeCluster")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    parser.add_argument("--dry-run", type=Path, metavar="DIR", help="write what would be applied to DIR")
    parser.add_argument("--timeout", type=float, default=600.0)
    parser.add_argument(
        "--via",
        choices=[via.value for via in install_plan.Via],
        default=install_plan.Via.MANIFESTS.value,
        help="render the operator's CRDs, RBAC and Deployment from the built-in manifests "
        "(lattice crds, lattice deploy-manifests) or from the Helm chart charts/lattice with "
        "helm template: the same objects either way, applied the same way, no Helm release "
        "(default: manifests)",
    )
    parser.set_defaults(func=run_install)

    demo = subparsers.add_parser("demo", help="a local management cell and two workload clusters")
    demo.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    demo.add_argument("--workloads", type=int, default=2)
    demo.add_argument("--timeout", type=float, default=900.0)
    demo.set_defaults(func=run_demo)

    down = subparsers.add_parser("down", help="stop everything lattice install/demo started")
    down.add_argument("--state-dir", type=Path, default=DEFAULT_STATE)
    down.set_defaults(func=run_down)


def _progress(console: Console) -> installer.Progress:
    started = time.monotonic()

    def step(which: install_plan.Step, message: str) -> None:
        index = install_plan.STEPS.index(which) + 1
        elapsed = time.monotonic() - started
        console.print(
            f"[bold cyan][{index}/{len(install_plan.STEPS)}][/] {which.value}: {message} "
            f"[dim]({elapsed:.0f}s)[/]"
        )

    return installer.Progress(step=step, detail=lambda message: console.print(f"    {message}"))


def _missing_credentials(provider: str) -> str | None:
    options = CLOUD_CREDENTIALS.get(provider)
    if options is None:
        return None
    if any(all(os.environ.get(var) for var in option) for option in options):
        return None
    wanted = " or ".join("+".join(option) for option in options)
    return f"no {provider} credentials: set {wanted}"


def run_install(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    try:
        cluster = installer.load_cluster(args.filename)
    except ValueError as exc:  # the file, named, with the line and column of each error
        console.print(f"[red]lattice install:[/] {escape(str(exc))}", soft_wrap=True)
        return 2
    provider = cluster["spec"]["provider"]["type"]
    via = install_plan.Via(args.via)
    if via is install_plan.Via.HELM:
        try:  # say at once when helm or the chart is missing, before anything starts
            locate_operator_chart()
        except (BinariesNotBuiltError, ChartNotFoundError) as exc:
            console.print(f"[red]lattice install:[/] --via helm: {escape(str(exc))}", soft_wrap=True)
            return 2
    if args.dry_run is not None:
        for path in installer.cloud_dry_run(cluster, args.dry_run, via):
            console.print(f"wrote {path}")
        return 0
    if provider != "local":
        missing = _missing_credentials(provider)
        reason = missing or (
            f"installing on {provider} needs its Cluster API provider controllers running in the bootstrap "
            "cluster, which this build does not start (see docs/install.md)"
        )
        console.print(f"[red]lattice install:[/] {reason}; use --dry-run DIR to write what would be applied")
        return 2
    return _install(cluster, args.state_dir, args.timeout, console, via)


def _install(
    cluster: dict[str, Any],
    state_dir: Path,
    timeout: float,
    console: Console,
    via: install_plan.Via = install_plan.Via.MANIFESTS,
) -> int:
    try:
        toolchain = locate()
    except BinariesNotBuiltError as exc:
        console.print(f"[red]lattice install:[/] {exc}")
        return 2
    runner = installer.Installer(
        cluster, state_dir.resolve(), toolchain, _progress(console), timeout_s=timeout, via=via
    )
    try:
        kubeconfig = runner.run()
    except installer.InstallError as exc:
        console.print(f"[red]lattice install:[/] {exc}")
        return 1
    console.print(f"[green]management cell {runner.name} is self-managing[/]; kubeconfig: {kubeconfig}")
    return 0


def demo_cluster(name: str = "mgmt") -> dict[str, Any]:
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": name},
        "spec": {
            "provider": {"type": "local", "kubernetes": {"version": "1.36.3"}},
            "nodes": {"controlPlane": 1, "workers": 1},
            "parentConfig": {
                "host": "127.0.0.1",
                "grpcPort": free_port(),
                "bootstrapPort": free_port(),
                "proxyPort": free_port(),
            },
        },
    }


def run_demo(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    started = time.monotonic()
    state_dir = args.state_dir.resolve()
    record = state_dir / "install.json"
    saved = json.loads(record.read_text()) if record.exists() else {}
    cluster = saved.get("cluster") or demo_cluster()  # a resumed demo keeps its ports
    state_dir.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps({**saved, "cluster": cluster}))
    rc = _install(cluster, state_dir, args.timeout, console)
    if rc != 0:
        return rc
    kubeconfig = Path(json.loads(record.read_text())["kubeconfig"])
    kubectl = str(locate().kubectl)
    names = [f"workload-{chr(ord('a') + i)}" for i in range(args.workloads)]
    workloads = [
        {
            "apiVersion": "lattice.dev/v1alpha1",
            "kind": "LatticeCluster",
            "metadata": {"name": name},
            "spec": {
                "cellRef": cluster["metadata"]["name"],
                "provider": {"type": "local", "kubernetes": {"version": "1.36.3"}},
                "nodes": {"controlPlane": 1, "workers": 2},
            },
        }
        for name in names
    ]
    subprocess.run(  # noqa: S603 - our kubectl
        [kubectl, f"--kubeconfig={kubeconfig}", "apply", "--server-side", "-f", "-"],
        input="".join(f"---\n{json.dumps(w)}\n" for w in workloads),
        text=True,
        check=True,
        capture_output=True,
    )
    deadline = time.monotonic() + args.timeout
    phases: dict[str, str] = {}
    with Live(console=console, refresh_per_second=2) as live:
        while time.monotonic() < deadline:
            phases = _phases(kubectl, kubeconfig, names)
            live.update(_table(phases, time.monotonic() - started))
            if all(phases.get(n) == "Ready" for n in names):
                break
            time.sleep(1.0)
    if not all(phases.get(n) == "Ready" for n in names):
        console.print(f"[red]lattice demo:[/] workload clusters not Ready in time: {phases}")
        return 1
    elapsed = time.monotonic() - started
    console.print(f"[green]demo ready in {elapsed:.0f} s[/]")
    print(f"management cell kubeconfig: {kubeconfig}")
    for name in names:
        found = sorted(state_dir.rglob(f"{name}-control-plane-*/root/etc/kubernetes/admin.conf"))
        print(f"{name} kubeconfig: {found[-1] if found else '?'}")
    print(f"try: {kubectl} --kubeconfig {kubeconfig} get lc")
    print(f"then: lattice down --state-dir {state_dir}")
    return 0


def _phases(kubectl: str, kubeconfig: Path, names: list[str]) -> dict[str, str]:
    result = subprocess.run(  # noqa: S603 - our kubectl
        [kubectl, f"--kubeconfig={kubeconfig}", "get", "lc", "-o", "json"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        return {}
    items = json.loads(result.stdout).get("items", [])
    return {
        i["metadata"]["name"]: (i.get("status") or {}).get("phase", "Pending")
        for i in items
        if i["metadata"]["name"] in names
    }


def _table(phases: dict[str, str], elapsed: float) -> Table:
    table = Table(title=f"workload clusters ({elapsed:.0f}s)")
    table.add_column("cluster")
    table.add_column("phase")
    for name, value in sorted(phases.items()):
        table.add_row(name, f"[green]{value}[/]" if value == "Ready" else value)
    return table


def run_down(args: argparse.Namespace) -> int:
    state_dir = args.state_dir.resolve()
    pids = stop_all(state_dir)
    installer._remove(state_dir)
    print(f"stopped {len(pids)} process(es); removed {state_dir}", file=sys.stderr)
    return 0
