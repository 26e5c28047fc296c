"""One writer of LatticeCluster status (issue 19): what the cell's agent hub learns is handed to
the ClusterController as an observation, and its reconcile writes ``status.agent``, against a
real apiserver. A write by another part that carries an older view of the agent is corrected by
the owner's next pass."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from typing import Any

import pytest

from lattice.adapters.clock import SystemClock
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app.operator.controller import ClusterController
from lattice.domain import models
from lattice.ports import kube
from tests.integration.conftest import events_of
from tests.integration.operator.conftest import CELL, cluster, eventually, lc_ref

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

CONNECTED = models.AgentStatus(
    connected=True,
    state="Ready",
    version="0.1.0",
    nodes="1/3",
    certificate_not_after="2099-01-01T00:00:00Z",
)


@pytest.fixture
async def controller(cell_control_plane: ControlPlane) -> AsyncIterator[ClusterController]:
    api = await Kr8sKube.connect(str(cell_control_plane.kubeconfig))
    controller = ClusterController(api, CELL, SystemClock(), random=random.Random(0).random)
    tasks = await controller.start_informers()
    await controller.wait_synced()
    workers = asyncio.create_task(controller.run_workers())
    try:
        yield controller
    finally:
        controller.stop()
        await asyncio.wait_for(workers, 30)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def test_the_controller_writes_the_observed_agent(
    controller: ClusterController, cell_control_plane: ControlPlane
) -> None:
    api = controller.api
    await api.create(cluster("owned-1"))

    async def status(predicate: Any) -> dict[str, Any] | None:
        found = (await api.get(lc_ref("owned-1"))).get("status") or {}
        return found if predicate(found) else None

    await eventually(
        lambda: status(lambda s: s.get("phase") == "Provisioning"), within=60, what="Provisioning"
    )
    assert controller.observe_agent("owned-1", CONNECTED)
    assert not controller.observe_agent("owned-1", CONNECTED)  # no news, no reconcile
    written = await eventually(
        lambda: status(lambda s: (s.get("agent") or {}).get("connected") is True), what="status.agent"
    )
    assert written["agent"] == {
        "connected": True,
        "state": "Ready",
        "version": "0.1.0",
        "nodes": "1/3",
        "certificateNotAfter": "2099-01-01T00:00:00Z",
    }
    # Derived by the same owner in the same pass: the condition the agent's certificate gives.
    assert any(c["type"] == "AgentCertificate" and c["status"] == "True" for c in written["conditions"])

    # Another part (the pivot driver) writes the status from a view without the agent: the owner
    # puts the observed agent back.
    raw = controller.clusters.get(None, "owned-1")
    assert raw is not None
    stale = {k: v for k, v in written.items() if k != "agent"}
    async with controller.lock("owned-1"):
        await controller.write_status(raw, stale)
    await eventually(
        lambda: status(lambda s: (s.get("agent") or {}).get("nodes") == "1/3"), what="status.agent restored"
    )

    # The driver moves the cluster to Bootstrapping; the agent fails to apply the payload: the
    # owner shows it, and its own pass for the phase keeps it (no second writer to undo it).
    raw = controller.clusters.get(None, "owned-1")
    assert raw is not None
    async with controller.lock("owned-1"):
        current = (await api.get(lc_ref("owned-1")))["status"]
        await controller.write_status(raw, {**current, "phase": "Bootstrapping"})
    assert controller.observe_bootstrap("owned-1", "applying Namespace x: forbidden")
    failed = await eventually(
        lambda: status(lambda s: s.get("message", "").startswith("bootstrap payload not applied")),
        what="the failed bootstrap shown",
    )
    assert failed["phase"] == "Bootstrapping"
    assert failed["message"] == "bootstrap payload not applied: applying Namespace x: forbidden"
    assert controller.observe_agent("owned-1", models.AgentStatus(connected=True, state="Ready", nodes="2/3"))
    kept = await eventually(
        lambda: status(lambda s: (s.get("agent") or {}).get("nodes") == "2/3"), what="the agent's new count"
    )
    assert kept["message"] == failed["message"]

    async def warned() -> bool:
        events = await asyncio.to_thread(events_of, cell_control_plane, "owned-1")
        return any(e["reason"] == "BootstrapFailed" and e["type"] == "Warning" for e in events)

    await eventually(warned, what="a BootstrapFailed Event")
    assert controller.observe_bootstrap("owned-1", None)

    assert controller.observe_agent("owned-1", models.AgentStatus(connected=False, state="Unknown"))
    await eventually(
        lambda: status(lambda s: s.get("agent") == {"connected": False, "state": "Unknown"}),
        what="the agent disconnected",
    )

    # The observation does not hold up the deletion (whose passes merge it too).
    await api.delete(lc_ref("owned-1"))

    async def gone() -> bool:
        try:
            await api.get(lc_ref("owned-1"))
        except kube.NotFound:
            return True
        return False

    await eventually(gone, within=120, what="the cluster deleted")
