"""The pivot's data path on two real control planes: the real ``clusterctl move --to-directory``
export from the source, an import left half done (as an agent killed mid-import leaves it), then
the agent's real importer, twice (a pivot re-sent after the stream was cut before PivotComplete,
received by a restarted agent that remembers nothing).

Every exported object must end up on the target exactly once with an unchanged content hash,
with the status the import drops restored, so that the target can move its objects on."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from lattice.adapters.agent_kube import KubePivotImporter
from lattice.adapters.binaries import Toolchain
from lattice.adapters.clock import SystemClock
from lattice.adapters.clusterctl import ClusterctlMover
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app.local_provider import LOCAL_CAPI_PROVIDERS, LocalProvider, Machine
from lattice.domain import agent, capi, models, pivot
from lattice.ports.kube import ResourceRef
from lattice.testing.fixtures import ControlPlaneFactory
from tests.compiled import compiled_local
from tests.moved import MOVED_KINDS, move_graph

pytestmark = [pytest.mark.integration, pytest.mark.anyio]

NAME = "moved"
NAMESPACE = models.capi_namespace(NAME)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def compiled() -> tuple[dict[str, Any], ...]:
    return compiled_local(NAME, control_plane=1, workers=2)


async def provisioned_graph(
    source: ControlPlane, machine: ControlPlane, toolchain: Toolchain, tmp: Path
) -> None:
    """The compiled objects on ``source``, with what CAPI's controllers (here: the local
    provider's stand-in, its own code) record once ``machine`` runs the cluster."""
    api = await Kr8sKube.connect(str(source.kubeconfig))
    for obj in compiled():
        await api.apply(obj, "lattice-test")
    provider = LocalProvider(api, toolchain, tmp / "provider", SystemClock(), random=random.random)
    cluster = await api.get(ResourceRef(f"{capi.CLUSTER_API}/v1beta2", "Cluster", NAME, NAMESPACE))
    objects = await provider._cluster_objects(NAMESPACE, NAME)
    await provider._adopt(cluster, objects)
    local_cluster = next(o for o in objects if o["kind"] == "LocalCluster")
    kcp = next(o for o in objects if o["kind"] == "KubeadmControlPlane")
    await provider._report_provisioned(cluster, local_cluster, kcp, Machine(NAME, machine))


def objects_in(cp: ControlPlane) -> list[dict[str, Any]]:
    items = json.loads(cp.kubectl("get", MOVED_KINDS, "-n", NAMESPACE, "-o", "json").stdout)["items"]
    return move_graph(items, NAME)


def command(files: list[Path], attempt: int = 1) -> agent.PivotManifests:
    moved = tuple(agent.MoveFile(p.name, p.read_bytes()) for p in files)
    return agent.PivotManifests(NAME, NAMESPACE, f"{NAME}-{attempt}", moved)


async def test_a_half_done_import_then_repeated_imports_move_everything_exactly_once(
    control_plane_factory: ControlPlaneFactory, toolchain: Toolchain, tmp_path: Path
) -> None:
    source, target = control_plane_factory(2, names=["source", "target"])
    for cp in (source, target):
        cp.install_capi_crds(LOCAL_CAPI_PROVIDERS)
        cp.install_lattice_crds()
    await provisioned_graph(source, target, toolchain, tmp_path)
    mover = ClusterctlMover(toolchain.clusterctl)

    export_dir = tmp_path / "export"
    export_dir.mkdir()
    files = await mover.export(source.kubeconfig, NAMESPACE, export_dir)
    exported = pivot.parse_export([(p.name, p.read_bytes()) for p in files])
    bodies = [o.body for o in exported if isinstance(o, pivot.ExportedObject)]
    assert len(bodies) == len(exported) == len(files)
    kinds = sorted(o["kind"] for o in bodies)
    assert {"Cluster", "KubeadmControlPlane", "MachineDeployment", "Machine", "Secret"} <= set(kinds), kinds

    # An agent killed mid-import: clusterctl creates owners first, so what it leaves is a prefix.
    partial = tmp_path / "partial"
    partial.mkdir()
    prefix = [p for p in files if p.name.startswith(("Cluster_", "KubeadmControlPlane_", "Secret_"))]
    assert 0 < len(prefix) < len(files)
    for p in prefix:
        shutil.copy(p, partial / p.name)
    await mover.import_(target.kubeconfig, partial)
    left = len(objects_in(target))
    assert 0 < left < len(bodies)
    print(f"\nexported {len(bodies)} objects ({', '.join(kinds)}); the half-done import left {left}")

    # The retried pivot, then the same pivot re-sent to a restarted agent.
    target_api = await Kr8sKube.connect(str(target.kubeconfig))
    await KubePivotImporter(target_api, mover, target.kubeconfig).import_move(command(files, attempt=2))
    await KubePivotImporter(target_api, mover, target.kubeconfig).import_move(command(files, attempt=2))

    on_target = objects_in(target)
    report = pivot.compare_sides(bodies, [], on_target)
    assert report.moved_exactly_once, report
    ids = [str(pivot.object_id(o)) for o in on_target]
    assert len(ids) == len(set(ids)) == len(bodies), ids
    by_kind = {o["kind"]: o for o in on_target}
    assert by_kind["Cluster"]["status"]["initialization"]["controlPlaneInitialized"] is True
    assert not by_kind["Cluster"]["spec"].get("paused")
    assert by_kind["Machine"]["status"]["nodeRef"]["name"]
    # Owner references point at the target's own objects, not the source's UIDs.
    uids = {o["metadata"]["uid"] for o in on_target}
    for obj in on_target:
        for ref in obj["metadata"].get("ownerReferences") or []:
            assert ref["uid"] in uids, (obj["kind"], ref)

    # The restored status lets the target move its objects on (clusterctl's preflight needs it).
    again = tmp_path / "again"
    again.mkdir()
    moved_on = await mover.export(target.kubeconfig, NAMESPACE, again)
    assert sorted(p.name for p in moved_on) == sorted(p.name for p in files)
