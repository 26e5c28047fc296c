"""The LatticeService controller: this cluster's LatticeServices -> announcements, resolution,
generated objects, status.

One pass (:meth:`ServiceController.reconcile`) handles every LatticeService of the cluster, because
the plan is a function of all of them (spec 003, section 5):

1. list and validate; invalid services get ``status.phase: Failed`` with every error;
2. announce what changed (by ``resourceVersion``) and the deletion of what disappeared (a send
   that fails is retried next pass; the full sync after every reconnect covers it as well);
3. resolve every Unknown dependency through the coordinator (cache, parent, 5 s timeout);
4. apply the plan (server-side apply) and prune the discovery objects this controller owns
   (label ``app.kubernetes.io/managed-by: lattice``) that the plan no longer contains;
5. write ``status`` (``Ready``, or ``Pending`` naming unresolved dependencies).

:meth:`ServiceController.run` repeats the pass when a LatticeService changes (an informer), when
the parent pushes a change (:meth:`on_cache_changes`, the ``on_changes`` hook of
:class:`~lattice.app.discovery.stream.AgentDiscovery`) and every ``resync_s`` seconds. Nothing
raises out of ``run``: a failed pass is logged and retried.

Not done: per-service requeue (every change re-plans the cluster), conditions beyond phase and
message, a kind that is not served (no Istio/Cilium/Gateway API/external-dns CRDs) is reported as a
pass error and skipped, not waited for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from attrs import frozen

from lattice.app.discovery.coordinator import DiscoveryCoordinator
from lattice.app.operator.informer import Informer
from lattice.domain import lattice_service, models
from lattice.domain.discovery import compilers
from lattice.domain.discovery.cache import CacheChanges
from lattice.domain.discovery.graph import ServiceGraph
from lattice.domain.discovery.messages import ServiceKey
from lattice.domain.discovery.naming import ClusterContext
from lattice.domain.discovery.plan import DependencyState, ServicePlan, plan_service_resources
from lattice.ports import kube
from lattice.ports.kube import KubeApi, Obj, ResourceRef

log = logging.getLogger(__name__)

FIELD_MANAGER = "lattice-services"
MANAGED_SELECTOR = "app.kubernetes.io/managed-by=lattice"
GENERATED_KINDS: tuple[tuple[str, str], ...] = (
    (compilers.ISTIO_NETWORKING, "ServiceEntry"),
    (compilers.ISTIO_SECURITY, "AuthorizationPolicy"),
    (compilers.CILIUM, "CiliumNetworkPolicy"),
    (compilers.EXTERNAL_DNS, "DNSEndpoint"),
    (compilers.GATEWAY_API, "Gateway"),
    (compilers.GATEWAY_API, "HTTPRoute"),
)


@frozen
class PassReport:
    valid: int
    invalid: int
    applied: int
    pruned: int
    errors: tuple[str, ...]
    plan: ServicePlan


class ServiceController:
    def __init__(
        self,
        api: KubeApi,
        coordinator: DiscoveryCoordinator,
        context: ClusterContext,
        *,
        field_manager: str = FIELD_MANAGER,
        resync_s: float = 60.0,
    ) -> None:
        self.api = api
        self.coordinator = coordinator
        self.context = context
        self._field_manager = field_manager
        self._resync = resync_s
        self._announced: dict[ServiceKey, int] = {}
        self._local: list[lattice_service.ValidService] = []
        self._wake = asyncio.Event()
        self.passes = 0
        self.last: PassReport | None = None

    # ------------------------------------------------------------------ hooks

    async def local_services(self) -> list[lattice_service.ValidService]:
        """The valid services of the last pass (the agent's full sync after a reconnect)."""
        return list(self._local)

    def requeue(self) -> None:
        self._wake.set()

    async def on_cache_changes(self, changes: CacheChanges) -> None:
        if changes.updated or changes.removed:
            self.requeue()

    # ------------------------------------------------------------------ loop

    async def run(self, stop: asyncio.Event) -> None:
        informer = Informer(
            self.api, models.API_VERSION, lattice_service.KIND, handler=lambda _t, _o: self.requeue()
        )
        watcher = asyncio.create_task(informer.run(), name="latticeservice-informer")
        try:
            while not stop.is_set():
                self._wake.clear()
                try:
                    await self.reconcile()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    log.exception("LatticeService pass failed; retrying")
                    self._wake.set()
                    await asyncio.sleep(0.5)
                await _first(stop, self._wake, self._resync)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    # ------------------------------------------------------------------ one pass

    async def reconcile(self) -> PassReport:
        listed = await self.api.list(models.API_VERSION, lattice_service.KIND)
        valid: list[lattice_service.ValidService] = []
        invalid: list[tuple[Obj, list[str]]] = []
        for doc in listed.items:
            doc.setdefault("apiVersion", models.API_VERSION)
            doc.setdefault("kind", lattice_service.KIND)
            parsed = lattice_service.service_from_dict(doc)
            result = (
                lattice_service.validate_service(parsed)
                if isinstance(parsed, lattice_service.LatticeService)
                else parsed
            )
            if isinstance(result, lattice_service.ValidService):
                valid.append(result)
            else:
                invalid.append((doc, [str(e) for e in result]))
        self._local = valid
        await self._announce(valid)
        await self.coordinator.resolve_all(valid)
        plan = plan_service_resources(valid, self.coordinator.cache.snapshot(), self.context)
        errors: list[str] = []
        applied = await self._apply(plan.objects, errors)
        pruned = await self._prune(plan.objects, errors)
        docs = {(d["metadata"].get("namespace", ""), d["metadata"]["name"]): d for d in listed.items}
        for service in valid:
            await self._status(docs[(service.namespace, service.name)], *_summary(plan, service), errors)
        for doc, problems in invalid:
            await self._status(
                doc, lattice_service.ServicePhase.FAILED, "invalid: " + "; ".join(problems), errors
            )
        report = PassReport(len(valid), len(invalid), applied, pruned, tuple(errors), plan)
        self.passes += 1
        self.last = report
        if errors:
            log.warning("LatticeService pass finished with %d errors: %s", len(errors), errors)
        return report

    async def _announce(self, valid: Sequence[lattice_service.ValidService]) -> None:
        winners = {
            (n.environment, n.name): n.service
            for n in ServiceGraph.build(valid).local()
            if n.service is not None
        }
        for key, service in sorted(winners.items()):
            if self._announced.get(key) != service.version and await self.coordinator.announce_service(
                service
            ):
                self._announced[key] = service.version
        for key in sorted(set(self._announced) - set(winners)):
            if await self.coordinator.announce_deletion(*key):
                del self._announced[key]

    async def _apply(self, objects: Sequence[Obj], errors: list[str]) -> int:
        count = 0
        for obj in objects:
            try:
                await self.api.apply(obj, self._field_manager)
                count += 1
            except kube.KubeError as exc:
                errors.append(f"apply {ResourceRef.of(obj)}: {exc}")
        return count

    async def _prune(self, objects: Sequence[Obj], errors: list[str]) -> int:
        wanted = {ResourceRef.of(o) for o in objects}
        count = 0
        for api_version, kind in GENERATED_KINDS:
            try:
                listed = await self.api.list(api_version, kind, label_selector=MANAGED_SELECTOR)
            except kube.NotFound:
                continue  # the kind is not served here: nothing of it to prune
            except kube.KubeError as exc:
                errors.append(f"list {kind}: {exc}")
                continue
            for item in listed.items:
                item.setdefault("apiVersion", api_version)
                item.setdefault("kind", kind)
                ref = ResourceRef.of(item)
                if ref in wanted:
                    continue
                try:
                    await self.api.delete(ref)
                    count += 1
                except kube.KubeError as exc:
                    errors.append(f"delete {ref}: {exc}")
        return count

    async def _status(
        self, doc: Obj, phase: lattice_service.ServicePhase, message: str, errors: list[str]
    ) -> None:
        meta = doc["metadata"]
        status: dict[str, Any] = {"phase": str(phase), "message": message}
        if phase is not lattice_service.ServicePhase.FAILED and meta.get("generation") is not None:
            status["observedGeneration"] = meta["generation"]
        body: Obj = {
            "apiVersion": models.API_VERSION,
            "kind": lattice_service.KIND,
            "metadata": {"name": meta["name"], "namespace": meta.get("namespace", "default")},
            "status": status,
        }
        try:
            await self.api.apply_status(body, self._field_manager)
        except kube.KubeError as exc:
            errors.append(f"status of {meta.get('namespace')}/{meta['name']}: {exc}")


def _summary(
    plan: ServicePlan, service: lattice_service.ValidService
) -> tuple[lattice_service.ServicePhase, str]:
    pending = [
        f"{d.dependency}: {d.state}"
        for d in plan.for_caller(service.namespace, service.name)
        if d.state not in (DependencyState.LOCAL, DependencyState.REMOTE)
    ]
    if pending:
        return lattice_service.ServicePhase.PENDING, "unresolved dependencies: " + ", ".join(pending)
    return lattice_service.ServicePhase.READY, "all dependencies resolved"


async def _first(stop: asyncio.Event, wake: asyncio.Event, within: float) -> None:
    waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(wake.wait())}
    try:
        await asyncio.wait(waits, timeout=within, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waits:
            task.cancel()
        await asyncio.gather(*waits, return_exceptions=True)
