"""The pivot's data path on two real control planes: a cluster brought up by the real Cluster API
managers and the local provider on the source, the real ``clusterctl move --to-directory``
export from the source, an import left half done (as an agent killed mid-import leaves it), then
the agent's real importer, twice (a pivot re-sent after the stream was cut before PivotComplete,
received by a restarted agent that remembers nothing).

Every exported object must end up on the target exactly once with an unchanged content hash.
The import writes no status: that is the target's own controllers' to recompute."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lattice.adapters.agent_kube import KubeClusterProbe, KubePivotImporter
from lattice.adapters.binaries import Toolchain
from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS
from lattice.adapters.capi_managers import CapiManagers
from lattice.adapters.clusterctl import ClusterctlMover
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.local_machine_host import LocalMachineHost
from lattice.domain import agent, capi_reports, models, pivot_export, pivot_flow
from lattice.ports.kube import ResourceRef
from lattice.testing.fixtures import ControlPlaneFactory
from tests.compiled import compiled_local, with_post_kubeadm
from tests.integration.conftest import local_infra
from tests.moved import MOVED_KINDS, move_graph

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(420)]

NAME = "moved"
NAMESPACE = models.capi_namespace(NAME)
# Stands in for the registration call (tested end to end with a real cell elsewhere).
POST_KUBEADM = "true"
LATTICE_CLUSTER = {
    "apiVersion": models.API_VERSION,
    "kind": models.KIND,
    "metadata": {"name": NAME, "labels": {"team": "a"}},
    "spec": {
        "cellRef": "mgmt",
        "provider": {"type": "local", "kubernetes": {"version": "1.36.3"}},
        "nodes": {"controlPlane": 1, "workers": 1},
    },
}


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def compiled() -> list[dict[str, Any]]:
    objects = with_post_kubeadm(compiled_local(NAME, control_plane=1, workers=1), [POST_KUBEADM])
    registration = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": f"{NAME}-lattice-registration", "namespace": NAMESPACE},
        "stringData": {"token": "t0ken", "ca.crt": "CA"},
    }
    return [*objects, registration]


@contextlib.asynccontextmanager
async def provisioned_graph(source: ControlPlane, tmp: Path) -> AsyncIterator[LocalMachineHost]:
    """The compiled objects on ``source``, brought up by the real managers and the local provider
    until clusterctl's move preflight passes (every Machine has its Node)."""
    source.apply(compiled())
    async with local_infra(source, tmp / "machines") as host:
        deadline = asyncio.get_running_loop().time() + 240
        while True:
            listed = json.loads(
                source.kubectl("get", "clusters,machines", "-n", NAMESPACE, "-o", "json").stdout
            )
            blockers = capi_reports.move_blockers(listed["items"])
            if len(listed["items"]) == 3 and not blockers:
                break
            assert asyncio.get_running_loop().time() < deadline, f"not provisioned in 240 s: {blockers}"
            await asyncio.sleep(1.0)
        yield host


# What the real controllers add to the move graph of the E2E tests' kinds: MachineSets,
# KubeadmConfigs and the bootstrap-data Secrets they own.
IMPORT_KINDS = f"{MOVED_KINDS},machinesets,kubeadmconfigs"


def objects_in(cp: ControlPlane) -> list[dict[str, Any]]:
    items = json.loads(cp.kubectl("get", IMPORT_KINDS, "-n", NAMESPACE, "-o", "json").stdout)["items"]
    bootstrap_data = [
        o
        for o in items
        if o["kind"] == "Secret"
        and any(r.get("kind") == "KubeadmConfig" for r in o["metadata"].get("ownerReferences") or [])
    ]
    return [*move_graph(items, NAME), *bootstrap_data]


def command(files: list[Path], attempt: int = 1, own: bool = False) -> agent.PivotManifests:
    moved = tuple(agent.MoveFile(p.name, p.read_bytes()) for p in files)
    if own:  # what the cell adds: the cluster's LatticeCluster as the child will hold it
        pivoting = models.LatticeClusterStatus(
            phase=models.Phase.PIVOTING,
            pivot=models.PivotStatus(step=models.PivotStep.IMPORTING, attempt=attempt),
        )
        done = pivot_flow.pivot_succeeded(pivoting, dt.datetime(2026, 12, 7, tzinfo=dt.UTC))
        copy = pivot_flow.child_copy(LATTICE_CLUSTER, done)
        moved += (agent.MoveFile(pivot_flow.child_copy_file_name(NAME), json.dumps(copy).encode()),)
    return agent.PivotManifests(NAME, NAMESPACE, f"{NAME}-{attempt}", moved)


async def test_a_half_done_import_then_repeated_imports_move_everything_exactly_once(
    control_plane_factory: ControlPlaneFactory, toolchain: Toolchain, tmp_path: Path
) -> None:
    source, target = control_plane_factory(2, names=["source", "target"], controller_manager=True)
    for cp in (source, target):
        cp.install_capi_crds(LOCAL_CAPI_PROVIDERS)
        cp.install_lattice_crds()
    with CapiManagers(source):
        async with provisioned_graph(source, tmp_path):
            await import_twice(source, target, toolchain, tmp_path)


async def import_twice(
    source: ControlPlane, target: ControlPlane, toolchain: Toolchain, tmp_path: Path
) -> None:
    mover = ClusterctlMover(toolchain.clusterctl)

    export_dir = tmp_path / "export"
    export_dir.mkdir()
    files = await mover.export(source.kubeconfig, NAMESPACE, export_dir)
    exported = pivot_export.parse_export([(p.name, p.read_bytes()) for p in files])
    bodies = [o.body for o in exported if isinstance(o, pivot_export.ExportedObject)]
    assert len(bodies) == len(exported) == len(files)
    kinds = sorted(o["kind"] for o in bodies)
    assert {
        "Cluster",
        "KubeadmControlPlane",
        "MachineDeployment",
        "MachineSet",
        "Machine",
        "KubeadmConfig",
        "LocalMachine",
        "Secret",
    } <= set(kinds), kinds

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

    # The retried pivot, then the same pivot re-sent to a restarted agent; both carry the
    # cluster's own LatticeCluster, with the status its cell wrote for the pivot's success.
    target_api = await Kr8sKube.connect(str(target.kubeconfig))
    importer = KubePivotImporter(target_api, mover, target.kubeconfig)
    probe = KubeClusterProbe(target_api, importer, cluster_name=NAME)
    assert not await importer.self_managed()
    assert await probe.health() == agent.ClusterHealth()  # no nodes, no own LatticeCluster yet
    await importer.import_move(command(files, attempt=2, own=True))
    await KubePivotImporter(target_api, mover, target.kubeconfig).import_move(
        command(files, attempt=2, own=True)
    )
    own = await target_api.get(ResourceRef(models.API_VERSION, models.KIND, NAME))
    assert own["status"]["phase"] == "Ready"
    assert own["status"]["pivot"] == {"step": "Complete", "attempt": 2}
    assert own["metadata"]["annotations"] == {pivot_flow.PIVOTED_ANNOTATION: "mgmt"}
    assert await importer.self_managed()
    health = await probe.health()
    assert health.conditions[0] == f"{agent.REPORT_PREFIX}phase=Ready"

    on_target = objects_in(target)
    report = pivot_export.compare_sides(bodies, [], on_target)
    assert report.moved_exactly_once, report
    ids = [str(pivot_export.object_id(o)) for o in on_target]
    assert len(ids) == len(set(ids)) == len(bodies), ids
    by_kind = {o["kind"]: o for o in on_target}
    assert not (by_kind["Cluster"].get("status") or {}).get("initialization")
    assert not (by_kind["Machine"].get("status") or {}).get("nodeRef")
    assert not by_kind["Cluster"]["spec"].get("paused")
    # Owner references point at the target's own objects, not the source's UIDs.
    uids = {o["metadata"]["uid"] for o in on_target}
    for obj in on_target:
        for ref in obj["metadata"].get("ownerReferences") or []:
            assert ref["uid"] in uids, (obj["kind"], ref)
