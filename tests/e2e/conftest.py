"""A real cell for E2E tests: a control plane from the harness with the real Cluster API managers
running against it, and `lattice operator` as its own process serving as a cell with the
contract-shaped local infrastructure provider (`--local-infra`). Nothing is mocked."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from attrs import define

from lattice.adapters import mesh_crds
from lattice.adapters.binaries import Toolchain
from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS
from lattice.adapters.capi_managers import CapiManagers
from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.local_processes import processes_under, stop_all
from lattice.domain import models
from lattice.domain.operator_command import OperatorOptions, operator_command


@define
class Cell:
    name: str
    control_plane: ControlPlane
    state_dir: Path
    bootstrap_port: int
    grpc_port: int
    proxy_port: int = 0
    """The Kubernetes API proxy's port (docs/api-proxy.md); 0: none."""
    operator: subprocess.Popen[bytes] | None = None
    managers: CapiManagers | None = None

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def log(self) -> Path:
        return self.state_dir / "operator.log"

    def kubectl(self, *args: str, check: bool = True) -> str:
        return self.control_plane.kubectl(*args, check=check).stdout

    def start_operator(self, faults: str = "", agent_faults: str = "") -> None:
        """Start the cell's operator; ``faults`` arms test-only fault points (lattice.app.faults)
        in it, ``agent_faults`` in the agents of the children it names (``<child>=<point>``)."""
        self.state_dir.mkdir(parents=True, exist_ok=True)
        out = self.log.open("ab")
        options = OperatorOptions(
            kubeconfig=str(self.kubeconfig),
            cluster_name=self.name,
            cell_host="127.0.0.1",
            bootstrap_port=self.bootstrap_port,
            grpc_port=self.grpc_port,
            proxy_port=self.proxy_port or None,
            state_dir=str(self.state_dir),
            local_infra=True,
            leader_elect=False,
            health_port=free_port(),
        )
        self.operator = subprocess.Popen(
            operator_command(sys.executable, options),
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={
                **os.environ,
                "PYTHONUNBUFFERED": "1",
                "LATTICE_FAULT_AT": faults,
                "LATTICE_AGENT_FAULT_AT": agent_faults,
            },
        )

    def wait_working(self, since: int = 0, timeout: float = 300) -> None:
        """Wait until the operator started after byte ``since`` of its log reconciles (it logs
        ``starting workers``). Under a loaded CI machine its start (imports, the first lists
        while the API server re-initialises the storage of CRDs the managers just patched) took
        over a minute, which a test's own budget must not pay. On a timeout, the operator's
        thread stacks (SIGUSR1: faulthandler) are in the log tail of the error."""

        def working() -> bool:
            if self.operator is None or self.operator.poll() is not None:
                raise AssertionError("the operator exited")
            with self.log.open("rb") as f:
                f.seek(since)
                return b'"starting workers"' in f.read()

        try:
            wait_for(working, timeout, "the operator to start its workers")
        except AssertionError:
            if self.operator is not None and self.operator.poll() is None:
                self.operator.send_signal(signal.SIGUSR1)
                time.sleep(2)
            tail = self.log.read_text(errors="replace").splitlines()[-80:]
            raise AssertionError(
                f"the operator did not start its workers in {timeout:.0f}s:\n" + "\n".join(tail)
            ) from None

    def stop_operator(self) -> None:
        if self.operator is not None and self.operator.poll() is None:
            self.operator.terminate()
            try:
                self.operator.wait(30)
            except subprocess.TimeoutExpired:
                self.operator.kill()
                self.operator.wait(10)
        self.operator = None

    def lc(self, name: str) -> dict[str, Any]:
        """The LatticeCluster ``name`` (an AssertionError, which ``wait_for`` retries, while there
        is none). Read in this process, not by kubectl: the tests poll it every half second."""
        found = self.find_lc(name)
        if found is None:
            raise AssertionError(f"no LatticeCluster {name} on {self.name}")
        return found

    def find_lc(self, name: str) -> dict[str, Any] | None:
        return self.control_plane.get_json(f"/apis/{models.API_VERSION}/latticeclusters/{name}")


def child_kubeconfig(cell: Cell, child: str) -> Path:
    """The admin kubeconfig kubeadm wrote on the child's control-plane machine."""
    found = sorted(machines_dir(cell).glob(f"{child}-control-plane-*/root/etc/kubernetes/admin.conf"))
    assert found, f"no control-plane machine for {child} under {machines_dir(cell)}"
    return found[-1]


def machines_dir(cell: Cell) -> Path:
    """Where the cell's provider (and every child's, which share it) keeps machines."""
    return cell.state_dir / "local-infra"


def agent_log(machines: Path, child: str) -> Path:
    """The log of ``child``'s agent pod, on whichever of its machines the scheduler chose."""
    found = sorted(
        machines.glob(f"{child}-*/pods/lattice-system_lattice-agent-*/container.log"),
        key=lambda p: p.stat().st_mtime,
    )
    assert found, f"no agent pod of {child} under {machines}"
    return found[-1]


def machine_pids(cell: Cell, cluster: str) -> list[int]:
    """Every process running on one of ``cluster``'s machines (kubelet stand-in, static pods, pods)."""
    return [pid for machine in machines_dir(cell).glob(f"{cluster}-*") for pid in processes_under(machine)]


def wait_deleted(cell: Cell, cluster: str, timeout: float = 300) -> float:
    """Wait until ``cluster`` is gone from the cell with every process, machine directory and
    object of it; print the deletion's steps as the cell's status shows them. Returns seconds."""
    started = time.monotonic()
    steps: list[str] = []

    def gone() -> bool:
        found = cell.find_lc(cluster)
        if found is None:
            return True
        status = found.get("status") or {}
        step = f"{status.get('phase')}/{(status.get('unpivot') or {}).get('step')}: {status.get('message')}"
        if not steps or steps[-1] != step:
            steps.append(step)
            print(f"  {time.monotonic() - started:6.1f} s  {step}")
        return False

    try:
        wait_for(gone, timeout, f"{cluster} deleted from the cell", cell.log)
    finally:
        print(cell.kubectl("get", "lc,clusters,machines,localmachines", "-A", "-o", "wide", check=False))
    took = time.monotonic() - started
    wait_for(lambda: not machine_pids(cell, cluster), 60, f"every process of {cluster} to end")
    assert not list(machines_dir(cell).glob(f"{cluster}-*")), "a released machine's directory is left"
    moved = "clusters.cluster.x-k8s.io,machines.cluster.x-k8s.io,kubeadmconfigs,localmachines,secrets"
    assert f"/{cluster}" not in cell.kubectl("get", moved, "-A", "-o", "name", check=False)
    wait_for(
        lambda: f"capi-{cluster}" not in cell.kubectl("get", "namespaces", "-o", "name"),
        60,
        f"capi-{cluster} deleted",
    )
    assert not (cell.state_dir / "pivots" / cluster).exists()
    return took


def kubectl(toolchain: Toolchain, kubeconfig: Path, *args: str, check: bool = True) -> str:
    result = subprocess.run(
        [str(toolchain.kubectl), f"--kubeconfig={kubeconfig}", *args],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    if check and result.returncode != 0:
        raise AssertionError(f"kubectl {' '.join(args)}: {result.stderr}")
    return result.stdout


def machine_conditions(
    toolchain: Toolchain, kubeconfig: Path, namespace: str, kind: str, within: float = 180.0
) -> dict[str, dict[str, Any]]:
    """Each Machine's condition ``kind`` in ``namespace``, once every Machine has one. A pivot
    does not carry the Machines' status: the cluster's own controllers write it again."""

    def found() -> dict[str, dict[str, Any]]:
        listed = kubectl(toolchain, kubeconfig, "get", "machines", "-n", namespace, "-o", "json")
        conditions = {
            m["metadata"]["name"]: next(
                (c for c in (m.get("status") or {}).get("conditions") or [] if c.get("type") == kind), {}
            )
            for m in json.loads(listed)["items"]
        }
        assert conditions, f"no Machines in {namespace}"
        assert all(conditions.values()), f"not every Machine has {kind}: {conditions}"
        return conditions

    result: dict[str, dict[str, Any]] = wait_for(found, within, f"every Machine's {kind} condition")
    return result


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, logs: Path | None = None) -> Any:
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except AssertionError as exc:
            last = exc
        else:
            if value:
                return value
        time.sleep(0.5)
    tail = ""
    if logs is not None and logs.exists():
        tail = "\n".join(logs.read_text(errors="replace").splitlines()[-40:])
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last})\n{tail}")


def local_cluster(name: str, cell: str, workers: int = 2, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "cellRef": cell,
        "provider": {"type": "local", "kubernetes": {"version": "1.36.3"}},
        "nodes": {"controlPlane": 1, "workers": workers},
    }
    body.update(spec)
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": name},
        "spec": body,
    }


def start_cell(toolchain: Toolchain, base: Path, name: str = "mgmt") -> Cell:
    cp = ControlPlane.create(
        name, base_dir=base / "control-planes", toolchain=toolchain, controller_manager=True
    )
    # A worker thread: no parent-death signal, the cell behaves like a separate machine.
    thread = threading.Thread(target=cp.start)
    thread.start()
    thread.join()
    cp.install_capi_crds(LOCAL_CAPI_PROVIDERS)
    cp.install_lattice_crds()
    # The management cluster's own CAPI installation (clusterctl init), as processes.
    managers = CapiManagers(cp).start()
    cell = Cell(name, cp, base / "state", free_port(), free_port(), free_port(), managers=managers)
    cell.start_operator()
    cell.wait_working()
    return cell


def _stop(c: Cell) -> None:
    c.stop_operator()
    if c.managers is not None:
        c.managers.stop(unregister=c.control_plane.running)
    stop_all(c.state_dir)
    c.control_plane.stop()


@pytest.fixture(scope="module")
def cell(toolchain: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    """One cell shared by a module's tests (each uses its own cluster names)."""
    c = start_cell(toolchain, tmp_path_factory.mktemp("cell"))
    try:
        yield c
    finally:
        _stop(c)


@pytest.fixture
def own_cell(toolchain: Toolchain, tmp_path: Path) -> Iterator[Cell]:
    """A cell for one test (for tests that destroy it)."""
    c = start_cell(toolchain, tmp_path)
    try:
        yield c
    finally:
        _stop(c)


def install_mesh_crds(toolchain: Toolchain, kubeconfig: Path) -> None:
    """The real Istio/Cilium/Gateway API/external-dns CRDs, as a platform's mesh install would."""
    crds = mesh_crds.load_mesh_crds(mesh_crds.locate_mesh_crds(), mesh_crds.DISCOVERY_CRDS)
    base = [str(toolchain.kubectl), f"--kubeconfig={kubeconfig}"]
    subprocess.run(
        [*base, "apply", "--server-side", "-f", "-"],
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": crds}),
        text=True,
        check=True,
        capture_output=True,
    )
    names = [f"crd/{crd['metadata']['name']}" for crd in crds]
    subprocess.run(
        [*base, "wait", "--for=condition=Established", "--timeout=60s", *names],
        check=True,
        capture_output=True,
    )


def check_addons(toolchain: Toolchain, child: Path, name: str, pool: str) -> None:
    """What every new cluster receives: Cilium (installed with the agent at registration, from
    its chart), its CRDs and the cluster's LB-IPAM pool, and Flux's controllers running and
    Ready (bootstrap step), on the child's own apiserver."""
    config = json.loads(
        kubectl(toolchain, child, "get", "cm", "-n", "kube-system", "cilium-config", "-o", "json")
    )
    assert config["data"]["kube-proxy-replacement"] == "true"
    assert config["data"]["cluster-name"] == name
    assert config["data"]["enable-l2-announcements"] == "true"
    daemonset = json.loads(
        kubectl(toolchain, child, "get", "ds", "-n", "kube-system", "cilium", "-o", "json")
    )
    assert daemonset["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "quay.io/cilium/cilium:v"
    )
    found = json.loads(kubectl(toolchain, child, "get", "ciliumloadbalancerippools", "default", "-o", "json"))
    assert found["spec"]["blocks"] == [{"cidr": pool}]
    kubectl(toolchain, child, "get", "ciliuml2announcementpolicies", "default")

    def flux_ready() -> list[str] | None:
        deployments = json.loads(
            kubectl(toolchain, child, "get", "deploy", "-n", "flux-system", "-o", "json")
        )
        ready = sorted(
            d["metadata"]["name"]
            for d in deployments["items"]
            if (d.get("status") or {}).get("readyReplicas") == 1
        )
        return ready if ready == ["kustomize-controller", "source-controller"] else None

    started = time.monotonic()
    try:
        wait_for(flux_ready, 180, "Flux's source and kustomize controllers Ready on the child")
    except AssertionError:  # show why: the pods, their Events and the Flux containers' logs
        print(kubectl(toolchain, child, "get", "pods", "-A", "-o", "wide"))
        print(kubectl(toolchain, child, "get", "events", "-n", "flux-system"))
        for log in sorted(child.parents[4].glob("*/pods/flux-system_*/container.log")):
            print(log, log.read_text(errors="replace")[-3000:])
        raise
    print(f"{name}: Flux Ready {time.monotonic() - started:.1f} s after the pivot")
    kubectl(toolchain, child, "get", "gitrepositories.source.toolkit.fluxcd.io", "-A")
