"""The agent's ports on a real cluster: apply manifests, import a pivot, probe health.

``KubePivotImporter`` is the child's half of a pivot: it writes the export's ``*.yaml`` files to
a fresh directory and runs ``clusterctl move --from-directory`` into its own API server (which
skips objects that already exist, so a retried import does not duplicate anything), then stores
the cluster's own LatticeCluster (sent alongside the export) with its pivoted status, so the
cluster's operator takes over. The status of the Cluster API objects, which the import drops, is
not written: the cluster's own controllers recompute it, as after any ``clusterctl move``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ruamel.yaml import YAML

from lattice.domain import agent, cell, pivot
from lattice.ports import kube
from lattice.ports.agent import ExecutionError
from lattice.ports.kube import KubeApi, Obj
from lattice.ports.mover import ClusterMover, MoveError

log = logging.getLogger("lattice.agent.kube")

FIELD_MANAGER = "lattice-agent"
PIVOT_FIELD_MANAGER = "lattice-pivot"


def parse_manifests(streams: Sequence[bytes]) -> list[Obj]:
    """Every object of every YAML/JSON stream, in order; lists are flattened."""
    yaml = YAML(typ="safe", pure=True)
    out: list[Obj] = []
    for index, stream in enumerate(streams):
        try:
            text = stream.decode("utf-8")
            # JSON is YAML too; a JSON stream (a cell's CRD list, megabytes) parses far faster so.
            documents = [json.loads(text)] if text.lstrip().startswith("{") else list(yaml.load_all(text))
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
    def __init__(self, api: KubeApi) -> None:
        self.api = api

    async def apply(self, manifests: tuple[bytes, ...]) -> None:
        for obj in parse_manifests(manifests):
            try:
                await self.api.apply(obj, FIELD_MANAGER)
            except kube.KubeError as exc:
                name = obj.get("metadata", {}).get("name", "?")
                raise ExecutionError(f"applying {obj.get('kind')} {name}: {exc}") from exc


class KubePivotImporter:
    def __init__(self, api: KubeApi, mover: ClusterMover, kubeconfig: Path) -> None:
        self.api = api
        self.mover = mover
        self.kubeconfig = kubeconfig

    async def import_move(self, command: agent.PivotManifests) -> None:
        own_name = cell.child_copy_file_name(command.cluster_name)
        move_files = [(f.name, f.content) for f in command.files if f.name.endswith(".yaml")]
        own = [f for f in command.files if f.name == own_name]
        exported = pivot.parse_export(move_files)
        objects = [o for o in exported if isinstance(o, pivot.ExportedObject)]
        if len(objects) != len(exported):
            raise ExecutionError(
                "; ".join(str(e) for e in exported if not isinstance(e, pivot.ExportedObject))
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


class KubeClusterProbe:
    """Reports on the agent's own cluster from its API server."""

    def __init__(self, api: KubeApi, importer: KubePivotImporter, kubernetes_version: str = "") -> None:
        self.api = api
        self.importer = importer
        self._version = kubernetes_version

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
        return agent.ClusterHealth(ready_nodes=ready, total_nodes=len(nodes))

    async def self_managed(self) -> bool:
        return await self.importer.self_managed()
