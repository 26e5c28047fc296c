"""Fixtures of the integration tests that run the real Cluster API managers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS
from lattice.adapters.capi_managers import CapiManagers
from lattice.adapters.clock import SystemClock
from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.local_machine_host import HEARTBEAT_SECONDS, LocalMachineHost
from lattice.app.local_infra import LocalInfraProvider
from lattice.testing.fixtures import ControlPlaneFactory


def events_of(cp: ControlPlane, name: str) -> list[dict[str, Any]]:
    """The Events the operator recorded for the object ``name`` (in ``default``), read by kubectl."""
    out = cp.kubectl(
        "get", "events", "-n", "default", "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


@pytest.fixture
def managed(control_plane_factory: ControlPlaneFactory) -> Iterator[tuple[ControlPlane, CapiManagers]]:
    """A fresh control plane with the CAPI and Lattice CRDs and the three real managers."""
    cp = control_plane_factory.one(controller_manager=True)
    cp.install_capi_crds(LOCAL_CAPI_PROVIDERS)
    cp.install_lattice_crds()
    managers = CapiManagers(cp).start()
    try:
        yield cp, managers
    finally:
        managers.stop()


@contextlib.asynccontextmanager
async def local_infra(
    cp: ControlPlane, machines: Path, *, heartbeat_seconds: float = HEARTBEAT_SECONDS
) -> AsyncIterator[LocalMachineHost]:
    """The contract-shaped local provider running against ``cp``, its machines under
    ``machines``; every machine it booted is stopped afterwards."""
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    host = LocalMachineHost(cp.toolchain, machines, SystemClock(), heartbeat_seconds=heartbeat_seconds)
    provider = LocalInfraProvider(api, host, SystemClock(), random=random.random, free_port=free_port)
    stop = asyncio.Event()
    running = asyncio.create_task(provider.run(stop))
    try:
        yield host
    finally:
        stop.set()
        await running
        for machine in host.machines():
            await host.stop(machine)
