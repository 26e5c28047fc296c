"""Helpers for operator tests: run the real operator against a real control plane."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest

from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app.operator.process import OperatorSettings, run_operator
from lattice.domain import capi, cluster_reconcile
from lattice.domain.operator_command import OperatorOptions, operator_command
from lattice.ports import kube
from lattice.ports.kube import ResourceRef

T = TypeVar("T")
CELL = cluster_reconcile.OperatorContext(self_name="mgmt", cell_endpoint=capi.ParentEndpoint(host="10.0.0.1"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def cluster(name: str, workers: int = 2, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cellRef": "mgmt",
        "provider": {"type": "docker", "kubernetes": {"version": "1.35.0"}},
        "nodes": {"controlPlane": 1, "workers": workers},
    }
    body.update(spec)
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": name},
        "spec": body,
    }


def lc_ref(name: str) -> ResourceRef:
    return ResourceRef("lattice.dev/v1alpha1", "LatticeCluster", name)


async def absent(api: Kr8sKube, name: str) -> bool:
    """Whether the LatticeCluster ``name`` is gone (a probe for :func:`eventually`)."""
    try:
        await api.get(lc_ref(name))
    except kube.NotFound:
        return True
    return False


async def eventually(probe: Callable[[], Awaitable[T | None]], within: float = 30.0, what: str = "") -> T:
    """Poll ``probe`` until it returns a truthy value; fail with ``what`` after ``within`` s."""
    deadline = time.monotonic() + within
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = await probe()
        except kube.KubeError as exc:
            last = exc
        else:
            if value:
                return value
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out after {within}s waiting for {what} (last error: {last})")


async def capi_objects(api: Kr8sKube, name: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for api_version, kind in [
        ("cluster.x-k8s.io/v1beta2", "Cluster"),
        ("cluster.x-k8s.io/v1beta2", "MachineDeployment"),
        ("controlplane.cluster.x-k8s.io/v1beta2", "KubeadmControlPlane"),
        ("bootstrap.cluster.x-k8s.io/v1beta2", "KubeadmConfigTemplate"),
        ("infrastructure.cluster.x-k8s.io/v1beta2", "DockerCluster"),
        ("infrastructure.cluster.x-k8s.io/v1beta2", "DockerMachineTemplate"),
    ]:
        listed = await api.list(api_version, kind, namespace=f"capi-{name}")
        for item in listed.items:
            out[f"{kind}/{item['metadata']['name']}"] = item
    return out


@contextlib.asynccontextmanager
async def operator(
    cp: ControlPlane,
    *,
    identity: str = "op",
    context: cluster_reconcile.OperatorContext = CELL,
    **overrides: Any,
) -> AsyncIterator[OperatorSettings]:
    settings = OperatorSettings(
        kubeconfig=str(cp.kubeconfig),
        context=context,
        identity=identity,
        leader_elect=False,
        health_port=free_port(),
        handle_signals=False,
        **overrides,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(run_operator(settings, stop))
    try:
        yield settings
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def start_operator_process(
    cp: ControlPlane, identity: str, log_dir: Path, *extra: str
) -> subprocess.Popen[bytes]:
    """The real ``lattice operator`` as its own process (for kill -9 and failover tests)."""
    log = (log_dir / f"operator-{identity}.log").open("ab")
    options = OperatorOptions(
        kubeconfig=str(cp.kubeconfig),
        cluster_name="mgmt",
        cell_endpoint="10.0.0.1",
        identity=identity,
        health_port=free_port(),
        lease_namespace="default",
    )
    return subprocess.Popen(
        [*operator_command(sys.executable, options), *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def kill(proc: subprocess.Popen[bytes], sig: signal.Signals = signal.SIGKILL) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, sig)
    proc.wait(timeout=30)
