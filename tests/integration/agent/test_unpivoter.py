"""The agent's half of a deletion (``KubeUnpivoter``) against a real API server: the notice it
sends while its own LatticeCluster is being deleted, a cell that refuses while it has children
(naming them) or deletes them first on a cascade, and the release that lets its own
LatticeCluster go. The export itself runs the real clusterctl in the E2E tests."""

from __future__ import annotations

import json
from typing import Any

import pytest

from lattice.adapters.agent_kube import KubeUnpivoter
from lattice.adapters.clusterctl import ClusterctlMover
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.domain import agent, models, pivot_flow
from lattice.ports import kube
from lattice.ports.agent import ExecutionError
from lattice.ports.kube import ResourceRef

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]


def lattice_cluster(name: str, cell_ref: str, finalizer: bool = True, **annotations: str) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "annotations": annotations}
    if finalizer:
        meta["finalizers"] = ["test.lattice.dev/hold"]
    return {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": meta,
        "spec": {
            "cellRef": cell_ref,
            "provider": {"type": "local", "kubernetes": {"version": "1.36.3"}},
            "nodes": {"controlPlane": 1, "workers": 0},
        },
    }


async def _release_all(api: Kr8sKube, *names: str) -> None:
    for name in names:
        ref = ResourceRef(models.API_VERSION, models.KIND, name)
        try:
            await api.merge_patch(ref, {"metadata": {"finalizers": None}})
            await api.delete(ref)
        except kube.KubeError:  # cleanup of what a failed test left
            continue


async def test_notice_refusal_cascade_and_release(cell_control_plane: ControlPlane) -> None:
    cp = cell_control_plane
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    unpivoter = KubeUnpivoter(api, ClusterctlMover(cp.toolchain.clusterctl), cp.kubeconfig, "unp-cell")
    command = agent.Unpivot("unp-cell", "capi-unp-cell")
    try:
        assert await unpivoter.deleting() is None  # no own LatticeCluster yet
        cp.apply(
            [
                lattice_cluster("unp-cell", "root"),
                lattice_cluster("unp-a", "unp-cell", finalizer=False),
                lattice_cluster("unp-b", "unp-cell", finalizer=False),
            ]
        )
        assert await unpivoter.deleting() is None  # not being deleted
        cp.kubectl("delete", "lc", "unp-cell", "--wait=false")
        assert await unpivoter.deleting() == "LatticeCluster unp-cell was deleted on the cluster itself"

        # A cell with children refuses, naming them and the way out.
        with pytest.raises(ExecutionError, match=r"a cell with children \(unp-a, unp-b\)") as refused:
            await unpivoter.export_own(command)
        assert pivot_flow.CASCADE_ANNOTATION in str(refused.value)
        assert "unp-a" in cp.kubectl("get", "lc", "-o", "name").stdout

        # The cell's copy asks for a cascade: the children are deleted first.
        cascade = agent.Unpivot("unp-cell", "capi-unp-cell", cascade=True)
        with pytest.raises(ExecutionError, match=r"deleting the children first \(unp-a, unp-b\)"):
            await unpivoter.export_own(cascade)
        names = cp.kubectl("get", "lc", "-o", "name").stdout
        assert "unp-a" not in names
        assert "unp-b" not in names

        # Without children, nothing to hand back is an error too (no Cluster in the namespace).
        cp.kubectl("create", "namespace", "capi-unp-cell")
        with pytest.raises(ExecutionError):
            await unpivoter.export_own(command)

        # Released: marked, so the operator drops its finalizer; the notice stops.
        await unpivoter.release(agent.UnpivotComplete("unp-cell"))
        own = json.loads(cp.kubectl("get", "lc", "unp-cell", "-o", "json").stdout)
        assert own["metadata"]["annotations"][pivot_flow.UNPIVOTED_ANNOTATION] == "true"
        assert await unpivoter.deleting() is None

        # Released before its own deletion (the cell started it): it is deleted as well.
        other = KubeUnpivoter(api, ClusterctlMover(cp.toolchain.clusterctl), cp.kubeconfig, "unp-other")
        cp.apply([lattice_cluster("unp-other", "root")])
        await other.release(agent.UnpivotComplete("unp-other"))
        found = json.loads(cp.kubectl("get", "lc", "unp-other", "-o", "json").stdout)
        assert found["metadata"].get("deletionTimestamp")
        await _release_all(api, "unp-other")
        await other.release(agent.UnpivotComplete("unp-other"))  # gone: nothing to do
    finally:
        await _release_all(api, "unp-cell", "unp-a", "unp-b", "unp-other")
        cp.kubectl("delete", "namespace", "capi-unp-cell", "--ignore-not-found", "--wait=false", check=False)
