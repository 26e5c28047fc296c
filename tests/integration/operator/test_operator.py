"""The operator against a real kube-apiserver (with etcd and kube-controller-manager)."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.revocations import ConfigMapRevocations
from lattice.app.operator.cell_role import CellSettings
from lattice.ports import kube
from lattice.testing.fixtures import ControlPlaneFactory
from tests.integration.conftest import events_of
from tests.integration.operator.conftest import (
    absent,
    capi_objects,
    cluster,
    eventually,
    kill,
    lc_ref,
    operator,
    start_operator_process,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


async def phase(api: Kr8sKube, name: str) -> str | None:
    obj = await api.get(lc_ref(name))
    return obj.get("status", {}).get("phase")


async def test_create_update_delete(cell_control_plane: ControlPlane) -> None:
    cp = cell_control_plane
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    async with operator(cp) as settings:
        await api.create(cluster("flow-1"))

        async def provisioned() -> dict[str, Any] | None:
            objs = await capi_objects(api, "flow-1")
            return objs if len(objs) == 7 and await phase(api, "flow-1") == "Provisioning" else None

        objs = await eventually(provisioned, what="CAPI objects and phase Provisioning")
        assert objs["MachineDeployment/flow-1-md-0"]["spec"]["replicas"] == 2
        lc = await api.get(lc_ref("flow-1"))
        assert "lattice.dev/cluster-cleanup" in lc["metadata"]["finalizers"]
        status = lc["status"]
        assert status["observedGeneration"] == lc["metadata"]["generation"]
        assert {c["type"] for c in status["conditions"]} >= {"Ready", "SpecValid", "CapiApplied"}
        # No ownerReference to the LatticeCluster (it would break clusterctl move).
        assert all("ownerReferences" not in o["metadata"] for o in objs.values())

        # kubectl (an independent client) sees the printer columns and the events.
        table = cp.kubectl("get", "lc", "flow-1").stdout
        assert "PHASE" in table
        assert "Provisioning" in table
        assert "docker" in table
        events = events_of(cp, "flow-1")
        # One Event for the transition, naming the objects it applied.
        assert (
            "Provisioning",
            "applying 8 of 8 Cluster API objects in capi-flow-1; waiting for the infrastructure",
        ) in {(e["reason"], e["message"]) for e in events}

        # workers 2 -> 3 updates the MachineDeployment.
        await api.merge_patch(lc_ref("flow-1"), {"spec": {"nodes": {"workers": 3}}})

        async def scaled() -> bool:
            md = (await capi_objects(api, "flow-1"))["MachineDeployment/flow-1-md-0"]
            return bool(md["spec"]["replicas"] == 3)

        await eventually(scaled, what="MachineDeployment scaled to 3")
        lc = await eventually(lambda: _observed(api, "flow-1", 2), what="observedGeneration 2")

        # Deletion: CAPI objects go, then the finalizer, then the LatticeCluster.
        await api.delete(lc_ref("flow-1"))

        async def gone() -> bool:
            try:
                await api.get(lc_ref("flow-1"))
            except kube.NotFound:
                return not await capi_objects(api, "flow-1")
            return False

        await eventually(gone, what="LatticeCluster and its CAPI objects deleted")
        assert settings.identity == "op"


async def _observed(api: Kr8sKube, name: str, generation: int) -> dict[str, Any] | None:
    lc = await api.get(lc_ref(name))
    return lc if lc.get("status", {}).get("observedGeneration") == generation else None


async def test_unchanged_spec_makes_no_writes(cell_control_plane: ControlPlane) -> None:
    cp = cell_control_plane
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    async with operator(cp, resync_s=0.5):
        await api.create(cluster("steady-1"))
        await eventually(lambda: _observed(api, "steady-1", 1), what="first reconcile")
        await asyncio.sleep(1.0)  # let the write echoes settle
        before = {
            k: o["metadata"]["resourceVersion"] for k, o in (await capi_objects(api, "steady-1")).items()
        }
        lc_before = (await api.get(lc_ref("steady-1")))["metadata"]["resourceVersion"]
        await asyncio.sleep(2.5)  # several resyncs, each a full reconcile
        after = {
            k: o["metadata"]["resourceVersion"] for k, o in (await capi_objects(api, "steady-1")).items()
        }
        assert after == before
        assert (await api.get(lc_ref("steady-1")))["metadata"]["resourceVersion"] == lc_before
        await api.delete(lc_ref("steady-1"))
        await eventually(lambda: absent(api, "steady-1"), what="deleted")


async def test_invalid_spec_fails_with_the_fields_named(cell_control_plane: ControlPlane) -> None:
    cp = cell_control_plane
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    # Passes the CRD's schema and CEL rules, fails the operator's deeper validation.
    bad = cluster("bad-1", networking={"pods": ["10.0.0.0/8"], "services": ["10.96.0.0/12"]})
    async with operator(cp):
        await api.create(bad)

        async def failed() -> dict[str, Any] | None:
            lc = await api.get(lc_ref("bad-1"))
            return lc if lc.get("status", {}).get("phase") == "Failed" else None

        lc = await eventually(failed, what="phase Failed")
        spec_valid = next(c for c in lc["status"]["conditions"] if c["type"] == "SpecValid")
        assert spec_valid["reason"] == "InvalidSpec"
        assert "spec.networking.services[0]" in spec_valid["message"]
        assert not await capi_objects(api, "bad-1")
        # The user fixes the spec; the cluster recovers without a restart.
        await api.merge_patch(lc_ref("bad-1"), {"spec": {"networking": {"services": ["172.20.0.0/16"]}}})
        await eventually(lambda: _phase_is(api, "bad-1", "Provisioning"), what="recovery")
        await api.delete(lc_ref("bad-1"))
        await eventually(lambda: absent(api, "bad-1"), what="deleted")


async def _phase_is(api: Kr8sKube, name: str, expected: str) -> bool:
    return await phase(api, name) == expected


async def test_probes_and_metrics(cell_control_plane: ControlPlane) -> None:
    async with operator(cell_control_plane) as settings:
        base = f"http://127.0.0.1:{settings.health_port}"
        async with httpx.AsyncClient() as client:

            async def ready() -> bool:
                try:
                    return (await client.get(f"{base}/readyz")).status_code == 200
                except httpx.TransportError:  # the probe server is still starting
                    return False

            await eventually(ready, what="/readyz")
            assert (await client.get(f"{base}/healthz")).text == "ok"
            metrics = (await client.get(f"{base}/metrics")).text
            assert "lattice_reconcile_duration_seconds_bucket" in metrics
            assert "lattice_workqueue_depth" in metrics
            assert "lattice_leader 1.0" in metrics


async def test_survives_an_apiserver_restart(control_plane_factory: ControlPlaneFactory) -> None:
    cp = control_plane_factory.one(controller_manager=True)
    cp.install_capi_crds()
    cp.install_lattice_crds()
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    async with operator(cp):
        await api.create(cluster("restart-1"))
        await eventually(lambda: _phase_is(api, "restart-1", "Provisioning"), what="first cluster")
        await asyncio.to_thread(cp.restart_apiserver)
        # A cluster created after the restart is reconciled: the watches came back.
        api = await Kr8sKube.connect(str(cp.kubeconfig))
        await api.create(cluster("restart-2"))
        await eventually(lambda: _phase_is(api, "restart-2", "Provisioning"), within=60, what="after restart")


def _lease_holder(cp: ControlPlane) -> str:
    result = cp.kubectl("get", "lease", "-n", "default", "lattice-operator", "-o", "json", check=False)
    if result.returncode != 0:
        return ""
    return str(json.loads(result.stdout)["spec"].get("holderIdentity") or "")


def _wait(predicate: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_leader_election_failover(control_plane_factory: ControlPlaneFactory, tmp_path: Path) -> None:
    cp = control_plane_factory.one(controller_manager=True)
    cp.install_capi_crds()
    cp.install_lattice_crds()
    procs = {
        name: start_operator_process(cp, name, tmp_path, "--lease-duration", "4") for name in ("op-a", "op-b")
    }
    try:
        leader = _wait(lambda: _lease_holder(cp), 60, "a leader")
        standby = next(n for n in procs if n != leader)
        cp.apply([cluster("lead-1")])
        _wait(lambda: "Provisioning" in cp.kubectl("get", "lc", "lead-1").stdout, 60, "lead-1 reconciled")
        # Only the leader works: the standby has not reconciled anything.
        standby_log = (tmp_path / f"operator-{standby}.log").read_text()
        assert '"msg": "reconciling"' not in standby_log
        assert '"msg": "reconciling"' in (tmp_path / f"operator-{leader}.log").read_text()
        killed_at = time.monotonic()
        kill(procs[leader])
        _wait(lambda: _lease_holder(cp) == standby, 60, "failover")
        failover = time.monotonic() - killed_at
        cp.apply([cluster("lead-2")])
        _wait(
            lambda: "Provisioning" in cp.kubectl("get", "lc", "lead-2").stdout, 60, "lead-2 by the new leader"
        )
        print(f"\nleader failover after kill -9: {failover:.2f} s (lease duration 4 s)")

        # A graceful stop releases the Lease: a new standby takes over without waiting it out.
        procs["op-c"] = start_operator_process(cp, "op-c", tmp_path, "--lease-duration", "4")
        op_c_log = tmp_path / "operator-op-c.log"
        _wait(lambda: '"msg": "operator started"' in op_c_log.read_text(), 60, "op-c up")
        stopped_at = time.monotonic()
        procs[standby].send_signal(signal.SIGTERM)
        assert procs[standby].wait(timeout=60) == 0
        _wait(lambda: _lease_holder(cp) == "op-c", 60, "op-c after the release")
        handover = time.monotonic() - stopped_at
        assert '"msg": "released leadership"' in (tmp_path / f"operator-{standby}.log").read_text()
        print(f"leader handover after SIGTERM: {handover:.2f} s")

        # Someone else holding a valid Lease: the leader stops acting at once, and exits 1 for its
        # Deployment to restart it as a candidate.
        now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": "lattice-operator", "namespace": "default"},
            "spec": {"holderIdentity": "intruder", "renewTime": now, "leaseDurationSeconds": 60},
        }
        cp.apply([lease], field_manager="intruder")
        assert procs["op-c"].wait(timeout=60) == 1
        log = op_c_log.read_text()
        assert '"msg": "leadership lost: the lease is held by another"' in log
        assert '"holder": "intruder"' in log
        assert _lease_holder(cp) == "intruder"  # it lost, so it released nothing
    finally:
        for proc in procs.values():
            kill(proc)


def test_killed_mid_reconcile_then_restarted_converges(
    control_plane_factory: ControlPlaneFactory, tmp_path: Path
) -> None:
    cp = control_plane_factory.one(controller_manager=True)
    cp.install_capi_crds()
    cp.install_lattice_crds()
    cp.apply([cluster(f"crash-{i}", workers=i) for i in range(12)])
    first = start_operator_process(cp, "crashy", tmp_path, "--no-leader-elect")
    try:
        _wait(lambda: "capi-crash" in cp.kubectl("get", "ns").stdout, 60, "some progress")
    finally:
        kill(first)
    second = start_operator_process(cp, "steady", tmp_path, "--no-leader-elect")
    try:

        def converged() -> bool:
            out = cp.kubectl("get", "lc", "-o", "json").stdout
            items = [i for i in json.loads(out)["items"] if i["metadata"]["name"].startswith("crash-")]
            return len(items) == 12 and all(i.get("status", {}).get("phase") == "Provisioning" for i in items)

        _wait(converged, 120, "all 12 clusters converged")
        mds = json.loads(cp.kubectl("get", "machinedeployments", "-A", "-o", "json").stdout)["items"]
        replicas = {md["metadata"]["namespace"]: md["spec"]["replicas"] for md in mds}
        assert replicas == {f"capi-crash-{i}": i for i in range(12)}
    finally:
        kill(second, sig=signal.SIGTERM)


def test_deploy_manifests_pass_a_server_side_dry_run(cell_control_plane: ControlPlane) -> None:
    manifests = subprocess.run(
        [sys.executable, "-m", "lattice.app.cli", "deploy-manifests", "--cluster-name", "mgmt"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    # The namespace must exist for namespaced objects to dry-run; create it for real first.
    cell_control_plane.kubectl("create", "namespace", "lattice-system", check=False)
    result = cell_control_plane.apply(manifests, dry_run=True)
    applied = {(o["kind"], o["metadata"]["name"]) for o in result.objects}
    assert {("Deployment", "lattice-operator"), ("ClusterRole", "lattice-operator")} <= applied


async def test_a_cell_revokes_a_deleted_childs_agent_certificates(
    cell_control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = cell_control_plane
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    cell = CellSettings(
        host="127.0.0.1", bootstrap_port=free_port(), grpc_port=free_port(), state_dir=tmp_path / "cell"
    )
    async with operator(cp, cell=cell):
        await api.create(cluster("gone-1"))
        await eventually(lambda: _observed(api, "gone-1", 1), what="first reconcile")
        before = dt.datetime.now(dt.UTC).replace(microsecond=0)
        await api.delete(lc_ref("gone-1"))
        await eventually(lambda: absent(api, "gone-1"), what="deleted")
        revocations = ConfigMapRevocations(api)
        await revocations.refresh()
        assert revocations.revoked["gone-1"] >= before
        assert revocations.reason("gone-1", before - dt.timedelta(days=1)) is not None  # an old cert
