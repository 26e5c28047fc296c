"""The local infrastructure provider, CAPI-contract shaped: LocalCluster and LocalMachine only.

Reads (informers on LocalCluster, LocalMachine, Cluster and Machine), decides
(:mod:`lattice.domain.local_infra`), then acts: writes to the two kinds it owns, and boots or
stops machines through the :class:`lattice.ports.machine_host.MachineHost` port. It never
writes a Cluster, a Machine, an ownerReference, a certificate or a kubeconfig: the real
Cluster API managers (:mod:`lattice.adapters.capi_managers`) do.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Literal

from lattice.app.operator.events import EventRecorder
from lattice.app.operator.informer import Informer
from lattice.app.operator.workqueue import WorkQueue, serve
from lattice.domain import capi, local_infra, local_provider
from lattice.domain.bootstrap_data import BootstrapDataError, parse_cloud_config
from lattice.domain.endpoint import Endpoint
from lattice.domain.models import ConditionStatus
from lattice.ports import kube
from lattice.ports.clock import Clock
from lattice.ports.kube import KubeApi, Obj, ResourceRef
from lattice.ports.machine_host import MachineBootError, MachineHost

log = logging.getLogger("lattice.local_infra")

FIELD_MANAGER = "lattice-local-infra"
CLUSTER_API_VERSION = f"{capi.CLUSTER_API}/v1beta2"
Key = tuple[str, str, str]  # (kind, namespace, name)


def _owner_name(obj: Obj, kind: str) -> str | None:
    for ref in obj.get("metadata", {}).get("ownerReferences") or []:
        if ref.get("kind") == kind and str(ref.get("apiVersion", "")).startswith(f"{capi.CLUSTER_API}/"):
            return str(ref["name"])
    return None


class LocalInfraProvider:
    def __init__(
        self,
        api: KubeApi,
        host: MachineHost,
        clock: Clock,
        *,
        random: Callable[[], float],
        free_port: Callable[[], int],
    ) -> None:
        self.api = api
        self.host = host
        self.clock = clock
        self.instance = f"lattice-local-infra-{uuid.uuid4().hex[:8]}"
        self.events = EventRecorder(api, clock, component=FIELD_MANAGER, instance=self.instance)
        self._background: set[asyncio.Task[None]] = set()
        self.free_port = free_port
        self.queue: WorkQueue[Key] = WorkQueue(random=random)
        self.local_clusters = Informer(
            api, local_provider.API_VERSION, "LocalCluster", handler=self._on_local
        )
        self.local_machines = Informer(
            api, local_provider.API_VERSION, "LocalMachine", handler=self._on_local
        )
        self.clusters = Informer(api, CLUSTER_API_VERSION, "Cluster", handler=self._on_cluster)
        self.machines = Informer(api, CLUSTER_API_VERSION, "Machine", handler=self._on_machine)

    # -- events -> keys ---------------------------------------------------------------------

    def _on_local(self, _event: str, obj: Obj) -> None:
        meta = obj["metadata"]
        self.queue.add((obj["kind"], meta["namespace"], meta["name"]))

    def _on_cluster(self, _event: str, obj: Obj) -> None:
        meta = obj["metadata"]
        infra = (obj.get("spec") or {}).get("infrastructureRef") or {}
        if infra.get("kind") == "LocalCluster":
            self.queue.add(("LocalCluster", meta["namespace"], str(infra["name"])))
        for machine in self.local_machines.items():
            labels = machine["metadata"].get("labels") or {}
            if (
                machine["metadata"]["namespace"] == meta["namespace"]
                and labels.get(local_infra.CLUSTER_NAME_LABEL) == meta["name"]
            ):
                self.queue.add(("LocalMachine", meta["namespace"], machine["metadata"]["name"]))

    def _on_machine(self, _event: str, obj: Obj) -> None:
        infra = (obj.get("spec") or {}).get("infrastructureRef") or {}
        if infra.get("kind") == "LocalMachine":
            self.queue.add(("LocalMachine", obj["metadata"]["namespace"], str(infra["name"])))

    # -- running ----------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        tasks = [
            asyncio.create_task(informer.run())
            for informer in (self.clusters, self.machines, self.local_clusters, self.local_machines)
        ]
        tasks.append(
            asyncio.create_task(serve(self.queue, self.reconcile, logger=log, what="local infrastructure"))
        )
        try:
            await stop.wait()
        finally:
            self.queue.shutdown()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.host.close()

    async def reconcile(self, key: Key) -> float | None:
        kind, namespace, name = key
        if kind == "LocalCluster":
            return await self.reconcile_cluster(namespace, name)
        return await self.reconcile_machine(namespace, name)

    # -- LocalCluster -----------------------------------------------------------------------

    async def reconcile_cluster(self, namespace: str, name: str) -> float | None:
        local_cluster = self.local_clusters.get(namespace, name)
        if local_cluster is None:
            return None
        owner = _owner_name(local_cluster, "Cluster")
        cluster = self.clusters.get(namespace, owner) if owner else None
        plan = local_infra.plan_local_cluster(local_cluster, cluster, self.free_port())
        ref = ResourceRef.of(local_cluster)
        if plan.endpoint is not None:
            endpoint = Endpoint(*plan.endpoint)
            updated = await self.api.merge_patch(
                ref, {"spec": {"controlPlaneEndpoint": {"host": endpoint.host, "port": endpoint.port}}}
            )
            self.local_clusters.update(updated)
            log.info("control-plane endpoint chosen", extra={"cluster": name, "endpoint": str(endpoint)})
            self._event(updated, "Normal", "EndpointChosen", f"control-plane endpoint {endpoint}")
            return 0.0
        if plan.provisioned:
            updated = await self.api.apply_status(
                {
                    "apiVersion": local_provider.API_VERSION,
                    "kind": "LocalCluster",
                    "metadata": {"name": name, "namespace": namespace},
                    "status": {"initialization": {"provisioned": True}},
                },
                FIELD_MANAGER,
            )
            self.local_clusters.update(updated)
        return None

    # -- LocalMachine -----------------------------------------------------------------------

    def _objects_of(self, local_machine: Obj) -> tuple[Obj | None, Obj | None, Obj | None]:
        namespace = local_machine["metadata"]["namespace"]
        owner = _owner_name(local_machine, "Machine")
        machine = self.machines.get(namespace, owner) if owner else None
        cluster_name = ((machine or {}).get("spec") or {}).get("clusterName") or (
            local_machine["metadata"].get("labels") or {}
        ).get(local_infra.CLUSTER_NAME_LABEL)
        cluster = self.clusters.get(namespace, str(cluster_name)) if cluster_name else None
        infra = ((cluster or {}).get("spec") or {}).get("infrastructureRef") or {}
        local_cluster = self.local_clusters.get(namespace, str(infra["name"])) if infra.get("name") else None
        return machine, cluster, local_cluster

    async def reconcile_machine(self, namespace: str, name: str) -> float | None:
        local_machine = self.local_machines.get(namespace, name)
        if local_machine is None:
            return None
        machine, cluster, local_cluster = self._objects_of(local_machine)
        plan = local_infra.plan_local_machine(
            local_machine, machine, cluster, local_cluster, booted=self.host.booted(name)
        )
        if isinstance(plan, local_infra.Wait):
            return None
        if isinstance(plan, local_infra.AddFinalizer):
            finalizers = [*(local_machine["metadata"].get("finalizers") or []), local_infra.FINALIZER]
            updated = await self.api.merge_patch(
                ResourceRef.of(local_machine), {"metadata": {"finalizers": finalizers}}
            )
            self.local_machines.update(updated)
            return 0.0
        if isinstance(plan, local_infra.Boot):
            return await self._boot(local_machine, plan)
        if isinstance(plan, local_infra.Report):
            await self._report(local_machine, plan)
            return None
        await self._release(local_machine, plan)
        return None

    async def _boot(self, local_machine: Obj, plan: local_infra.Boot) -> float | None:
        namespace = local_machine["metadata"]["namespace"]
        secret = await self.api.get(ResourceRef("v1", "Secret", plan.bootstrap_secret, namespace))
        try:
            value = base64.b64decode((secret.get("data") or {}).get("value", "")).decode()
            data = parse_cloud_config(value)
            log.info("booting machine", extra={"machine": plan.machine, "control_plane": plan.control_plane})
            await self.host.boot(plan, data)
        except (BootstrapDataError, MachineBootError, UnicodeDecodeError) as exc:
            await self._set_condition(local_machine, ConditionStatus.FALSE, "BootFailed", str(exc))
            log.warning("%s", exc, extra={"machine": plan.machine})
            self._event(local_machine, "Warning", "BootFailed", str(exc))
            return None
        log.info("machine booted", extra={"machine": plan.machine})
        kind = "control-plane" if plan.control_plane else "worker"
        self._event(local_machine, "Normal", "Booted", f"{kind} machine booted from {plan.bootstrap_secret}")
        return 0.0

    async def _report(self, local_machine: Obj, plan: local_infra.Report) -> None:
        patch: dict[str, Any] = {"spec": {"providerID": plan.provider_id}}
        updated = await self.api.merge_patch(ResourceRef.of(local_machine), patch)
        self.local_machines.update(updated)
        status = {
            "initialization": {"provisioned": True},
            "addresses": [{"type": kind, "address": address} for kind, address in plan.addresses],
        }
        await self._set_condition(local_machine, ConditionStatus.TRUE, "Booted", "", extra=status)

    async def _release(self, local_machine: Obj, plan: local_infra.Release) -> None:
        # A second pass over the same deletion (another event before the finalizer's removal
        # reached the cache) finds nothing left: no second log line or Event.
        started = time.monotonic()
        if plan.stop and await self.host.stop(plan.machine):
            log.info(
                "machine stopped",
                extra={"machine": plan.machine, "seconds": round(time.monotonic() - started, 3)},
            )
            self._event(
                local_machine, "Normal", "Stopped", "machine stopped: its LocalMachine is being deleted"
            )
        finalizers = [
            f for f in local_machine["metadata"].get("finalizers") or [] if f != local_infra.FINALIZER
        ]
        try:
            await self.api.merge_patch(
                ResourceRef.of(local_machine), {"metadata": {"finalizers": finalizers}}
            )
        except kube.NotFound:
            return

    def _event(
        self, involved: Obj, event_type: Literal["Normal", "Warning"], reason: str, message: str
    ) -> None:
        """Record an Event (repeats counted on one Event), best-effort and off the reconcile's path."""
        task = asyncio.create_task(self.events.record(involved, event_type, reason, message))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _set_condition(
        self,
        local_machine: Obj,
        status: ConditionStatus,
        reason: str,
        message: str,
        *,
        extra: Obj | None = None,
    ) -> None:
        meta = local_machine["metadata"]
        ready = local_infra.ready_conditions(local_machine, status, reason, message, now=self.clock.now())
        updated = await self.api.apply_status(
            {
                "apiVersion": local_provider.API_VERSION,
                "kind": "LocalMachine",
                "metadata": {"name": meta["name"], "namespace": meta["namespace"]},
                "status": {**(extra or {}), "conditions": ready},
            },
            FIELD_MANAGER,
        )
        self.local_machines.update(updated)
