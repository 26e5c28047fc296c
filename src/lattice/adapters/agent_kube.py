"""The agent's ports on a real cluster: apply manifests, import a pivot, probe health.

``KubePivotImporter`` is the child's half of a pivot: it writes the export's ``*.yaml`` files to
a fresh directory and imports them into its own API server with its ``ClusterMover`` (the native
mover by default, or ``clusterctl move --from-directory``; either skips objects that already
exist, so a retried import does not duplicate anything), then stores
the cluster's own LatticeCluster (sent alongside the export) with its pivoted status, so the
cluster's operator takes over. The status of the Cluster API objects, which the import drops, is
not written: the cluster's own controllers recompute it, as after a ``clusterctl move``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from lattice.adapters import kube_kr8s
from lattice.domain import addons, agent, capi, models, pivot_export, pivot_flow, yaml_text
from lattice.ports import kube
from lattice.ports.agent import ExecutionError
from lattice.ports.kube import KubeApi, Obj, ResourceRef
from lattice.ports.mover import ClusterMover, MoveError

log = logging.getLogger("lattice.agent.kube")

FIELD_MANAGER = "lattice-agent"
PIVOT_FIELD_MANAGER = "lattice-pivot"
ESTABLISHED_TIMEOUT_S = 60.0


def parse_manifests(streams: Sequence[bytes]) -> list[Obj]:
    """Every object of every YAML/JSON stream, in order; lists are flattened."""
    out: list[Obj] = []
    for index, stream in enumerate(streams):
        try:
            text = stream.decode("utf-8")
            # JSON is YAML too; a JSON stream (a cell's CRD list, megabytes) parses far faster so.
            documents = [json.loads(text)] if text.lstrip().startswith("{") else yaml_text.load_all(text)
        except Exception as exc:
            raise ExecutionError(f"manifest stream {index} is not valid YAML: {exc}") from exc
        for doc in documents:
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc:
                raise ExecutionError(f"manifest stream {index} holds a non-object document")
            if doc["kind"].endswith("List") and isinstance(doc.get("items"), list):
                out.extend(doc["items"])
            else:
                out.append(doc)
    return out


class KubeManifestApplier:
    """Applies a bootstrap payload in :func:`lattice.domain.addons.apply_steps` order: Namespaces,
    CRDs, built-in objects, then (once the payload's CRDs are Established) custom resources.
    A failure names the object and carries the apiserver's message."""

    def __init__(self, api: KubeApi, *, established_timeout: float = ESTABLISHED_TIMEOUT_S) -> None:
        self.api = api
        self.established_timeout = established_timeout

    async def apply(self, manifests: tuple[bytes, ...]) -> None:
        clock = asyncio.get_running_loop().time
        started = clock()
        objects = parse_manifests(manifests)
        errors = addons.payload_errors(objects)
        if errors:
            raise ExecutionError("the payload holds objects that cannot be applied: " + "; ".join(errors))
        parsed = clock()
        waited = 0.0
        for step in addons.apply_steps(objects):
            if isinstance(step, addons.AwaitEstablished):
                before = clock()
                await self._await_established(step.crds)
                waited += clock() - before
                continue
            try:
                await self.api.apply(dict(step.obj), FIELD_MANAGER)
            except kube.KubeError as exc:
                raise ExecutionError(f"applying {addons.describe(step.obj)}: {exc}") from exc
        log.info(
            "manifests applied",
            extra={
                "objects": len(objects),
                "parse_s": round(parsed - started, 3),
                "apply_s": round(clock() - parsed - waited, 3),
                "established_wait_s": round(waited, 3),
            },
        )

    async def _await_established(self, names: tuple[str, ...]) -> None:
        try:
            await kube_kr8s.await_established(self.api, names, self.established_timeout)
        except TimeoutError as exc:
            raise ExecutionError(str(exc)) from exc


class KubePivotImporter:
    def __init__(self, api: KubeApi, mover: ClusterMover, kubeconfig: Path) -> None:
        self.api = api
        self.mover = mover
        self.kubeconfig = kubeconfig

    async def import_move(self, command: agent.PivotManifests) -> None:
        own_name = pivot_flow.child_copy_file_name(command.cluster_name)
        move_files = [(f.name, f.content) for f in command.files if f.name.endswith(".yaml")]
        own = [f for f in command.files if f.name == own_name]
        exported = pivot_export.parse_export(move_files)
        objects = [o for o in exported if isinstance(o, pivot_export.ExportedObject)]
        if len(objects) != len(exported):
            raise ExecutionError(
                "; ".join(str(e) for e in exported if not isinstance(e, pivot_export.ExportedObject))
            )
        directory = Path(tempfile.mkdtemp(prefix=f"lattice-pivot-{command.cluster_name}-"))
        try:
            for name, content in move_files:
                (directory / name).write_bytes(content)
            try:
                await self.mover.import_(self.kubeconfig, directory)
            except MoveError as exc:
                raise ExecutionError(str(exc)) from exc
        finally:
            await asyncio.to_thread(shutil.rmtree, directory, True)
        if own:
            await self._store_own_cluster(json.loads(own[0].content))
        log.info(
            "pivot imported",
            extra={"cluster": command.cluster_name, "objects": len(objects), "pivot_id": command.pivot_id},
        )

    async def _store_own_cluster(self, lattice_cluster: Obj) -> None:
        status = lattice_cluster.pop("status", None)
        try:
            await self.api.apply(lattice_cluster, PIVOT_FIELD_MANAGER)
            if status:
                await self.api.apply_status(
                    {
                        **{k: lattice_cluster[k] for k in ("apiVersion", "kind")},
                        "metadata": {"name": lattice_cluster["metadata"]["name"]},
                        "status": status,
                    },
                    PIVOT_FIELD_MANAGER,
                )
        except kube.KubeError as exc:
            raise ExecutionError(f"storing the cluster's own LatticeCluster: {exc}") from exc

    async def self_managed(self) -> bool:
        """Whether this cluster holds its own LatticeCluster with a completed pivot."""
        try:
            listed = await self.api.list("lattice.dev/v1alpha1", "LatticeCluster")
        except kube.KubeError:
            return False
        return any(
            ((item.get("status") or {}).get("pivot") or {}).get("step") == "Complete" for item in listed.items
        )


class KubeUnpivoter:
    """The agent's half of deleting its self-managing cluster (see docs/lifecycle.md).

    The cell asks for the objects; this pauses the cluster's own Cluster (its controllers stop
    acting on it), exports the graph with its ``ClusterMover`` and returns the
    files. A cell that still has children refuses, naming them, unless it is annotated
    ``lattice.dev/cascade-delete=true``: then it deletes them and refuses until they are gone.
    Once the cell holds the objects, :meth:`release` marks the own LatticeCluster so that the
    cluster's operator drops its finalizer (and deletes it, when the deletion started on the
    cell)."""

    def __init__(self, api: KubeApi, mover: ClusterMover, kubeconfig: Path, cluster_name: str) -> None:
        self.api = api
        self.mover = mover
        self.kubeconfig = kubeconfig
        self.cluster_name = cluster_name

    def _own_ref(self) -> ResourceRef:
        return ResourceRef(models.API_VERSION, models.KIND, self.cluster_name)

    async def _own(self) -> Obj | None:
        try:
            return await self.api.get(self._own_ref())
        except kube.NotFound:
            return None

    async def deleting(self) -> str | None:
        try:
            own = await self._own()
        except kube.KubeError as exc:
            log.debug("cannot read the own LatticeCluster: %s", exc)
            return None
        if own is None or not own["metadata"].get("deletionTimestamp"):
            return None
        if pivot_flow.annotated(own, pivot_flow.UNPIVOTED_ANNOTATION):
            return None
        return f"LatticeCluster {self.cluster_name} was deleted on the cluster itself"

    async def export_own(self, command: agent.Unpivot) -> tuple[agent.MoveFile, ...]:
        try:
            await self._refuse_with_children(command.cascade)
            namespace = command.capi_namespace or models.capi_namespace(self.cluster_name)
            directory = Path(tempfile.mkdtemp(prefix=f"lattice-unpivot-{self.cluster_name}-"))
            try:
                # clusterctl refuses a paused Cluster: unpause a previous request's pause.
                await self._set_paused(namespace, paused=False)
                exported = await self.mover.export(self.kubeconfig, namespace, directory)
                await self._set_paused(namespace, paused=True)
                files = tuple(agent.MoveFile(f.name, f.read_bytes()) for f in sorted(exported))
            finally:
                await asyncio.to_thread(shutil.rmtree, directory, True)
        except kube.KubeError as exc:
            raise ExecutionError(f"exporting the cluster's Cluster API objects: {exc}") from exc
        except MoveError as exc:
            raise ExecutionError(str(exc)) from exc
        if not files:
            raise ExecutionError(f"namespace {namespace} holds no Cluster API objects to hand back")
        log.info("unpivot: exported", extra={"cluster": self.cluster_name, "objects": len(files)})
        return files

    async def _refuse_with_children(self, cascade: bool) -> None:
        listed = await self.api.list(models.API_VERSION, models.KIND)
        children = pivot_flow.own_children(listed.items, self.cluster_name)
        if not children:
            return
        own = await self._own()
        if not cascade and (own is None or not pivot_flow.annotated(own, pivot_flow.CASCADE_ANNOTATION)):
            raise ExecutionError(
                f"{self.cluster_name} is a cell with children ({', '.join(children)}): delete them "
                f"first, or annotate {pivot_flow.CASCADE_ANNOTATION}=true on its LatticeCluster to delete "
                "them with it"
            )
        for child in children:
            try:
                await self.api.delete(ResourceRef(models.API_VERSION, models.KIND, child))
            except kube.NotFound:
                continue
        raise ExecutionError(f"deleting the children first ({', '.join(children)})")

    async def _set_paused(self, namespace: str, *, paused: bool) -> None:
        ref = ResourceRef(f"{capi.CLUSTER_API}/v1beta2", "Cluster", self.cluster_name, namespace)
        try:
            await self.api.merge_patch(ref, {"spec": {"paused": True if paused else None}})
        except kube.NotFound:
            return

    async def release(self, command: agent.UnpivotComplete) -> None:
        try:
            own = await self._own()
            if own is None:
                return
            patch = {"metadata": {"annotations": {pivot_flow.UNPIVOTED_ANNOTATION: "true"}}}
            await self.api.merge_patch(self._own_ref(), patch)
            if not own["metadata"].get("deletionTimestamp"):
                await self.api.delete(self._own_ref())
        except kube.NotFound:
            return
        except kube.KubeError as exc:
            raise ExecutionError(f"releasing the own LatticeCluster: {exc}") from exc
        log.info("unpivot: released", extra={"cluster": self.cluster_name})


class KubeClusterProbe:
    """Reports on the agent's own cluster from its API server."""

    def __init__(
        self,
        api: KubeApi,
        importer: KubePivotImporter,
        kubernetes_version: str = "",
        cluster_name: str | None = None,
    ) -> None:
        self.api = api
        self.importer = importer
        self._version = kubernetes_version
        self.cluster_name = cluster_name

    async def kubernetes_version(self) -> str:
        return self._version

    async def health(self) -> agent.ClusterHealth:
        try:
            nodes = (await self.api.list("v1", "Node")).items
        except kube.KubeError:
            return agent.ClusterHealth(conditions=("api-unreachable",))
        ready = sum(
            1
            for node in nodes
            if any(
                c.get("type") == "Ready" and c.get("status") == "True"
                for c in (node.get("status") or {}).get("conditions", [])
            )
        )
        return agent.ClusterHealth(
            ready_nodes=ready, total_nodes=len(nodes), conditions=await self._own_report()
        )

    async def _own_report(self) -> tuple[str, ...]:
        if self.cluster_name is None:
            return ()
        try:
            own = await self.api.get(ResourceRef(models.API_VERSION, models.KIND, self.cluster_name))
        except kube.KubeError:  # not pivoted yet (NotFound), or unreadable: nothing to report
            return ()
        return agent.own_cluster_report(own)

    async def self_managed(self) -> bool:
        return await self.importer.self_managed()
