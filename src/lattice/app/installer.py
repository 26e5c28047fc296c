"""``lattice install``: make a management cell that manages itself (spec: "Installation Flow").

Steps (each idempotent, so an interrupted install run again picks up where it stopped):

1. a temporary bootstrap cluster: a local control plane under ``<state>/bootstrap``;
2. the CAPI and Lattice CRDs there;
3. the Lattice operator there, as a cell with the local provider;
4. the management LatticeCluster (a root: no cellRef);
5. its agent, delivered through a ClusterResourceSet with a certificate the installer signs with
   the bootstrap cell's CA (a root has no cell to register with);
6. CAPI provisions it, the agent streams to the bootstrap cell, which bootstraps and pivots it;
7. the bootstrap cluster is deleted; the management cell now manages itself.

Machines live in ``<state>/machines`` so that deleting the bootstrap cluster leaves the management
cluster's processes and data alone.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from attrs import define, frozen

from lattice.adapters import local_processes, pki
from lattice.adapters.addons_bundle import RenderError, locate_addons
from lattice.adapters.binaries import Toolchain
from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS
from lattice.adapters.chart import CHART_PATH, locate_operator_chart
from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.local_processes import stop_all
from lattice.app import yamlio
from lattice.app.operator.cell_role import load_or_create_ca
from lattice.domain import (
    addons,
    agent_payload,
    capi,
    crds,
    deploy,
    install_plan,
    models,
    serde,
    validation,
)
from lattice.domain.endpoint import Endpoint
from lattice.domain.operator_command import OperatorOptions, operator_command

OPERATOR_STOP_S = 60.0
"""Seconds the bootstrap operator gets to stop after SIGTERM: its in-flight reconciles (up to
10 s), its cell's streams, then its Cluster API managers (unregistering their webhooks)."""


class InstallError(RuntimeError):
    """A step failed; the message says which, why and what to do."""

    def __init__(self, step: install_plan.Step, reason: str, hint: str) -> None:
        super().__init__(f"step '{step.value}' failed: {reason}\n  what to do: {hint}")
        self.step = step


@frozen
class Progress:
    """Where reports go (the CLI renders them with rich)."""

    step: Callable[[install_plan.Step, str], None]
    detail: Callable[[str], None]


@define
class Installer:
    cluster: dict[str, Any]
    state_dir: Path
    toolchain: Toolchain
    progress: Progress
    timeout_s: float = 600.0
    via: install_plan.Via = install_plan.Via.MANIFESTS

    @property
    def name(self) -> str:
        return str(self.cluster["metadata"]["name"])

    @property
    def bootstrap_dir(self) -> Path:
        return self.state_dir / "bootstrap"

    @property
    def machines_dir(self) -> Path:
        return self.state_dir / "machines"

    @property
    def record(self) -> Path:
        return self.state_dir / "install.json"

    def _load(self) -> dict[str, Any]:
        return json.loads(self.record.read_text()) if self.record.exists() else {}

    def _save(self, **changes: Any) -> dict[str, Any]:
        data = {**self._load(), **changes}
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.record.write_text(json.dumps(data, indent=2))
        return data

    # ------------------------------------------------------------------ steps

    def run(self) -> Path:
        """Install (or resume); return the management cluster's kubeconfig."""
        if self._load().get("done"):
            self.progress.step(install_plan.Step.CLEANUP, "already installed")
            return Path(self._load()["kubeconfig"])
        bootstrap = self._bootstrap_cluster()
        self._crds(bootstrap)
        ports = self._bootstrap_operator(bootstrap)
        self._management_cluster(bootstrap)
        self._agent_delivery(bootstrap, ports)
        kubeconfig = self._pivot(bootstrap)
        self._cleanup(bootstrap)
        self._save(done=True, kubeconfig=str(kubeconfig))
        return kubeconfig

    def _bootstrap_cluster(self) -> ControlPlane:
        step = install_plan.Step.BOOTSTRAP_CLUSTER
        saved = self._load().get("bootstrap")
        if saved:
            cp = _control_plane_from(saved, self.toolchain)
            if cp.ready():
                self.progress.step(step, f"reusing {cp.url}")
                return cp
        self.progress.step(step, "starting etcd, kube-apiserver and kube-controller-manager")
        cp = ControlPlane.create(
            "bootstrap", base_dir=self.bootstrap_dir, toolchain=self.toolchain, controller_manager=True
        )
        _start_detached(cp)
        self._save(bootstrap=_control_plane_record(cp))
        return cp

    def _crds(self, cp: ControlPlane) -> None:
        step = install_plan.Step.CRDS
        self.progress.step(step, f"Cluster API (labelled as clusterctl init does) and Lattice ({self.via})")
        self._save(via=self.via.value)
        cp.install_capi_crds(LOCAL_CAPI_PROVIDERS)
        if self.via is install_plan.Via.MANIFESTS:
            cp.install_lattice_crds()  # what `lattice crds` prints
            return
        try:
            lattice_crds = rendered_crds(self.via)
        except RenderError as exc:
            raise InstallError(step, str(exc), f"check {CHART_PATH} with helm lint") from exc
        cp.apply(lattice_crds)
        cp.wait_established(str(crd["metadata"]["name"]) for crd in lattice_crds)

    def _bootstrap_operator(self, cp: ControlPlane) -> dict[str, int]:
        step = install_plan.Step.BOOTSTRAP_OPERATOR
        saved = self._load().get("operator")
        if saved and _alive(saved["pid"]):
            self.progress.step(step, f"already running (pid {saved['pid']})")
            return dict(saved["ports"])
        ports = {"bootstrap": free_port(), "grpc": free_port(), "health": free_port()}
        log = (self.state_dir / "bootstrap-operator.log").open("ab")
        options = OperatorOptions(
            kubeconfig=str(cp.kubeconfig),
            leader_elect=False,
            cell_host="127.0.0.1",
            bootstrap_port=ports["bootstrap"],
            grpc_port=ports["grpc"],
            health_port=ports["health"],
            state_dir=str(self.bootstrap_dir / "cell"),
            machines_dir=str(self.machines_dir),
            # The contract-shaped local provider and the real Cluster API managers, which
            # the management cluster's own operator runs again after the pivot.
            local_infra=True,
            capi_managers=True,
            operator_via=self.via.value,
        )
        proc = subprocess.Popen(  # noqa: S603 - our own CLI
            operator_command(sys.executable, options),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        self._save(operator={"pid": proc.pid, "ports": ports})
        self.progress.step(step, f"cell serving on 127.0.0.1:{ports['bootstrap']} (pid {proc.pid})")
        _wait(
            (self.bootstrap_dir / "cell" / "pki" / "ca.crt").exists,
            60,
            step,
            "the bootstrap operator did not start",
            self.state_dir / "bootstrap-operator.log",
        )
        return ports

    def _management_cluster(self, cp: ControlPlane) -> None:
        self.progress.step(install_plan.Step.MANAGEMENT_CLUSTER, f"applying LatticeCluster {self.name}")
        cp.apply([self.cluster])

    def _phase(self, cp: ControlPlane) -> str:
        result = cp.kubectl("get", "lc", self.name, "-o", "json", check=False)
        if result.returncode != 0:
            return ""
        return str((json.loads(result.stdout).get("status") or {}).get("phase", ""))

    def _agent_delivery(self, cp: ControlPlane, ports: dict[str, int]) -> None:
        step = install_plan.Step.AGENT_DELIVERY
        phase = self._phase(cp)
        if phase in ("Bootstrapping", "Pivoting", "Ready"):
            self.progress.step(step, f"already delivered (the management cluster is {phase})")
            return
        resource_set = f"clusterresourceset/{self.name}-lattice-agent"
        namespace = models.capi_namespace(self.name)
        if cp.kubectl("get", "-n", namespace, resource_set, check=False).returncode == 0:
            self.progress.step(step, "already delivered")
            return
        ca = load_or_create_ca(self.bootstrap_dir / "cell" / "pki")
        key = pki.generate_key()
        csr = pki.new_csr(key, self.name)
        certificate = ca.sign_agent_csr(pki.csr_to_pem(csr).decode(), self.name)
        params = agent_payload.AgentPayloadParams(
            cluster_name=self.name,
            grpc_endpoint=str(Endpoint("127.0.0.1", ports["grpc"])),
            image="ghcr.io/lattice-dev/lattice:0.1.0",
            certificate_pem=certificate,
            ca_bundle_pem=ca.ca_bundle_pem(),
        )
        manifests = agent_payload.render_agent_manifests(params)
        key_secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": agent_payload.KEY_SECRET, "namespace": agent_payload.NAMESPACE},
            "stringData": {"tls.key": pki.key_to_pem(key).decode()},
        }
        _wait(
            lambda: cp.kubectl("get", "namespace", namespace, check=False).returncode == 0,
            120,
            step,
            f"the operator did not create namespace {namespace}",
            self.state_dir / "bootstrap-operator.log",
        )
        cilium = self._cilium(cp, namespace)
        stream = manifests.rstrip("\n") + "\n---\n" + yamlio.dump_all([key_secret, *cilium])
        cp.apply(install_plan.agent_resource_set(self.name, stream))
        self.progress.step(step, f"ClusterResourceSet {self.name}-lattice-agent in {namespace}")

    def _cilium(self, cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
        """Cilium for the management cluster, rendered by its chart once the infrastructure
        provider has set the cluster's control-plane endpoint (as a cell renders it for a
        registering child: ``CellRuntime.registration_addons``)."""
        step = install_plan.Step.AGENT_DELIVERY
        found: list[tuple[str, int]] = []

        def endpoint() -> bool:
            result = cp.kubectl(
                "get", "clusters.cluster.x-k8s.io", "-n", namespace, self.name, "-o", "json", check=False
            )
            if result.returncode != 0:
                return False
            known = addons.control_plane_endpoint([json.loads(result.stdout)])
            if known is not None:
                found.append(known)
            return known is not None

        _wait(
            endpoint,
            120,
            step,
            "the management cluster has no control-plane endpoint yet",
            self.state_dir / "bootstrap-operator.log",
        )
        bundle = locate_addons()
        parsed = serde.cluster_from_dict(self.cluster)
        if not isinstance(parsed, models.LatticeCluster):  # load_management_cluster validated it
            raise InstallError(step, f"the LatticeCluster does not parse: {parsed}", "check the file")
        spec = parsed.spec
        return bundle.render_cilium(self.name, spec.networking, found[-1], spec.provider.kubernetes.version)

    def _pivot(self, cp: ControlPlane) -> Path:
        step = install_plan.Step.PIVOT
        deadline = time.monotonic() + self.timeout_s
        last = ""
        while time.monotonic() < deadline:
            result = cp.kubectl("get", "lc", self.name, "-o", "json", check=False)
            if result.returncode == 0:
                status = json.loads(result.stdout).get("status") or {}
                phase, message = status.get("phase", "Pending"), status.get("message", "")
                if f"{phase}: {message}" != last:
                    last = f"{phase}: {message}"
                    self.progress.step(step, last)
                if phase == "Ready":
                    return self._management_kubeconfig()
                if phase == "Failed":
                    raise InstallError(step, message, "fix the LatticeCluster and run lattice install again")
            time.sleep(1.0)
        raise InstallError(
            step,
            f"not Ready after {self.timeout_s:.0f}s (last: {last})",
            f"look at {self.state_dir / 'bootstrap-operator.log'}, then run lattice install again to resume",
        )

    def _management_kubeconfig(self) -> Path:
        found = sorted(self.machines_dir.glob(f"{self.name}-control-plane-*/root/etc/kubernetes/admin.conf"))
        if not found:
            raise InstallError(
                install_plan.Step.PIVOT, "no machine for the management cluster", "lattice down, then retry"
            )
        return found[-1]

    def _cleanup(self, cp: ControlPlane) -> None:
        step = install_plan.Step.CLEANUP
        saved = self._load().get("operator")
        if saved and _alive(saved["pid"]):
            pid = saved["pid"]
            # Its cluster is about to go: a stop that takes longer than this (an overloaded
            # host) is cut short, and stop_all below takes the managers it leaves.
            if local_processes.terminate([pid], OPERATOR_STOP_S, alive=lambda: _alive(pid)):
                self.progress.step(
                    step, f"the bootstrap operator did not stop in {OPERATOR_STOP_S:.0f}s: killed"
                )
            log = self.state_dir / "bootstrap-operator.log"
            _wait(lambda: not _alive(pid), 10, step, "the bootstrap operator did not stop", log)
        # The management cluster's agent streamed to the bootstrap cell, which is going away.
        kubeconfig = self._management_kubeconfig()
        subprocess.run(  # noqa: S603 - our kubectl
            [
                str(self.toolchain.kubectl),
                f"--kubeconfig={kubeconfig}",
                "delete",
                "deployment",
                agent_payload.AGENT_NAME,
                "-n",
                agent_payload.NAMESPACE,
                "--ignore-not-found",
                "--wait=false",
            ],
            capture_output=True,
            check=False,
            timeout=60,
        )
        # The control plane first, in its order (its API server gets a short grace): its
        # processes are under the bootstrap directory too, and stop_all would wait its whole
        # timeout for an API server that does not exit on SIGTERM while watches are open.
        cp.stop()
        stop_all(self.bootstrap_dir)
        self.progress.step(step, "bootstrap cluster stopped and removed")
        _remove(self.bootstrap_dir)


def load_cluster(path: Path) -> dict[str, Any]:
    """The management LatticeCluster from a file, validated; errors name the fields."""
    loaded = yamlio.read_documents(path)
    if isinstance(loaded, yamlio.YamlError):
        raise ValueError(loaded.located(path))  # noqa: TRY004 - bad input, not a bug
    if len(loaded) != 1:
        raise ValueError(f"{path}: expected one LatticeCluster, found {len(loaded)} documents")
    doc = yamlio.to_plain(loaded[0].data)
    parsed = serde.cluster_from_dict(doc)
    valid = parsed if isinstance(parsed, list) else validation.validate_cluster(parsed)
    if isinstance(valid, list):
        lines = (f"{path}:{yamlio.line_of(loaded[0], e.path)}: {e}" for e in valid)
        raise ValueError("\n".join(lines))  # noqa: TRY004 - bad input, not a bug
    if valid.spec.cell_ref is not None or valid.spec.parent_config is None:
        raise ValueError(
            f"{path}: a management cluster is a root cell: no spec.cellRef, and spec.parentConfig set"
        )
    return dict(doc)


def rendered_crds(via: install_plan.Via) -> list[dict[str, Any]]:
    """The Lattice CRDs, from :mod:`lattice.domain.crds` or the chart's ``crds/``."""
    if via is install_plan.Via.HELM:
        return locate_operator_chart().crds()
    return crds.all_crds()


def rendered_operator(via: install_plan.Via, operator: deploy.OperatorInstall) -> list[dict[str, Any]]:
    """The operator's Namespace, RBAC and Deployment, from :mod:`lattice.domain.deploy` or
    the chart: the same objects either way (helm template, then applied like the manifests)."""
    if via is install_plan.Via.HELM:
        return locate_operator_chart().operator_objects(operator)
    return operator.manifests()


def cloud_dry_run(
    cluster: dict[str, Any], out_dir: Path, via: install_plan.Via = install_plan.Via.MANIFESTS
) -> list[Path]:
    """Everything install would apply for a cloud management cluster, written to files; the
    operator is the one the bootstrap cell delivers to the management cluster with its agent."""
    parsed = serde.cluster_from_dict(cluster)
    assert not isinstance(parsed, list)
    valid = validation.validate_cluster(parsed)
    assert not isinstance(valid, list)
    out_dir.mkdir(parents=True, exist_ok=True)
    operator = install_plan.child_operator(valid.name, cluster["spec"], None, deploy.DEFAULT_IMAGE)
    files = {
        "00-crds.yaml": rendered_crds(via),
        "10-management-cluster.yaml": [cluster],
        "20-capi.yaml": list(capi.compile_cluster(valid, capi.CompileContext(parent=None))),
        "30-agent-resource-set.yaml": install_plan.agent_resource_set(
            valid.name, "# the agent manifests, signed at install time by the bootstrap cell\n"
        ),
        "40-management-operator.yaml": rendered_operator(via, operator),
    }
    written = []
    for name, objects in files.items():
        path = out_dir / name
        path.write_text(yamlio.dump_all(objects))
        written.append(path)
    return written


# ---------------------------------------------------------------------- helpers


def _start_detached(cp: ControlPlane) -> None:
    """Start from a worker thread (no parent-death signal) and detach: a separate machine."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            cp.start(120.0)
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join()
    if errors:
        raise InstallError(
            install_plan.Step.BOOTSTRAP_CLUSTER, str(errors[0]), "run lattice down, then retry"
        )
    cp.detach()


def _control_plane_record(cp: ControlPlane) -> dict[str, Any]:
    return {
        "dir": str(cp.dir),
        "ports": [cp.etcd_port, cp.etcd_peer_port, cp.apiserver_port, cp.kcm_port],
    }


def _control_plane_from(saved: dict[str, Any], toolchain: Toolchain) -> ControlPlane:
    etcd, peer, apiserver, kcm = saved["ports"]
    return ControlPlane(
        name="bootstrap",
        dir=Path(saved["dir"]),
        toolchain=toolchain,
        controller_manager=False,
        etcd_port=etcd,
        etcd_peer_port=peer,
        apiserver_port=apiserver,
        kcm_port=kcm,
    )


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return not (status.exists() and "\nState:\tZ" in status.read_text())


def _wait(
    predicate: Callable[[], bool], timeout: float, step: install_plan.Step, reason: str, log: Path | None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.5)
    hint = f"look at {log}" if log else "retry"
    raise InstallError(step, reason, f"{hint}; run lattice install again to resume")


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
