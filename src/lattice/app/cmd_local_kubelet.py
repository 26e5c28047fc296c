"""``lattice local-kubelet``: the kubelet stand-in of one local machine (not for users).

Started by the local infrastructure provider's machine host (``adapters.local_machine_host``)
in the machine's directory, detached from the provider, so the machine outlives the process
that booted it. It reads ``kubelet.json`` there, runs the static pods of a control-plane
machine, registers the Node and keeps it Ready until SIGTERM, writing how far it got to
``kubelet-status.json``. docs/local-provider.md says what it stands in for.

Exit codes: 0 after SIGTERM/SIGINT; 1 when the machine could not start (the status file and
the log say why); 2 for a malformed ``kubelet.json`` or ``LATTICE_POD_RUNTIME``.

Lattice's own pods (the operator, the agent) run from the built image's root filesystem when
``LATTICE_POD_RUNTIME=image``, or from this source tree's virtualenv when it is ``source``;
unset, the image when ``LATTICE_IMAGE_DIR`` names one (CI sets it), else the source tree.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from pathlib import Path
from typing import Any

from lattice.adapters.binaries import locate
from lattice.adapters.clock import SystemClock
from lattice.adapters.controlplane import ControlPlaneError
from lattice.adapters.local_kubelet import LocalKubelet, write_status
from lattice.app import logs
from lattice.domain import local_pods
from lattice.domain.local_kubelet import CONFIG_FILE, KubeletFileError, KubeletStatus, Phase, parse_config
from lattice.ports import kube

EXIT_FAILED = 1
EXIT_CONFIG = 2


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "local-kubelet",
        help="(internal) the kubelet stand-in of a local machine",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--machine-dir", required=True, type=Path, help="the machine's directory")
    parser.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    parser.set_defaults(func=run)


async def _serve(kubelet: LocalKubelet) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    await kubelet.run(stop)


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    machine_dir: Path = args.machine_dir
    try:
        config = parse_config((machine_dir / CONFIG_FILE).read_text())
    except (OSError, KubeletFileError) as exc:
        print(f"lattice local-kubelet: {exc}", file=sys.stderr)
        if machine_dir.is_dir():
            write_status(machine_dir, KubeletStatus(phase=Phase.FAILED, message=str(exc)))
        return EXIT_CONFIG
    try:
        runtime = local_pods.pod_runtime(
            os.environ.get(local_pods.RUNTIME_ENV), os.environ.get(local_pods.IMAGE_DIR_ENV)
        )
    except ValueError as exc:
        print(f"lattice local-kubelet: {exc}", file=sys.stderr)
        write_status(machine_dir, KubeletStatus(phase=Phase.FAILED, message=str(exc)))
        return EXIT_CONFIG
    image_dir = os.environ.get(local_pods.IMAGE_DIR_ENV)
    kubelet = LocalKubelet(
        config,
        machine_dir,
        locate(),
        SystemClock(),
        runtime=runtime,
        image_dir=Path(image_dir) if image_dir else None,
    )
    try:
        kubelet.start_static_pods()
        asyncio.run(_serve(kubelet))
    except (ControlPlaneError, kube.KubeError, OSError, RuntimeError) as exc:
        print(f"lattice local-kubelet: {exc}", file=sys.stderr)
        kubelet.fail(str(exc))
        return EXIT_FAILED
    finally:
        kubelet.stop_static_pods()
    return 0
