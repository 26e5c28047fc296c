"""Writes per cluster against a real apiserver: the operator does not fight the controllers
over the objects it applied, and records its Events as client-go's recorder does (repeats
counted on one Event)."""

from __future__ import annotations

import asyncio
import datetime as dt
import random
from typing import Any

import anyio
import pytest

from lattice.adapters.clock import SystemClock
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app.operator.controller import ClusterController
from lattice.app.operator.events import EventRecorder
from lattice.domain import models
from lattice.ports import kube
from lattice.ports.kube import ResourceRef
from tests.integration.conftest import events_of
from tests.integration.operator.conftest import CELL, capi_objects, cluster, eventually, lc_ref, operator

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

KCP = ResourceRef("controlplane.cluster.x-k8s.io/v1beta2", "KubeadmControlPlane", "", "")


def condition(obj: dict[str, Any], kind: str) -> str | None:
    for cond in (obj.get("status") or {}).get("conditions", []):
        if cond["type"] == kind:
            return str(cond["status"])
    return None


async def test_what_a_controller_writes_is_not_applied_over(cell_control_plane: ControlPlane) -> None:
    cp = cell_control_plane
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    async with operator(cp):
        await api.create(cluster("calm-1"))

        async def applied() -> dict[str, dict[str, Any]] | None:
            objs = await capi_objects(api, "calm-1")
            lc = await api.get(lc_ref("calm-1"))
            return objs if len(objs) == 7 and (lc.get("status") or {}).get("observedGeneration") else None

        objs = await eventually(applied, what="the CAPI objects applied")
        kcp = objs["KubeadmControlPlane/calm-1-control-plane"]
        ns = kcp["metadata"]["namespace"]
        ref = ResourceRef(kcp["apiVersion"], kcp["kind"], kcp["metadata"]["name"], ns)
        # What a defaulting webhook or a controller does: rewrite a field the operator set, and
        # report status, each write a watch event that reconciles the cluster.
        for n in range(3):
            await api.merge_patch(ref, {"spec": {"version": f"v1.35.0-rewritten.{n}"}})
            await api.apply_status(
                {
                    "apiVersion": kcp["apiVersion"],
                    "kind": kcp["kind"],
                    "metadata": {"name": kcp["metadata"]["name"], "namespace": ns},
                    "status": {"replicas": n},
                },
                "capi-kubeadmcontrolplane",
            )
        rewritten = (await api.get(ref))["metadata"]["resourceVersion"]
        # Then one more controller write whose effect shows that the operator reconciled after
        # all of the above: the Cluster reports its infrastructure provisioned.
        capi_cluster = objs["Cluster/calm-1"]
        await api.apply_status(
            {
                "apiVersion": capi_cluster["apiVersion"],
                "kind": "Cluster",
                "metadata": {"name": "calm-1", "namespace": ns},
                "status": {"initialization": {"infrastructureProvisioned": True}},
            },
            "capi-cluster",
        )

        async def reported() -> bool:
            return condition(await api.get(lc_ref("calm-1")), "InfrastructureReady") == "True"

        await eventually(reported, what="InfrastructureReady=True")
        now = await api.get(ref)
        assert now["spec"]["version"] == "v1.35.0-rewritten.2"
        assert now["metadata"]["resourceVersion"] == rewritten
        # Nothing applied since the creation, whose objects the Provisioning Event names.
        assert [e for e in events_of(cp, "calm-1") if e["reason"] == "Applying"] == []
        created = [e for e in events_of(cp, "calm-1") if e["reason"] == "Provisioning"]
        assert [(e["message"], e["count"]) for e in created] == [
            ("applying 8 of 8 Cluster API objects in capi-calm-1; waiting for the infrastructure", 1)
        ]

        # A spec change is applied (over the rewritten field too), twice the same change of
        # count: one Event, counted twice.
        for workers in (3, 4):
            await api.merge_patch(lc_ref("calm-1"), {"spec": {"nodes": {"workers": workers}}})

            async def scaled(workers: int = workers) -> bool:
                md = (await capi_objects(api, "calm-1"))["MachineDeployment/calm-1-md-0"]
                return bool(md["spec"]["replicas"] == workers)

            await eventually(scaled, what=f"MachineDeployment scaled to {workers}")

        async def counted() -> list[tuple[str, int]] | None:
            found = [(e["message"], e["count"]) for e in events_of(cp, "calm-1") if e["reason"] == "Applying"]
            return found if ("applying 1 of 8 Cluster API objects in capi-calm-1", 2) in found else None

        assert len(await eventually(counted, what="the repeated Applying Event counted")) == 1
        await api.delete(lc_ref("calm-1"))

        async def gone() -> bool:
            try:
                await api.get(lc_ref("calm-1"))
            except kube.NotFound:
                return not await capi_objects(api, "calm-1")
            return False

        await eventually(gone, what="the LatticeCluster and its CAPI objects deleted")


class Clock:
    def __init__(self) -> None:
        self.t = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)

    def now(self) -> dt.datetime:
        self.t += dt.timedelta(seconds=1)
        return self.t

    def monotonic(self) -> float:
        return self.t.timestamp()


async def test_the_recorder_counts_repeats_on_one_event(cell_control_plane: ControlPlane) -> None:
    cp = cell_control_plane
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    involved = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "watched", "namespace": "default", "uid": "u-1"},
    }
    recorder = EventRecorder(api, Clock(), component="test", instance="i", cache_size=2)
    await recorder.record(involved, "Normal", "Started", "one")
    await asyncio.gather(*(recorder.record(involved, "Normal", "Started", "one") for _ in range(4)))
    await recorder.record(involved, "Warning", "Failed", "two")

    def by_reason() -> dict[str, dict[str, Any]]:
        return {e["reason"]: e for e in events_of(cp, "watched")}

    seen = by_reason()
    assert set(seen) == {"Started", "Failed"}
    assert seen["Started"]["count"] == 5
    assert seen["Started"]["firstTimestamp"] < seen["Started"]["lastTimestamp"]
    assert seen["Failed"]["count"] == 1
    # Five occurrences, at most four requests: repeats during a write fold into one patch.
    assert recorder.writes <= 4

    # An Event gone from the server (its TTL) is created afresh, counted from there.
    await api.delete(ResourceRef("v1", "Event", seen["Started"]["metadata"]["name"], "default"))
    await recorder.record(involved, "Normal", "Started", "one")
    fresh = by_reason()["Started"]
    assert fresh["metadata"]["name"] != seen["Started"]["metadata"]["name"]
    assert fresh["count"] == 1

    # The cache is bounded: the oldest key is forgotten and its next occurrence is a new Event.
    await recorder.record(involved, "Normal", "Third", "three")
    await recorder.record(involved, "Warning", "Failed", "two")
    assert len([e for e in events_of(cp, "watched") if e["reason"] == "Failed"]) == 2


async def test_a_failed_write_is_logged_not_raised(cell_control_plane: ControlPlane) -> None:
    api = await Kr8sKube.connect(str(cell_control_plane.kubeconfig))
    recorder = EventRecorder(api, SystemClock(), component="test", instance="i", namespace="no-such-ns")
    involved = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "uid": "u"}}
    await recorder.record(involved, "Normal", "Nowhere", "the namespace does not exist")
    assert (await api.list("v1", "Event", namespace="no-such-ns")).items == []
    assert recorder.writes == 1


async def test_the_late_echoes_of_a_reconciles_two_writes_are_not_reconciled(
    cell_control_plane: ControlPlane,
) -> None:
    """A new cluster's reconcile writes its finalizer, then its status. Under load the watch
    delivers both echoes after the second write; neither is a change to reconcile (each would
    be a pass that plans and finds nothing to do)."""
    api = await Kr8sKube.connect(str(cell_control_plane.kubeconfig))
    controller = ClusterController(api, CELL, SystemClock(), random=random.random)
    tasks = await controller.start_informers()
    name = "echo-1"
    try:
        await controller.wait_synced()
        created = await api.create(cluster(name))
        with anyio.fail_after(30):
            assert await controller.queue.get() == name
        tasks[0].cancel()  # the LatticeClusters' watch stops: its events come late, below
        await controller.reconcile_key(name)
        controller.queue.done(name)
        assert controller.clusters.get(None, name)["status"]["phase"] == "Provisioning"

        late = [
            event
            async for event in api.watch(
                models.API_VERSION, models.KIND, created["metadata"]["resourceVersion"], timeout_seconds=1
            )
            if event.object["metadata"]["name"] == name
        ]
        assert [e.type for e in late] == ["MODIFIED", "MODIFIED"]  # the finalizer, the status
        skipped = controller.echoes_skipped
        for event in late:
            controller._on_cluster(event.type, event.object)
        assert controller.echoes_skipped - skipped == 2
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await api.merge_patch(lc_ref(name), {"metadata": {"finalizers": None}})
        await api.delete(lc_ref(name))
