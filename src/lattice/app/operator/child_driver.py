"""The cell's side of the runtime flow: bootstrap a connected child, then pivot it.

When a child's agent connects (reported through :class:`AgentStatusSink`), a driver task takes
the child from ``Provisioning`` through ``Bootstrapping`` (ApplyManifests over the stream) and
``Pivoting`` (export with the ClusterMover, send the files, the agent imports, delete the source) to
``Ready``. Each step is persisted in the child's LatticeCluster status before the next begins,
so a restarted operator resumes from the last persisted step; the driver does not write it: it
hands the step over to the status's owner, the ClusterController, as a
:class:`lattice.domain.pivot_flow.FlowReport` and waits until a reconcile has written it
(``controller.observe_flow``).

Between export and deletion the source Cluster stays paused (either mover unpauses it after
exporting, as clusterctl does); a pivot that is abandoned unpauses it again.

What to do next is decided in the domain (:mod:`lattice.domain.pivot_policy`: the phase and
unpivot dispatch, which steps a resumed pivot runs; :mod:`lattice.domain.pivot_failure`: what a
failed attempt costs); this driver reads the status, calls those functions, and acts. The agent's
status and a failed bootstrap are handed to the ClusterController as observations too
(:mod:`lattice.domain.cluster_observations`); nothing here writes a LatticeCluster's status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from lattice.adapters.concurrency import gather_settled
from lattice.app import faults
from lattice.app.operator.controller import ClusterController
from lattice.domain import (
    agent,
    capi,
    capi_reports,
    cluster_observations,
    models,
    pivot_export,
    pivot_failure,
    pivot_flow,
    pivot_policy,
)
from lattice.domain.models import Phase, PivotStep
from lattice.domain.pivot_failure import Fault, Response
from lattice.domain.pivot_flow import FlowReport, FlowStep
from lattice.domain.pivot_policy import Action, UnpivotAction
from lattice.ports import kube
from lattice.ports.agent import AgentChannel, AgentNotConnected, CommandTimeout
from lattice.ports.kube import Obj, ResourceRef
from lattice.ports.mover import ClusterMover, MoveError

log = logging.getLogger("lattice.cell")

BOOTSTRAP_TIMEOUT_S = 120.0
PIVOT_TIMEOUT_S = 300.0
RETRY_DELAY_S = 2.0
UNPIVOT_RETRY_S = 5.0
RELEASE_TIMEOUT_S = 30.0


class PivotFailure(RuntimeError):
    pass


class CellCoordinator:
    def __init__(
        self,
        controller: ClusterController,
        channel: AgentChannel,
        mover: ClusterMover,
        *,
        cell_kubeconfig: Path,
        work_dir: Path,
        bootstrap_manifests: Callable[[str], tuple[bytes, ...]],
    ) -> None:
        self.controller = controller
        self.channel = channel
        self.mover = mover
        self.cell_kubeconfig = cell_kubeconfig
        self.work_dir = work_dir
        self.bootstrap_manifests = bootstrap_manifests
        self._drivers: dict[str, asyncio.Task[None]] = {}
        self._warm_kinds: set[tuple[str, str]] = set()
        self.pivot_timings: dict[str, dict[str, float]] = {}

    # The AgentStatusSink port: the hub reports every change of an agent's connection.
    async def record(self, status: agent.AgentStatus) -> None:
        # A fact for the status's owner, the ClusterController, which writes it (status.agent).
        self.controller.observe_agent(status.cluster_name, cluster_observations.agent_status(status))
        if status.deleting_reason is not None:
            await self._delete_requested(status.cluster_name, status.deleting_reason)
        if status.connection is agent.Connection.CONNECTED:
            self.kick(status.cluster_name)

    async def _delete_requested(self, name: str, reason: str) -> None:
        """The child's own LatticeCluster is being deleted: delete this cell's copy too, which
        starts the unpivot (a cell's copy of a child is deleted the same way from either side)."""
        raw = self.controller.clusters.get(None, name)
        if raw is None or raw["metadata"].get("deletionTimestamp"):
            return
        if not pivot_flow.pivoted_away(pivot_flow.parse_status(raw)):
            return  # not self-managing: the child's LatticeCluster is not the source of truth
        log.info(
            "child deleted on itself; deleting the cell's copy", extra={"cluster": name, "reason": reason}
        )
        try:
            await self.controller.api.delete(ResourceRef(models.API_VERSION, models.KIND, name))
        except kube.NotFound:
            return

    def kick(self, name: str) -> None:
        """Start (or keep) the driver of ``name``."""
        task = self._drivers.get(name)
        if task is None or task.done():
            self._drivers[name] = asyncio.create_task(self._drive(name))

    def resume_all(self) -> None:
        """After a restart: continue every child that was mid-flow and whose agent is here."""
        for obj in self.controller.clusters.items():
            phase = (obj.get("status") or {}).get("phase")
            if phase in (Phase.BOOTSTRAPPING.value, Phase.PIVOTING.value, Phase.DELETING.value):
                self.kick(obj["metadata"]["name"])

    async def close(self) -> None:
        for task in self._drivers.values():
            task.cancel()
        await asyncio.gather(*self._drivers.values(), return_exceptions=True)

    # ------------------------------------------------------------------ status

    async def _report(self, name: str, report: FlowReport) -> bool:
        """Hand the step reached to the status's owner and wait until it is written; False when
        it was not (the step does not apply, or the cluster is gone). Bootstrap steps stop at a
        deletion; pivot and unpivot steps go on, as a deletion waits for the pivot to finish."""
        return await self.controller.observe_flow(name, report)

    # ------------------------------------------------------------------ the flow

    async def _drive(self, name: str) -> None:
        try:
            while True:
                raw = self.controller.clusters.get(None, name)
                if raw is None:
                    return
                status = pivot_flow.parse_status(raw)
                decision = pivot_policy.next_action(
                    status,
                    deleting=bool(raw["metadata"].get("deletionTimestamp")),
                    connected=name in self.channel.connected(),
                )
                action = decision.action
                if action is Action.UNPIVOT:
                    if not await self._unpivot(name, status):
                        return
                elif action is Action.WAIT_FOR_CAPI:
                    # The reconciler is still applying (or retrying a failed apply); bootstrap
                    # and pivot wait for the whole graph while the agent stays connected.
                    await asyncio.sleep(RETRY_DELAY_S)
                elif action is Action.CONNECT:
                    if not await self._report(name, FlowReport(FlowStep.AGENT_CONNECTED)):
                        return
                elif action is Action.BOOTSTRAP:
                    await self._bootstrap(name)
                elif action is Action.PIVOT:
                    await self._pivot(name, raw, status)
                elif action is Action.CANCEL_PIVOT:
                    # The source is unpaused first (an interrupted export may have left it
                    # paused, and Cluster API does not delete a paused Cluster); the owner's
                    # pass that writes the step then starts the deletion.
                    await self._set_paused(models.capi_namespace(name), name, paused=False)
                    self.controller.observe_pivot_wait(name, ())
                    if not await self._report(name, FlowReport(FlowStep.PIVOT_CANCELLED)):
                        return
                    log.info("pivot cancelled: deleted before anything was exported", extra={"cluster": name})
                else:
                    return
        except asyncio.CancelledError:
            raise
        except Exception:  # the driver must never take the operator down
            log.exception("cell driver failed; will resume on the next agent event", extra={"cluster": name})

    async def _bootstrap(self, name: str) -> None:
        manifests = self.bootstrap_manifests(name)
        try:
            reply = await self.channel.send_command(
                name, agent.ApplyManifests(manifests), BOOTSTRAP_TIMEOUT_S
            )
        except (AgentNotConnected, CommandTimeout) as exc:
            log.warning("bootstrap not answered", extra={"cluster": name, "error": str(exc)})
            await asyncio.sleep(RETRY_DELAY_S)
            return
        if not getattr(reply, "success", False):
            error = str(getattr(reply, "error", ""))
            log.warning("bootstrap failed on the agent", extra={"cluster": name, "error": error})
            # A fact for the status's owner, which shows it (and records the Event).
            self.controller.observe_bootstrap(name, error)
            await asyncio.sleep(RETRY_DELAY_S)
            return
        self.controller.observe_bootstrap(name, None)
        await self._report(name, FlowReport(FlowStep.BOOTSTRAP_COMPLETED))

    async def _pivot(self, name: str, raw: Obj, status: models.LatticeClusterStatus) -> None:
        assert status.pivot is not None
        namespace = models.capi_namespace(name)
        attempt_dir = self.work_dir / name / f"attempt-{status.pivot.attempt}"
        timings = self.pivot_timings.setdefault(name, {})
        blockers = (
            tuple(capi_reports.move_blockers(self.controller.observed(name)))
            if status.pivot.step is PivotStep.EXPORTING
            else ()
        )
        plan = pivot_policy.pivot_plan(status.pivot, blockers)
        # Not an attempt: clusterctl's preflight would refuse; wait for CAPI instead, and say on
        # what (the status's owner shows it; logged when it changes).
        if self.controller.observe_pivot_wait(name, plan.wait_for) and plan.wait_for:
            log.info("pivot waits for Cluster API", extra={"cluster": name, "blockers": list(plan.wait_for)})
        if plan.wait_for:
            await asyncio.sleep(RETRY_DELAY_S)
            return
        try:
            if plan.exports:
                started = _clock()
                exported = await self._export(namespace, attempt_dir)
                timings["export"] = _clock() - started
                faults.hit("pivot.exported")
                await self._step(name, PivotStep.TRANSFERRING, len(exported))
                faults.hit("pivot.transferring")
                started = _clock()
                files = [agent.MoveFile(p.name, p.read_bytes()) for p in exported]
                child = pivot_flow.child_copy(
                    raw, pivot_flow.pivot_succeeded(status, self.controller.clock.now())
                )
                files.append(
                    agent.MoveFile(pivot_flow.child_copy_file_name(name), json.dumps(child).encode())
                )
                command = agent.PivotManifests(
                    name, namespace, f"{name}-{status.pivot.attempt}", tuple(files)
                )
                await self._step(name, PivotStep.IMPORTING)
                faults.hit("pivot.importing")
                reply = await self.channel.send_command(name, command, PIVOT_TIMEOUT_S)
                timings["transfer_and_import"] = _clock() - started
                if not isinstance(reply, agent.PivotResult) or not reply.success:
                    raise PivotFailure(getattr(reply, "error", "") or "the agent reported failure")
                faults.hit("pivot.imported")
                await self._step(name, PivotStep.DELETING_SOURCE)
                faults.hit("pivot.deleting_source")
            started = _clock()
            await self._delete_source(namespace, attempt_dir)
            timings["delete"] = _clock() - started
            faults.hit("pivot.deleted")
            await self._report(name, FlowReport(FlowStep.PIVOT_SUCCEEDED))
            shutil.rmtree(self.work_dir / name, ignore_errors=True)
            log.info(
                "pivot complete", extra={"cluster": name, **{k: round(v, 3) for k, v in timings.items()}}
            )
        except (AgentNotConnected, CommandTimeout, PivotFailure, MoveError, kube.KubeError, OSError) as exc:
            await self._pivot_failed(name, namespace, status.pivot.attempt, exc)

    async def _pivot_failed(self, name: str, namespace: str, attempt: int, exc: Exception) -> None:
        """Act on the failure policy (:func:`lattice.domain.pivot_failure.pivot_failure`)."""
        away = isinstance(exc, AgentNotConnected | CommandTimeout)
        policy = pivot_failure.pivot_failure(attempt, Fault.AGENT_AWAY if away else Fault.FAILED)
        if policy.response is Response.WAIT_FOR_AGENT:
            # The stream went away: keep the source paused and resume when the agent is back.
            log.warning(
                "pivot interrupted; waiting for the agent", extra={"cluster": name, "error": str(exc)}
            )
        else:
            error = f"{type(exc).__name__}: {exc}"
            log.warning(
                "pivot attempt failed",
                extra={"cluster": name, "error": error, "response": policy.response.value},
            )
            if policy.unpause:
                await self._set_paused(namespace, name, paused=False)
            await self._report(name, FlowReport(FlowStep.PIVOT_FAILED, error=error))
        await asyncio.sleep(RETRY_DELAY_S)

    # ------------------------------------------------------------------ the unpivot

    async def _unpivot(self, name: str, status: models.LatticeClusterStatus) -> bool:
        """One step of taking a deleted, self-managing child's objects back; False to stop
        driving (wait for the agent to connect)."""
        action = pivot_policy.unpivot_action(status)
        if action is UnpivotAction.REQUEST:
            return await self._report(name, FlowReport(FlowStep.UNPIVOT_REQUESTED))
        if action is UnpivotAction.FETCH:
            return await self._request_objects(name)
        if action is UnpivotAction.DONE:
            return False
        # Imported: tell the child (best effort, bounded), then let the reconciler delete.
        try:
            reply = await self.channel.send_command(name, agent.UnpivotComplete(name), RELEASE_TIMEOUT_S)
            if not getattr(reply, "success", False):
                log.warning(
                    "the child did not let go", extra={"cluster": name, "error": getattr(reply, "error", "")}
                )
        except (AgentNotConnected, CommandTimeout) as exc:
            log.warning(
                "the child did not confirm the unpivot; deleting anyway",
                extra={"cluster": name, "error": str(exc)},
            )
        # Written by the owner, whose same pass starts deleting the objects.
        await self._report(name, FlowReport(FlowStep.UNPIVOT_RELEASED))
        return False

    async def _request_objects(self, name: str) -> bool:
        namespace = models.capi_namespace(name)
        if name not in self.channel.connected():
            await self._unpivot_waiting(name, f"{name}'s agent is not connected to this cell")
            return False
        try:
            raw = self.controller.clusters.get(None, name) or {}
            command = agent.Unpivot(
                name, namespace, cascade=pivot_flow.annotated(raw, pivot_flow.CASCADE_ANNOTATION)
            )
            reply = await self.channel.send_command(name, command, PIVOT_TIMEOUT_S)
        except (AgentNotConnected, CommandTimeout) as exc:
            await self._unpivot_waiting(name, str(exc))
            return False
        if not isinstance(reply, agent.UnpivotExport) or not reply.success:
            await self._unpivot_waiting(name, getattr(reply, "error", "") or "the agent refused")
            await asyncio.sleep(UNPIVOT_RETRY_S)
            return True
        errors = list(agent.unpivot_errors(reply))
        exported = pivot_export.parse_export((f.name, f.content) for f in reply.files) if not errors else []
        errors.extend(e for e in exported if not isinstance(e, pivot_export.ExportedObject))
        if errors:
            await self._unpivot_waiting(
                name, "the agent sent an unusable export: " + "; ".join(map(str, errors))
            )
            await asyncio.sleep(UNPIVOT_RETRY_S)
            return True
        directory = self.work_dir / name / "unpivot"
        try:
            if directory.exists():
                shutil.rmtree(directory)
            directory.mkdir(parents=True)
            for move_file in reply.files:
                (directory / move_file.name).write_bytes(move_file.content)
            if self.mover.lists_kind_by_kind:
                await self.warm_move_kinds()
            await self.mover.import_(self.cell_kubeconfig, directory)
        except (MoveError, OSError) as exc:
            await self._unpivot_waiting(name, f"importing the objects failed: {exc}")
            await asyncio.sleep(UNPIVOT_RETRY_S)
            return True
        await self._await_cached(name)
        await self._report(name, FlowReport(FlowStep.UNPIVOT_IMPORTED, objects=len(reply.files)))
        shutil.rmtree(self.work_dir / name, ignore_errors=True)
        log.info("unpivot: objects imported", extra={"cluster": name, "objects": len(reply.files)})
        return True

    async def _await_cached(self, name: str, within: float = 30.0) -> None:
        """Wait until the reconciler's informers hold the imported Cluster, so that its deletion
        pass never mistakes an empty cache for objects already gone."""
        deadline = time.monotonic() + within
        while time.monotonic() < deadline:
            if any(o.get("kind") == "Cluster" for o in self.controller.observed(name)):
                return
            await asyncio.sleep(0.2)
        raise PivotFailure(f"the imported Cluster of {name} did not appear in the cache within {within} s")

    async def _unpivot_waiting(self, name: str, error: str) -> None:
        log.info("unpivot waits", extra={"cluster": name, "reason": error})
        await self._report(name, FlowReport(FlowStep.UNPIVOT_WAITING, error=error))

    async def _step(self, name: str, step: PivotStep, objects: int | None = None) -> None:
        await self._report(name, FlowReport(FlowStep.PIVOT_STEP, pivot_step=step, objects=objects))

    async def _export(self, namespace: str, directory: Path) -> list[Path]:
        """Export the namespace's Cluster graph; keep the source paused afterwards."""
        name = namespace.removeprefix("capi-")
        if directory.exists():
            shutil.rmtree(directory)
        # clusterctl refuses a Cluster that is already paused: unpause a previous attempt's.
        await self._set_paused(namespace, name, paused=False)
        if self.mover.lists_kind_by_kind:
            await self.warm_move_kinds(namespace)
        files = await self.mover.export(self.cell_kubeconfig, namespace, directory)
        await self._set_paused(namespace, name, paused=True)
        return files

    async def warm_move_kinds(self, namespace: str | None = None) -> int:
        """List every kind ``clusterctl move`` lists, concurrently, so that no export waits for the
        API server to build their watch caches one by one (see :func:`pivot.move_kinds`).

        A watch cache, once built, lasts as long as the API server, so each kind is listed once
        per cell process (at start, and before an export only the kinds not seen yet: CRDs
        installed since). After an API server restart the next export is slower, never wrong.
        Returns how many kinds are warm; failures only cost the warm-up."""
        api = self.controller.api
        try:
            crds = await api.list(
                "apiextensions.k8s.io/v1",
                "CustomResourceDefinition",
                label_selector=pivot_export.CLUSTERCTL_LABEL,
            )
        except kube.KubeError as exc:
            log.debug("cannot list CRDs to warm up: %s", exc)
            return 0

        async def warm(api_version: str, kind: str) -> bool:
            try:
                await api.list(api_version, kind, namespace=namespace)
            except kube.KubeError as exc:
                log.debug("warm-up list of %s failed: %s", kind, exc)
                return False
            return True

        kinds = [kind for kind in pivot_export.move_kinds(crds.items) if kind not in self._warm_kinds]
        answered = await asyncio.gather(*(warm(v, k) for v, k in kinds))
        self._warm_kinds.update(kind for kind, ok in zip(kinds, answered, strict=True) if ok)
        return len(self._warm_kinds)

    async def _set_paused(self, namespace: str, name: str, *, paused: bool) -> None:
        ref = ResourceRef(f"{capi.CLUSTER_API}/v1beta2", "Cluster", name, namespace)
        try:
            await self.controller.api.merge_patch(ref, {"spec": {"paused": True if paused else None}})
        except kube.NotFound:
            return

    async def _delete_source(self, namespace: str, directory: Path) -> None:
        """Delete what was exported, marked as a move so providers keep the infrastructure."""
        files = (
            [(p.name, p.read_bytes()) for p in sorted(directory.glob("*.yaml"))] if directory.exists() else []
        )
        exported = pivot_export.parse_export(files)
        ids = [o.id for o in exported if isinstance(o, pivot_export.ExportedObject)]
        if not ids:  # resumed after a restart that lost the export: delete by label
            ids = await self._labelled_ids(namespace)
        api = self.controller.api

        async def delete(oid: pivot_export.ObjectId) -> None:
            # clusterctl's order (deleteSourceObject): annotate, delete, then drop the
            # finalizers. Dropping them first lets a running controller add its own back before
            # the delete, and the object stays behind; once deleting, none can be added.
            ref = ResourceRef(oid.api_version, oid.kind, oid.name, oid.namespace)
            try:
                await api.merge_patch(ref, {"metadata": {"annotations": {pivot_export.DELETE_FOR_MOVE: ""}}})
                await api.delete(ref)
                await api.merge_patch(ref, {"metadata": {"finalizers": None}})
            except kube.NotFound:
                return

        for wave in pivot_export.deletion_waves(ids):  # dependants first; one wave at a time
            _, error = await gather_settled(delete(oid) for oid in wave)
            if error is not None:
                raise error
        await api.delete(ResourceRef("v1", "Namespace", namespace))

    async def _labelled_ids(self, namespace: str) -> list[pivot_export.ObjectId]:
        name = namespace.removeprefix("capi-")
        ids: list[pivot_export.ObjectId] = []
        for informer in self.controller.capi:
            for obj in informer.items():
                meta = obj["metadata"]
                if (
                    meta.get("namespace") == namespace
                    and meta.get("labels", {}).get(capi.LABEL_CLUSTER_NAME) == name
                ):
                    ids.append(pivot_export.object_id(obj))
        return ids


def _clock() -> float:
    return time.perf_counter()
