"""The LatticeCluster controller: observe (informer caches) → plan (pure) → apply → status.

No exception escapes a reconcile: a failure is written into the LatticeCluster's conditions, an
Event is recorded, and the key is retried with jittered exponential backoff.

It is the only writer of a LatticeCluster's status. What other parts of the process learn (the
cell's agent hub, the cell's pivot driver) reaches it as observations
(:mod:`lattice.domain.cluster_observations`) that its pure reconcile merges; the driver waits
for each step of the flow to be written (:meth:`ClusterController.observe_flow`). One key is
reconciled by one worker at a time (the work queue's rule), so no lock is needed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

from attrs import frozen

from lattice.adapters.concurrency import gather_settled
from lattice.app.operator.events import EventRecorder
from lattice.app.operator.informer import Informer
from lattice.app.operator.metrics import OperatorMetrics
from lattice.app.operator.workqueue import WorkQueue
from lattice.domain import capi, cluster_observations, cluster_reconcile, models, pivot_flow
from lattice.ports import kube
from lattice.ports.agent import AgentRevocations
from lattice.ports.clock import Clock
from lattice.ports.kube import KubeApi, Obj, ResourceRef

log = logging.getLogger("lattice.operator")

# Every kind the compiler emits, per API version; kinds the server does not serve are skipped.
CAPI_KINDS: tuple[tuple[str, str], ...] = (
    (f"{capi.CLUSTER_API}/v1beta2", "Cluster"),
    (f"{capi.CLUSTER_API}/v1beta2", "MachineDeployment"),
    (f"{capi.CONTROLPLANE_API}/v1beta2", "KubeadmControlPlane"),
    (f"{capi.BOOTSTRAP_API}/v1beta2", "KubeadmConfigTemplate"),
    *(
        (f"{capi.infra_group(provider)}/{version}", f"{capi.INFRA_KIND_PREFIX[provider]}{suffix}")
        for provider, version in capi.INFRA_VERSIONS.items()
        for suffix in ("Cluster", "MachineTemplate")
    ),
)
# What the controllers create per machine and report failures on (lattice.domain.capi_reports);
# read only, never applied or deleted by the operator.
REPORT_KINDS: tuple[tuple[str, str], ...] = (
    (f"{capi.CLUSTER_API}/v1beta2", "Machine"),
    (f"{capi.CLUSTER_API}/v1beta2", "MachineSet"),
    (f"{capi.BOOTSTRAP_API}/v1beta2", "KubeadmConfig"),
    (f"{capi.LOCAL_INFRA_API}/v1alpha1", "LocalMachine"),
)
MANAGED_SELECTOR = f"{capi.LABEL_MANAGED_BY}=lattice"
EVENT_NAMESPACE = "default"
MAX_PENDING_ECHOES = 4
"""Own writes per object whose echoes are awaited (a reconcile makes at most two)."""


@frozen
class ControllerConfig:
    workers: int = 4
    resync_s: float = 300.0
    identity: str = "lattice-operator"


class ClusterController:
    def __init__(
        self,
        api: KubeApi,
        context: cluster_reconcile.OperatorContext,
        clock: Clock,
        *,
        random: Callable[[], float],
        metrics: OperatorMetrics | None = None,
        config: ControllerConfig | None = None,
        revocations: AgentRevocations | None = None,
        before_child_apply: Callable[[str], Awaitable[None]] | None = None,
        on_unpivot: Callable[[str], None] | None = None,
    ) -> None:
        self.api = api
        self.revocations = revocations
        """A cell's: a deleted child's agent certificates are revoked before its finalizer goes."""
        self.context = context
        self.clock = clock
        self.metrics = metrics or OperatorMetrics()
        self.config = config or ControllerConfig()
        self.queue: WorkQueue[str] = WorkQueue(random=random)
        self.clusters = Informer(api, models.API_VERSION, models.KIND, handler=self._on_cluster)
        self.capi: list[Informer] = []
        self.reports: list[Informer] = []
        self.events = EventRecorder(
            api,
            clock,
            component=cluster_reconcile.FIELD_MANAGER,
            instance=self.config.identity,
            reporting_component="lattice.dev/operator",
            namespace=EVENT_NAMESPACE,
        )
        # (apiVersion, kind, namespace, name) → resourceVersions of this controller's writes to
        # it whose watch events have not come back yet, oldest first: those events are not
        # changes to reconcile. A reconcile writes a new cluster twice (its finalizer, then its
        # status), and under load both echoes arrive after the second write.
        self._own_writes: dict[tuple[str, str, str, str], list[str]] = {}
        self.echoes_skipped = 0
        # name → what other parts of the process learnt of the cluster (its agent), merged into
        # the status by the reconcile: this controller is the only writer of those parts.
        self._observations: dict[str, cluster_observations.Observations] = {}
        # name → the flow step the cell's driver waits to see written, and its waiter.
        self._flows: dict[str, tuple[pivot_flow.FlowReport, asyncio.Future[bool]]] = {}
        self._active = 0
        self._background: set[asyncio.Task[None]] = set()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = asyncio.Event()
        self.reconciled: dict[str, float] = {}  # name → monotonic time of last successful apply
        self.before_child_apply = before_child_apply
        """A cell's: issue a child's bootstrap token before its CAPI objects exist."""
        self.on_unpivot = on_unpivot
        """A cell's: a deleted, self-managing child's objects must be taken back first."""

    # ------------------------------------------------------------------ wiring

    async def start_informers(self) -> list[asyncio.Task[None]]:
        served: list[Informer] = []
        for api_version, kind in CAPI_KINDS:
            if await self._serves(api_version, kind):
                served.append(
                    Informer(
                        self.api,
                        api_version,
                        kind,
                        label_selector=MANAGED_SELECTOR,
                        handler=self._on_capi,
                    )
                )
        self.capi = served
        self.reports = [
            Informer(self.api, api_version, kind, label_selector=MANAGED_SELECTOR, handler=self._on_capi)
            for api_version, kind in REPORT_KINDS
            if await self._serves(api_version, kind)
        ]
        return [asyncio.create_task(i.run()) for i in (self.clusters, *self.capi, *self.reports)]

    async def _serves(self, api_version: str, kind: str) -> bool:
        resource = getattr(self.api, "resource", None)
        if resource is None:
            return True
        backoff = 0.2
        while True:
            try:
                await resource(api_version, kind)
            except kube.NotFound:
                return False
            except kube.KubeError as exc:
                log.warning("discovery failed; retrying", extra={"kind": kind, "error": str(exc)})
                await asyncio.sleep(backoff)
                backoff = min(5.0, backoff * 2)
            else:
                return True

    async def wait_synced(self) -> None:
        await asyncio.gather(*(i.synced.wait() for i in (self.clusters, *self.capi, *self.reports)))

    @property
    def synced(self) -> bool:
        return all(i.synced.is_set() for i in (self.clusters, *self.capi))

    @staticmethod
    def _write_key(obj: Obj, api_version: str, kind: str) -> tuple[str, str, str, str]:
        meta = obj.get("metadata", {})
        return (api_version, kind, meta.get("namespace") or "", meta.get("name", ""))

    def _wrote(self, stored: Obj, api_version: str, kind: str) -> None:
        rv = stored.get("metadata", {}).get("resourceVersion", "")
        pending = self._own_writes.setdefault(self._write_key(stored, api_version, kind), [])
        if rv not in pending:  # a write that changed nothing returns the same version
            pending.append(rv)
            del pending[:-MAX_PENDING_ECHOES]

    def _echo(self, obj: Obj, api_version: str, kind: str) -> bool:
        """Whether ``obj`` is this controller's own last write coming back through the watch."""
        key = self._write_key(obj, api_version, kind)
        rv = obj.get("metadata", {}).get("resourceVersion")
        pending = self._own_writes.get(key, [])
        if not rv or rv not in pending:
            return False
        # Watch events come in order: the echoes of earlier writes will not come any more.
        del pending[: pending.index(rv) + 1]
        if not pending:
            del self._own_writes[key]
        self.echoes_skipped += 1
        return True

    def _on_cluster(self, event: str, obj: Obj) -> None:
        if event == "DELETED":
            self._own_writes.pop(self._write_key(obj, models.API_VERSION, models.KIND), None)
            self._observations.pop(obj["metadata"]["name"], None)
            self._settle_flow(obj["metadata"]["name"], None, written=False)
        elif self._echo(obj, models.API_VERSION, models.KIND):
            return
        self.queue.add(obj["metadata"]["name"])
        self.metrics.queue_depth.set(len(self.queue))

    def _on_capi(self, event: str, obj: Obj) -> None:
        api_version, kind = obj.get("apiVersion", ""), obj.get("kind", "")
        if event == "DELETED":
            self._own_writes.pop(self._write_key(obj, api_version, kind), None)
        elif self._echo(obj, api_version, kind):
            return
        owner = obj.get("metadata", {}).get("labels", {}).get(capi.LABEL_LATTICE_CLUSTER)
        if owner:
            self.queue.add(owner)
            self.metrics.queue_depth.set(len(self.queue))

    async def run_workers(self) -> None:
        """Process keys until :meth:`stop`; then let in-flight reconciles finish."""
        workers = [asyncio.create_task(self._worker()) for _ in range(self.config.workers)]
        resync = asyncio.create_task(self._resync())
        try:
            await self._stopping.wait()
            # Graceful: no new keys start; in-flight reconciles finish their writes. The caller
            # bounds this with its grace period and cancels (abandons) what is still running.
            await self._idle.wait()
        finally:
            resync.cancel()
            for worker in workers:
                worker.cancel()
            await asyncio.gather(resync, *workers, return_exceptions=True)

    def stop(self) -> None:
        self._stopping.set()
        self.queue.shutdown()

    async def _resync(self) -> None:
        while True:
            await asyncio.sleep(self.config.resync_s)
            for obj in self.clusters.items():
                self.queue.add(obj["metadata"]["name"])

    async def _worker(self) -> None:
        while True:
            name = await self.queue.get()
            if self._stopping.is_set():
                self.queue.done(name)
                return
            self._active += 1
            self._idle.clear()
            try:
                await self.reconcile_key(name)
            finally:
                self._active -= 1
                if not self._active:
                    self._idle.set()
                self.queue.done(name)
                self.metrics.queue_depth.set(len(self.queue))

    def observe_agent(self, name: str, agent: models.AgentStatus) -> bool:
        """The cell's agent hub saw cluster ``name``'s agent so: kept for the reconcile, which
        writes it into ``status.agent`` (and derives ``AgentCertificate``); queues ``name`` when
        that changes what is known. Returns whether it did."""
        return self._observe(name, cluster_observations.with_agent(self.observations(name), agent))

    def observe_bootstrap(self, name: str, error: str | None) -> bool:
        """The cell sent cluster ``name``'s agent the bootstrap payload: ``error`` says why it was
        not applied (None: it was). The reconcile shows a failure while the cluster is
        ``Bootstrapping`` (message, ``Bootstrapped=False``, a Warning Event when it is new)."""
        return self._observe(name, cluster_observations.with_bootstrap(self.observations(name), error))

    def observe_pivot_wait(self, name: str, blockers: tuple[str, ...]) -> bool:
        """The cell's driver waits for Cluster API before exporting cluster ``name`` for its pivot
        (``blockers``: clusterctl's preflight would refuse; ``()``: it no longer waits). The
        reconcile shows it while the pivot is about to export (message, ``Pivoted=False``
        ``WaitingForClusterAPI``, an Event when the wait starts). False when nothing changed."""
        return self._observe(name, cluster_observations.with_pivot_wait(self.observations(name), blockers))

    async def observe_flow(self, name: str, report: pivot_flow.FlowReport) -> bool:
        """The cell's driver reached ``report``'s step of cluster ``name``'s runtime flow: queue
        ``name`` and return once a reconcile has written a status with the step applied (True),
        or decided it does not apply (rejected, or the cluster is being deleted and the step stops
        at a deletion) or the cluster is gone (False). The driver starts the next step only then,
        since the flow resumes from the persisted step after a restart."""
        if self.clusters.get(None, name) is None:
            return False
        self._settle_flow(name, None, written=False)  # an abandoned wait of a cancelled driver
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self._flows[name] = (report, future)
        self._observe(name, cluster_observations.with_flow(self.observations(name), report))
        try:
            return await future
        finally:
            # Cancelled while waiting: withdraw the step if no reconcile has taken it yet.
            self._settle_flow(name, report, written=False)

    def _settle_flow(self, name: str, report: pivot_flow.FlowReport | None, *, written: bool) -> None:
        """Resolve the pending step of ``name`` (``report``, None: whichever) and withdraw it
        from the observations: it is applied once."""
        pending = self._flows.get(name)
        if pending is None or (report is not None and pending[0] is not report):
            return
        del self._flows[name]
        current = self._observations.get(name)
        if current is not None and current.flow is pending[0]:
            self._observations[name] = cluster_observations.with_flow(current, None) or current
        if not pending[1].done():
            pending[1].set_result(written)

    def _flow_decided(self, name: str, plan: cluster_reconcile.Plan, *, written: bool) -> None:
        if plan.flow is None:
            return
        if plan.flow.rejected is not None:
            log.info("step not applicable", extra={"cluster": name, "reason": plan.flow.rejected})
        self._settle_flow(name, plan.flow.report, written=written and plan.flow.rejected is None)

    def _observe(self, name: str, updated: cluster_observations.Observations | None) -> bool:
        """Keep what changed (None: nothing did) and queue ``name`` for the reconcile."""
        if updated is None:
            return False
        self._observations[name] = updated
        self.queue.add(name)
        self.metrics.queue_depth.set(len(self.queue))
        return True

    def observations(self, name: str) -> cluster_observations.Observations:
        return self._observations.get(name, cluster_observations.NOTHING)

    # ------------------------------------------------------------------ reconcile

    async def reconcile_key(self, name: str) -> None:
        started = time.perf_counter()
        result = "success"
        try:
            requeue = await self._reconcile(name)
        except Exception as exc:
            result = "error"
            self.metrics.errors.labels(reason=type(exc).__name__).inc()
            delay = self.queue.add_rate_limited(name)
            log.warning(
                "reconcile failed; will retry",
                extra={"cluster": name, "error": str(exc), "retry_in_s": round(delay, 3)},
                exc_info=not isinstance(exc, kube.KubeError),
            )
        else:
            self.queue.forget(name)
            if requeue is not None:
                self.queue.add_after(name, requeue)
        finally:
            self.metrics.reconciles.labels(result=result).inc()
            self.metrics.duration.observe(time.perf_counter() - started)

    def _capi_objects(self, name: str) -> list[Obj] | None:
        if not all(i.synced.is_set() for i in self.capi):
            return None
        namespace = models.capi_namespace(name)
        out: list[Obj] = []
        for informer in self.capi:
            for obj in informer.in_namespace(namespace):
                if obj["metadata"].get("labels", {}).get(capi.LABEL_LATTICE_CLUSTER) == name:
                    out.append(obj)
        return out

    def _reports(self, name: str) -> list[Obj]:
        namespace = models.capi_namespace(name)
        return [
            obj
            for informer in self.reports
            for obj in informer.in_namespace(namespace)
            if obj["metadata"].get("labels", {}).get(capi.LABEL_LATTICE_CLUSTER) == name
        ]

    def observed(self, name: str) -> list[Obj]:
        """What the informers hold of cluster ``name``'s CAPI objects and their machines."""
        return [*(self._capi_objects(name) or []), *self._reports(name)]

    def _plan(self, raw: Obj, name: str) -> cluster_reconcile.Plan:
        return cluster_reconcile.plan_cluster(
            raw,
            self._capi_objects(name),
            self.context,
            self.clock.now(),
            self._reports(name),
            self.observations(name),
        )

    async def _reconcile(self, name: str) -> float | None:
        raw = self.clusters.get(None, name)
        if raw is None:
            self._settle_flow(name, None, written=False)
            return None
        plan = self._plan(raw, name)
        if plan.ignored:
            self._settle_flow(name, None, written=False)
            return None
        if plan.finalizers is not None:
            if plan.requeue_after != 0.0:  # the last pass of a deletion: what goes with it first
                if plan.revoke_agent and self.revocations is not None:
                    await self.revocations.revoke(name, self.clock.now())
                for key in plan.delete:
                    with contextlib.suppress(kube.NotFound):
                        await self.api.delete(key)
            raw = await self._set_finalizers(raw, plan.finalizers)
            if plan.requeue_after != 0.0:  # finalizer removed: deletion completes
                self._settle_flow(name, None, written=False)
                for event in plan.events:
                    self._event_soon(raw, event)
                return plan.requeue_after
            # Finalizer in place: carry on in this same pass instead of a queue round trip.
            plan = self._plan(raw, name)
        if (plan.unpivot or plan.cancel_pivot) and self.on_unpivot is not None:
            self.on_unpivot(name)  # wakes the cell's driver of ``name``
        if not plan.writes and not plan.events:
            self._flow_decided(name, plan, written=True)  # the step changed nothing, or was rejected
            return plan.requeue_after
        log.info(
            "reconciling",
            extra={
                "cluster": name,
                "apply": len(plan.apply),
                "applying": sorted(f"{o['kind']}/{o['metadata']['name']}" for o in plan.apply)[:10],
                "delete": len(plan.delete),
                "status": plan.status is not None,
                "phase": (plan.status or raw.get("status") or {}).get("phase"),
            },
        )
        try:
            cell_ref = (raw.get("spec") or {}).get("cellRef")
            is_child = cell_ref is not None and cell_ref == self.context.self_name
            hook = self.before_child_apply if plan.apply and is_child else None
            await self._apply_all(plan.apply, before_rest=None if hook is None else (lambda: hook(name)))
            for key in plan.delete:
                await self.api.delete(key)
        except kube.KubeError as exc:
            error = f"{type(exc).__name__}: {exc}"
            status = cluster_reconcile.status_after_failure(raw, plan, error, self.clock.now())
            self._flow_decided(name, plan, written=await self._write_status(raw, status))
            self._event_soon(raw, cluster_reconcile.EventSpec("Warning", "ApplyFailed", error))
            raise
        written = plan.status is None or await self._write_status(raw, plan.status, own=True)
        self._flow_decided(name, plan, written=written)
        for event in plan.events:
            self._event_soon(raw, event)
        if plan.apply:
            self.reconciled[name] = time.monotonic()
        return plan.requeue_after

    async def _set_finalizers(self, raw: Obj, finalizers: tuple[str, ...]) -> Obj:
        ref = ResourceRef(models.API_VERSION, models.KIND, raw["metadata"]["name"])
        patch = {
            "metadata": {
                "finalizers": list(finalizers),
                "resourceVersion": raw["metadata"]["resourceVersion"],
            }
        }
        updated = await self.api.merge_patch(ref, patch)
        self.clusters.update(updated)
        self._wrote(updated, models.API_VERSION, models.KIND)
        return updated

    async def _apply_all(
        self, objects: tuple[Obj, ...], before_rest: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        """Namespaces first, then everything else concurrently (server-side apply is order-free)."""
        namespaces = [o for o in objects if o["kind"] == "Namespace"]
        for obj in namespaces:
            self._remember(await self.api.apply(obj, cluster_reconcile.FIELD_MANAGER))
        if before_rest is not None:
            await before_rest()
        rest = [o for o in objects if o["kind"] != "Namespace"]
        stored, error = await gather_settled(self.api.apply(o, cluster_reconcile.FIELD_MANAGER) for o in rest)
        for obj in stored:
            self._remember(obj)
        if error is not None:
            raise error

    def _event_soon(self, raw: Obj, event: cluster_reconcile.EventSpec) -> None:
        """Events are best-effort and off the reconcile's critical path."""
        task = asyncio.create_task(self._event(raw, event))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _remember(self, stored: Obj) -> None:
        for informer in self.capi:
            if (informer.api_version, informer.kind) == (stored.get("apiVersion"), stored.get("kind")):
                informer.update(stored)
                self._wrote(stored, informer.api_version, informer.kind)

    async def _write_status(self, raw: Obj, status: Obj, *, own: bool = False) -> bool:
        """Write ``status``; False when the cluster is gone. ``own``: the pass's planned status,
        whose echo is not reconciled (a failure's is: the next pass decides again)."""
        body = {
            "apiVersion": models.API_VERSION,
            "kind": models.KIND,
            "metadata": {"name": raw["metadata"]["name"]},
            "status": status,
        }
        try:
            stored = await self.api.apply_status(body, cluster_reconcile.FIELD_MANAGER)
        except kube.NotFound:
            return False
        self.clusters.update(stored)
        if own:
            self._wrote(stored, models.API_VERSION, models.KIND)
        return True

    async def _event(self, raw: Obj, event: cluster_reconcile.EventSpec) -> None:
        involved = {**raw, "apiVersion": models.API_VERSION, "kind": models.KIND}
        await self.events.record(involved, event.type, event.reason, event.message)
