"""ClusterMover through the Kubernetes API, without clusterctl processes.

The same rules as ``clusterctl move --to-directory`` / ``--from-directory`` (v1.14), computed by
:mod:`lattice.domain.move_graph`, and the same files (``Kind_Namespace_Name.yaml``, the object
as JSON), so either mover imports what the other exported:

* export: list the namespace's Clusters (and ClusterClasses) and refuse paused ones, pause them
  (``spec.paused`` / the paused annotation), list every kind of the move at once, check the
  preflight (infrastructure provisioned, control plane initialized, every Machine has its
  Node), wait while an object of the graph carries ``clusterctl.cluster.x-k8s.io/block-move``,
  write one file per object of the graph, then unpause the source as clusterctl does;
* import: create the namespaces, then the objects group by group, owners first (a group at
  once: none of its objects owns another), each with its owner references pointing at the new
  UIDs; an object that exists is left as it is and its UID used (so an import can be re-run),
  then remove ``spec.paused`` from the Clusters (and the paused annotation from ClusterClasses).

Like clusterctl, the import leaves ``.status`` to the target's controllers (the status
subresource ignores it on create); ``restore_status=True`` writes each object's exported status
back through the status subresource after creating it.

What clusterctl spends in process starts, discovery one kind at a time and one GET per object
is here a handful of concurrent requests (see benchmarks/pivot.py). Each export or import opens
its own connection, over aiohttp (``Kr8sKube.connect(lean=True)``: a quarter of httpx's CPU per
request), and closes it when done, as each clusterctl process does; a mover made by
:func:`mover_for` with a process's own connection uses that one and leaves it open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from pathlib import Path
from typing import TypeVar

from lattice.adapters.binaries import locate
from lattice.adapters.clusterctl import ClusterctlMover
from lattice.adapters.concurrency import failures_of_all
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.domain import move_graph, pivot_export
from lattice.domain.move_graph import MoveGraph, MoveNode, MoveType
from lattice.ports import kube
from lattice.ports.kube import KubeApi, Obj, ResourceRef
from lattice.ports.mover import ClusterMover, MoveError, MoverKind

log = logging.getLogger("lattice.mover")

CRD_API = "apiextensions.k8s.io/v1"
FIELD_MANAGER = "lattice-mover"
BLOCK_TIMEOUT_S = 60.0
RETRIES = 8
T = TypeVar("T")

Connect = Callable[[Path], AbstractAsyncContextManager[KubeApi]]


@contextlib.asynccontextmanager
async def _lean(kubeconfig: Path) -> AsyncIterator[KubeApi]:
    """A connection for one export or import, closed after it."""
    api = await Kr8sKube.connect(str(kubeconfig), lean=True)
    try:
        yield api
    finally:
        await api.close()


class NativeMover:
    """A :class:`lattice.ports.mover.ClusterMover` over the Kubernetes API."""

    lists_kind_by_kind = False

    def __init__(
        self,
        connect: Connect = _lean,
        *,
        block_timeout: float = BLOCK_TIMEOUT_S,
        restore_status: bool = False,
        retry_delay: float = 0.25,
    ) -> None:
        self._connect = connect
        self.block_timeout = block_timeout
        self.restore_status = restore_status
        self.retry_delay = retry_delay

    @contextlib.asynccontextmanager
    async def _api(self, kubeconfig: Path) -> AsyncIterator[KubeApi]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                api = await stack.enter_async_context(self._connect(kubeconfig))
            except kube.KubeError as exc:
                raise MoveError(str(exc)) from exc
            yield api

    async def _retry(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
        """``call`` again while the API server is unavailable (429 while a watch cache is
        built, 5xx), as clusterctl retries each read and write with a backoff."""
        for attempt in range(RETRIES - 1):
            try:
                return await call()
            except kube.Unavailable:
                await asyncio.sleep(self.retry_delay * (attempt + 1))
        try:
            return await call()
        except kube.Unavailable as exc:
            raise MoveError(f"{what}: {exc}") from exc

    async def _types(self, api: KubeApi) -> tuple[MoveType, ...]:
        crds = await self._retry(
            "listing the CRDs labelled for move",
            lambda: api.list(CRD_API, "CustomResourceDefinition", label_selector=move_graph.CLUSTERCTL_LABEL),
        )
        return move_graph.move_types(crds.items)

    # ------------------------------------------------------------------ export

    async def export(self, kubeconfig: Path, namespace: str, directory: Path) -> list[Path]:
        try:
            async with self._api(kubeconfig) as api:
                return await self._export(api, namespace, directory)
        except kube.KubeError as exc:
            raise MoveError(f"exporting namespace {namespace}: {exc}") from exc
        except OSError as exc:
            raise MoveError(f"writing the export of namespace {namespace} to {directory}: {exc}") from exc

    async def _export(self, api: KubeApi, namespace: str, directory: Path) -> list[Path]:
        types = await self._types(api)
        by_key = {t.key: t for t in types}
        cluster_type = by_key.get((move_graph.CLUSTER_GROUP, "Cluster"))
        if cluster_type is None:
            raise MoveError(
                f"no Cluster CRD labelled {move_graph.CLUSTERCTL_LABEL} on the source: nothing to move"
            )
        class_type = by_key.get((move_graph.CLUSTER_GROUP, "ClusterClass"))
        roots = await self._list_types(
            api, [t for t in (cluster_type, class_type) if t is not None], namespace
        )
        clusters = [o for o in roots if o["kind"] == "Cluster"]
        classes = [o for o in roots if o["kind"] == "ClusterClass"]
        paused = [str(pivot_export.object_id(c)) for c in clusters if move_graph.paused(c)]
        paused += [
            str(pivot_export.object_id(c))
            for c in classes
            if move_graph.PAUSED_ANNOTATION in (c["metadata"].get("annotations") or {})
        ]
        if paused:
            raise MoveError(f"cannot start the move while these are paused: {', '.join(sorted(paused))}")
        await self._pause(api, clusters, classes, paused=True)
        try:
            objects, graph = await self._settled_graph(api, types, namespace)
            directory.mkdir(parents=True, exist_ok=True)
            by_uid = {o["metadata"].get("uid"): o for o in objects}
            written = []
            for node in graph.nodes:
                path = directory / move_graph.file_name(node.id)
                path.unlink(missing_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(json.dumps(by_uid[node.uid], separators=(",", ":")).encode())
                written.append(path)
        finally:
            await self._pause(api, clusters, classes, paused=False)
        if graph.stranded:
            log.info(
                "not moved: an owner is outside the graph",
                extra={"namespace": namespace, "objects": [str(i) for i in graph.stranded]},
            )
        return sorted(written)

    async def _settled_graph(
        self, api: KubeApi, types: Sequence[MoveType], namespace: str
    ) -> tuple[list[Obj], MoveGraph]:
        """The graph, listed once no object of it blocks the move (bounded by block_timeout)."""
        deadline = asyncio.get_running_loop().time() + self.block_timeout
        while True:
            objects = await self._list_types(api, types, namespace)
            graph = move_graph.build(objects, types)
            errors = move_graph.provisioning_errors(objects)
            if errors:
                raise MoveError("; ".join(errors))
            if not graph.groups:
                raise MoveError(f"namespace {namespace} holds no Cluster API objects to move")
            if not graph.blocking:
                return objects, graph
            if asyncio.get_running_loop().time() >= deadline:
                raise MoveError(
                    f"the move is blocked by the {move_graph.BLOCK_MOVE_ANNOTATION} annotation on "
                    + ", ".join(map(str, graph.blocking))
                )
            await asyncio.sleep(min(1.0, self.block_timeout / 10))

    async def _list_types(self, api: KubeApi, types: Sequence[MoveType], namespace: str) -> list[Obj]:
        async def one(t: MoveType) -> list[Obj]:
            async def call() -> list[Obj]:
                try:
                    listed = await api.list(
                        t.api_version, t.kind, namespace=namespace if t.namespaced else None
                    )
                except kube.NotFound:
                    return []  # a CRD without a served storage version (clusterctl skips it too)
                return listed.items

            return await self._retry(f"listing {t.kind}", call)

        lists = await asyncio.gather(*(one(t) for t in types))
        return [item for items in lists for item in items]

    async def _pause(
        self, api: KubeApi, clusters: Iterable[Obj], classes: Iterable[Obj], *, paused: bool
    ) -> None:
        async def patch(obj: Obj, body: Obj) -> None:
            ref = ResourceRef.of(obj)
            try:
                await self._retry(f"pausing {ref}", lambda: api.merge_patch(ref, body))
            except kube.NotFound:
                return

        marker = "" if paused else None
        await asyncio.gather(
            *(patch(c, {"spec": {"paused": True if paused else None}}) for c in clusters),
            *(
                patch(c, {"metadata": {"annotations": {move_graph.PAUSED_ANNOTATION: marker}}})
                for c in classes
            ),
        )

    # ------------------------------------------------------------------ import

    async def import_(self, kubeconfig: Path, directory: Path) -> None:
        try:
            files = [(p.name, p.read_bytes()) for p in sorted(directory.iterdir()) if p.is_file()]
        except OSError as exc:
            raise MoveError(f"cannot read the export in {directory}: {exc}") from exc
        parsed = pivot_export.parse_export(files)
        objects = [o.body for o in parsed if isinstance(o, pivot_export.ExportedObject)]
        if len(objects) != len(parsed):
            raise MoveError("unusable export: " + "; ".join(str(e) for e in parsed))
        try:
            async with self._api(kubeconfig) as api:
                await self._import(api, objects)
        except kube.KubeError as exc:
            raise MoveError(f"importing into {kubeconfig}: {exc}") from exc

    async def _import(self, api: KubeApi, objects: list[Obj]) -> None:
        # An export holds only objects that move, and an object of a cluster-scoped kind carries
        # no namespace: the kinds come from the export, not from a list of the target's CRDs.
        namespaces = sorted({ns for o in objects if (ns := (o.get("metadata") or {}).get("namespace"))})
        await asyncio.gather(*(self._ensure_namespace(api, ns) for ns in namespaces))
        graph = move_graph.build(objects, move_graph.exported_types(objects))
        by_uid = {n.uid: o for n, o in _pairs(graph, objects)}
        new_uids: dict[str, str] = {}
        created = {n.uid: asyncio.Event() for n in graph.nodes}

        async def create(node: MoveNode) -> None:
            # Each object as soon as its owners exist (their new UIDs are in its references),
            # not group after group: one slow create holds up only what it owns.
            for uid in (*(link.uid for link in node.owners), *node.after):
                await created[uid].wait()
            new_uids[node.uid] = await self._create(api, node, by_uid[node.uid], new_uids)
            created[node.uid].set()

        failures = await failures_of_all(create(node) for node in graph.nodes)
        if failures:
            raise MoveError("; ".join(map(str, failures)))
        clusters = [by_uid[n.uid] for n in graph.nodes if n.id in set(graph.clusters)]
        classes = [by_uid[n.uid] for n in graph.nodes if n.id in set(graph.cluster_classes)]
        await self._pause(api, clusters, classes, paused=False)
        if graph.stranded:
            log.info(
                "not imported: an owner is not in the export",
                extra={"objects": [str(i) for i in graph.stranded]},
            )

    async def _ensure_namespace(self, api: KubeApi, namespace: str) -> None:
        body = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}
        try:
            await self._retry(f"creating namespace {namespace}", lambda: api.create(body))
        except kube.Conflict:
            return

    async def _create(self, api: KubeApi, node: MoveNode, obj: Obj, new_uids: dict[str, str]) -> str:
        body = move_graph.creation_body(obj, node, new_uids)
        try:
            created = await self._retry(f"creating {node.id}", lambda: api.create(body))
        except kube.Conflict:
            existing = await self._retry(f"reading {node.id}", lambda: api.get(ResourceRef.of(body)))
            return str(existing["metadata"]["uid"])
        except kube.KubeError as exc:
            raise MoveError(f"creating {node.id}: {exc}") from exc
        status = obj.get("status")
        if self.restore_status and status and created.get("status") != status:
            restored = {
                "apiVersion": body["apiVersion"],
                "kind": body["kind"],
                "metadata": {
                    "name": node.id.name,
                    **({"namespace": node.id.namespace} if node.id.namespace else {}),
                },
                "status": status,
            }
            # Without a status subresource (NotFound) the status was stored with the object.
            with contextlib.suppress(kube.NotFound):
                await self._retry(
                    f"restoring the status of {node.id}", lambda: api.apply_status(restored, FIELD_MANAGER)
                )
        return str(created["metadata"]["uid"])


def _pairs(graph: MoveGraph, objects: Iterable[Obj]) -> list[tuple[MoveNode, Obj]]:
    by_id = {pivot_export.object_id(o): o for o in objects}
    return [(node, by_id[node.id]) for node in graph.nodes]


def mover_for(kind: MoverKind, api: KubeApi | None = None) -> ClusterMover:
    """The mover ``--mover`` names; clusterctl's is looked up among the built binaries. With
    ``api``, the native mover uses that connection for every kubeconfig it is given (a process
    that moves into and out of its own cluster only)."""
    if kind is MoverKind.CLUSTERCTL:
        return ClusterctlMover(locate().clusterctl)
    if api is None:
        return NativeMover()
    own = api

    @contextlib.asynccontextmanager
    async def connect(_: Path) -> AsyncIterator[KubeApi]:
        yield own

    return NativeMover(connect)
