"""One writer of LatticeCluster status (issue 19): what the cell's agent hub learns and the steps
the pivot driver reaches are handed to the ClusterController as observations, and its reconcile
writes them, against a real apiserver. A step is written before ``observe_flow`` returns (the
driver starts the next step only then); a step that does not apply is not written. An outside
write that carries an older view of the agent is corrected by the owner's next pass."""

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
from lattice.domain import cluster_reconcile, models
from lattice.domain.pivot_flow import FlowReport, FlowStep
from tests.integration.conftest import events_of
from tests.integration.operator.conftest import CELL, absent, cluster, eventually, lc_ref

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

    # An outside write of the status from a view without the agent (as the pivot driver's own
    # writes were): the owner puts the observed agent back.
    stale = {k: v for k, v in written.items() if k != "agent"}
    body = {"apiVersion": models.API_VERSION, "kind": models.KIND, "metadata": {"name": "owned-1"}}
    await api.apply_status({**body, "status": stale}, cluster_reconcile.FIELD_MANAGER)
    await eventually(
        lambda: status(lambda s: (s.get("agent") or {}).get("nodes") == "1/3"), what="status.agent restored"
    )

    # The driver reports the connected agent: written (Bootstrapping) by the time it returns.
    assert await controller.observe_flow("owned-1", FlowReport(FlowStep.AGENT_CONNECTED))
    stored = (await api.get(lc_ref("owned-1")))["status"]
    assert stored["phase"] == "Bootstrapping"
    assert any(c["type"] == "AgentConnected" and c["status"] == "True" for c in stored["conditions"])
    assert stored["agent"]["nodes"] == "1/3"  # merged in the same write
    # A step the phase does not accept is not written.
    assert not await controller.observe_flow("owned-1", FlowReport(FlowStep.PIVOT_SUCCEEDED))
    assert (await api.get(lc_ref("owned-1")))["status"]["phase"] == "Bootstrapping"

    # The agent fails to apply the payload: the owner shows it, and its own pass for the phase
    # keeps it (no second writer to undo it).
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

    # The observation does not hold up the deletion (whose passes merge it too); a bootstrap step
    # stops at the deletion, and a step for a cluster that is gone is not written.
    await api.delete(lc_ref("owned-1"))

    async def deleting() -> bool:
        raw = controller.clusters.get(None, "owned-1")
        return raw is None or bool(raw["metadata"].get("deletionTimestamp"))

    await eventually(deleting, what="the deletion seen")
    assert not await controller.observe_flow("owned-1", FlowReport(FlowStep.BOOTSTRAP_COMPLETED))

    await eventually(lambda: absent(api, "owned-1"), within=120, what="the cluster deleted")

    async def forgotten() -> bool:
        return controller.clusters.get(None, "owned-1") is None

    await eventually(forgotten, what="the cluster gone from the cache")
    assert not await controller.observe_flow("owned-1", FlowReport(FlowStep.PIVOT_STEP))


async def test_a_step_is_not_written_for_another_cells_cluster_nor_after_the_driver_stops_waiting(
    controller: ClusterController, cell_control_plane: ControlPlane
) -> None:
    api = controller.api
    other = cluster("owned-elsewhere")
    other["spec"]["cellRef"] = "another-cell"
    await api.create(other)

    async def cached() -> bool:
        return controller.clusters.get(None, "owned-elsewhere") is not None

    await eventually(cached, what="the other cell's cluster cached")
    # Not this operator's to reconcile, so not its to write.
    assert not await controller.observe_flow("owned-elsewhere", FlowReport(FlowStep.AGENT_CONNECTED))

    # A controller whose workers do not run (as before the leader election is won): the step
    # waits; a driver that stops waiting (cancelled) withdraws it, so no later pass applies it.
    idle = ClusterController(
        await Kr8sKube.connect(str(cell_control_plane.kubeconfig)),
        CELL,
        SystemClock(),
        random=random.Random(0).random,
    )
    tasks = await idle.start_informers()
    try:
        await idle.wait_synced()
        report = FlowReport(FlowStep.AGENT_CONNECTED)
        waiting = asyncio.create_task(idle.observe_flow("owned-elsewhere", report))

        async def pending() -> bool:
            return idle.observations("owned-elsewhere").flow is report

        await eventually(pending, what="the step pending")
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        assert idle.observations("owned-elsewhere").flow is None
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
    await api.delete(lc_ref("owned-elsewhere"))
