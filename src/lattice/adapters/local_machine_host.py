"""Local machines that boot from the bootstrap data the real CABPK rendered (an honest stand-in).

There are no VMs here, so a "machine" is a directory (its root file system for the files the
bootstrap data writes) plus processes. Booting one does what cloud-init does with CABPK's
``cloud-config``: lay every ``write_files`` entry under the machine's root, then run every
``runcmd`` entry in order, verbatim, with ``/bin/sh -c``, except the one kubeadm command, which
is emulated:

* ``kubeadm init``: start the machine's kubelet stand-in (``lattice local-kubelet``,
  :mod:`lattice.adapters.local_kubelet`), which runs etcd, kube-apiserver (on the cluster's
  control-plane endpoint), kube-controller-manager and kube-scheduler as real processes with
  the certificates the real KCP generated (``/etc/kubernetes/pki`` from the bootstrap data);
  write ``admin.conf``; upload ``kubeadm-config``, the bootstrap-token RBAC and
  ``cluster-info``; mark the Node the kubelet registered (with a node certificate signed by
  the cluster CA, as kubeadm writes ``kubelet.conf``) as a control plane.
* ``kubeadm join`` (worker): discover the cluster CA from ``cluster-info``, checked against the
  ``caCertHashes`` pin; TLS-bootstrap a node client certificate with the bootstrap token (a real
  CertificateSigningRequest, approved and signed by the workload's controller-manager); start
  the kubelet stand-in with it, which registers the Node.

The commands run on this host, not in a chroot: ``KUBECONFIG`` (control planes) and
``LATTICE_BOOTSTRAP_DIR`` point into the machine's root, ``kubectl`` is on ``PATH``. The
kubelet stand-in keeps each Node's Lease and Ready condition fresh and reports each mirror pod
as Running and Ready exactly while its real process runs. It runs in a session of its own, so a
machine outlives the provider process that booted it; any host sharing the machines directory
finds it by its record. Nothing here writes a CAPI object.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import ssl
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread
import attrs
import httpx
from cryptography.hazmat.primitives import serialization

from lattice.adapters import local_processes, pki
from lattice.adapters.binaries import Toolchain
from lattice.adapters.controlplane import clean_env
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.domain import kubeadm_node, yaml_text
from lattice.domain.bootstrap_data import (
    BootstrapData,
    BootstrapDataError,
    KubeadmStep,
    kubeadm_documents,
    kubeadm_step,
)
from lattice.domain.endpoint import Endpoint
from lattice.domain.local_infra import Boot, provider_id
from lattice.domain.local_kubelet import (
    CONFIG_FILE,
    MACHINE_FILE,
    STATUS_FILE,
    KubeletConfig,
    KubeletFileError,
    KubeletStatus,
    MachineRecord,
    MachineState,
    Phase,
    StaticControlPlane,
    dump_config,
    dump_record,
    parse_record,
    parse_status,
)
from lattice.domain.local_pods import HOST_EXEC_ENV
from lattice.ports import kube
from lattice.ports.clock import Clock
from lattice.ports.machine_host import MachineBootError

__all__ = ["LocalMachineHost"]

log = logging.getLogger("lattice.local_machines")

HEARTBEAT_SECONDS = 10.0
KUBELET_TIMEOUT_SECONDS = 180.0
STOP_TIMEOUT_SECONDS = 45.0
CSR_TIMEOUT_SECONDS = 60.0
COMMAND_TIMEOUT_SECONDS = 600.0
KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"


@attrs.frozen
class _HostExec:
    """How a provider that runs in a pod started from the image reaches this host, where its
    machines run (``LATTICE_HOST_EXEC``, set by the kubelet stand-in; docs/local-provider.md):
    the host's root as the pod sees it, the host's Python running Lattice, its environment."""

    root: str
    python: str
    env: Mapping[str, str]

    @staticmethod
    def from_env() -> _HostExec | None:
        raw = os.environ.get(HOST_EXEC_ENV)
        if not raw:
            return None
        doc = json.loads(raw)
        return _HostExec(root=str(doc["root"]), python=str(doc["python"]), env=dict(doc["env"]))

    def enter(self, cwd: Path) -> Any:
        """A ``preexec_fn`` that moves the new process onto the host (chroot), in ``cwd``."""

        def enter() -> None:  # pragma: no cover - runs in the child between fork and exec
            os.chroot(self.root)
            os.chdir(cwd)

        return enter


@attrs.frozen
class _Machine:
    """A machine that has booted: its kubelet stand-in's process and its role."""

    name: str
    pid: int
    control_plane: bool


def _under(root: Path, path: str) -> Path:
    target = (root / path.lstrip("/")).resolve()
    if not target.is_relative_to(root.resolve()):
        raise MachineBootError(f"bootstrap file {path} escapes the machine's root")
    return target


class LocalMachineHost:
    """The :class:`lattice.ports.machine_host.MachineHost` of this host.

    Every machine lives in ``<machines_dir>/<name>``; its record there (``machine.json``:
    the kubelet's pid, booted or failed) lets any host that shares the directory (this
    cluster's provider after a pivot, or this one after a restart) find the machines that run.
    """

    def __init__(
        self,
        toolchain: Toolchain,
        machines_dir: Path,
        clock: Clock,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
        python: str = sys.executable,
    ) -> None:
        self.toolchain = toolchain
        self.machines_dir = machines_dir
        self.clock = clock
        self.heartbeat_seconds = heartbeat_seconds
        self.host = _HostExec.from_env()
        self.python = self.host.python if self.host is not None else python
        self._locks: dict[str, asyncio.Lock] = {}
        self._spawned: dict[int, subprocess.Popen[bytes]] = {}  # kubelets started here, to reap

    # -- the port ---------------------------------------------------------------------------

    def booted(self, machine: str) -> bool:
        record = self._record(machine) or MachineRecord()
        return record.state is MachineState.BOOTED and self._alive(record.pid, self.machine_dir(machine))

    async def boot(self, request: Boot, data: BootstrapData) -> None:
        lock = self._locks.setdefault(request.machine, asyncio.Lock())
        async with lock:
            record = self._record(request.machine) or MachineRecord()
            if record.state is MachineState.FAILED:
                # As a VM whose cloud-init failed: it stays failed until it is deleted.
                raise MachineBootError(record.message)
            if self.booted(request.machine):
                return
            try:
                machine = await self._boot(request, data)
            except (MachineBootError, BootstrapDataError, kube.KubeError, OSError) as exc:
                message = f"machine {request.machine} failed to boot: {exc}"[:4000]
                self._update_record(request.machine, state=MachineState.FAILED, message=message)
                raise MachineBootError(message) from exc
            self._update_record(machine.name, state=MachineState.BOOTED, message="")

    async def stop(self, machine: str) -> bool:
        directory = self.machine_dir(machine)
        found = directory.exists()
        record = self._record(machine)
        if record is not None:
            await anyio.to_thread.run_sync(self._terminate, record.pid, directory)
            self._record_path(machine).unlink(missing_ok=True)
        # A released machine's disk goes with it, as a cloud's does.
        await anyio.to_thread.run_sync(shutil.rmtree, directory, True)
        return found

    async def close(self) -> None:
        """Nothing to stop: the machines run on, each with its own kubelet stand-in."""

    # -- records ----------------------------------------------------------------------------

    def _record_path(self, machine: str) -> Path:
        return self.machine_dir(machine) / MACHINE_FILE

    def _record(self, machine: str) -> MachineRecord | None:
        try:
            return parse_record(self._record_path(machine).read_text())
        except (OSError, KubeletFileError):
            return None

    def _update_record(self, machine: str, **values: Any) -> None:
        path = self._record_path(machine)
        record = attrs.evolve(self._record(machine) or MachineRecord(), **values)
        partial = path.with_suffix(".partial")
        partial.write_text(dump_record(record))
        os.replace(partial, path)

    # -- booting ----------------------------------------------------------------------------

    def machine_dir(self, machine: str) -> Path:
        return self.machines_dir / machine

    async def _boot(self, request: Boot, data: BootstrapData) -> _Machine:
        mdir = self.machine_dir(request.machine)
        root = mdir / "root"
        root.mkdir(parents=True, exist_ok=True)
        for entry in data.files:
            target = _under(root, entry.path)
            target.parent.mkdir(parents=True, exist_ok=True)
            with target.open("ab" if entry.append else "wb") as handle:
                handle.write(entry.content)
            target.chmod(entry.permissions)
        machine: _Machine | None = None
        for index, command in enumerate(data.commands):
            step = kubeadm_step(command)
            if step is not None:
                if machine is not None:
                    raise MachineBootError(f"runcmd[{index}]: a second kubeadm command")
                machine = await (self._init if step.phase == "init" else self._join)(request, root, step)
                if step.success_path:
                    success = _under(root, step.success_path)
                    success.parent.mkdir(parents=True, exist_ok=True)
                    success.write_text("success\n")
                continue
            await self._run(request.machine, index, command, root, machine)
        if machine is None:
            raise MachineBootError("the bootstrap data runs no kubeadm init or join")
        return machine

    def _host_env(self) -> tuple[dict[str, str], str]:
        """The environment of a process started on the host, and the host's binaries."""
        if self.host is not None:
            env = dict(self.host.env)
            return env, env.get("LATTICE_BIN_DIR", str(self.toolchain.bin_dir))
        return clean_env(), str(self.toolchain.bin_dir)

    def _env(self, root: Path, machine: _Machine | None) -> dict[str, str]:
        env, bin_dir = self._host_env()
        env["PATH"] = f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["LATTICE_BOOTSTRAP_DIR"] = str(root / "etc" / "lattice")
        env["LATTICE_MACHINE_ROOT"] = str(root)
        admin = root / "etc" / "kubernetes" / "admin.conf"
        if machine is not None and machine.control_plane and admin.is_file():
            env["KUBECONFIG"] = str(admin)
        return env

    async def _run(self, name: str, index: int, command: str, root: Path, machine: _Machine | None) -> None:
        log_path = self.machine_dir(name) / "bootstrap.log"
        with log_path.open("ab") as out:
            out.write(f"==> runcmd[{index}]\n".encode())
            out.flush()
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh",
                "-c",
                command,
                cwd=root,
                env=self._env(root, machine),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=None if self.host is None else self.host.enter(root),
            )
            try:
                code = await asyncio.wait_for(proc.wait(), COMMAND_TIMEOUT_SECONDS)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise MachineBootError(
                    f"runcmd[{index}] timed out after {COMMAND_TIMEOUT_SECONDS:.0f}s"
                ) from None
        if code != 0:
            tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
            raise MachineBootError(f"runcmd[{index}] exited with code {code}:\n{tail}")

    async def _init(self, request: Boot, root: Path, step: KubeadmStep) -> _Machine:
        """kubeadm init: certificates are laid out already; the kubelet runs the static pods,
        then kubeadm uploads its config, the bootstrap-token RBAC and ``cluster-info``, and
        marks the Node as a control plane once the kubelet has registered it."""
        docs = kubeadm_documents(_under(root, step.config_path).read_bytes())
        cluster_configuration = docs.get("ClusterConfiguration")
        if cluster_configuration is None:
            raise MachineBootError(f"{step.config_path} holds no ClusterConfiguration")
        init = docs.get("InitConfiguration") or {}
        pki_dir = root / "etc" / "kubernetes" / "pki"
        ca_pem = (pki_dir / "ca.crt").read_bytes()
        server = Endpoint(*request.endpoint).url("https")
        # kubeadm writes kubelet.conf with a node certificate signed by the cluster CA.
        ca = pki.CertificateAuthority(
            cert=pki.cert_from_pem(ca_pem), key=pki.key_from_pem((pki_dir / "ca.key").read_bytes())
        )
        node_cert = ca.issue(f"system:node:{request.machine}", organizations=["system:nodes"], client=True)
        static = StaticControlPlane(
            dir=str(self.machine_dir(request.machine) / "control-plane"),
            pki_dir=str(pki_dir),
            apiserver_port=request.endpoint[1],
        )
        pid = self._start_kubelet(
            request, root, server, ca_pem, node_cert.cert_pem, node_cert.key_pem, init, static
        )
        status = await self._wait_kubelet(request.machine, pid, Phase.CONTROL_PLANE_READY)
        admin = root / "etc" / "kubernetes" / "admin.conf"
        pki.write_private_file(admin, Path(status.admin_kubeconfig).read_bytes())
        admin_api = await Kr8sKube.connect(str(admin))
        for obj in [
            kubeadm_node.kubeadm_config(cluster_configuration),
            *kubeadm_node.bootstrap_rbac(),
            kubeadm_node.cluster_info(server, ca_pem),
        ]:
            await admin_api.apply(obj, kubeadm_node.FIELD_MANAGER)
        await self._wait_kubelet(request.machine, pid, Phase.NODE_REGISTERED)
        # kubeadm's mark-control-plane phase, as the admin.
        await admin_api.apply(kubeadm_node.mark_control_plane(request.machine), kubeadm_node.FIELD_MANAGER)
        return _Machine(name=request.machine, pid=pid, control_plane=True)

    async def _join(self, request: Boot, root: Path, step: KubeadmStep) -> _Machine:
        if request.control_plane:
            raise MachineBootError(
                "joining a control-plane machine (KubeadmControlPlane replicas > 1) is not emulated yet"
            )
        docs = kubeadm_documents(_under(root, step.config_path).read_bytes())
        join = docs.get("JoinConfiguration")
        if join is None:
            raise MachineBootError(f"{step.config_path} holds no JoinConfiguration")
        discovery = ((join.get("discovery") or {}).get("bootstrapToken")) or {}
        token = str(discovery.get("token") or "")
        endpoint = str(discovery.get("apiServerEndpoint") or "")
        pins = [str(p) for p in discovery.get("caCertHashes") or []]
        if not token or not endpoint:
            raise MachineBootError("the JoinConfiguration has no bootstrap token discovery")
        server = f"https://{endpoint}"
        ca_pem = await self._discover_ca(server, pins)
        key = pki.generate_key()
        csr = pki.new_csr(key, f"system:node:{request.machine}", organizations=["system:nodes"])
        cert_pem = await self._tls_bootstrap(server, ca_pem, token, request.machine, pki.csr_to_pem(csr))
        pid = self._start_kubelet(request, root, server, ca_pem, cert_pem, pki.key_to_pem(key), join, None)
        await self._wait_kubelet(request.machine, pid, Phase.NODE_REGISTERED)
        return _Machine(name=request.machine, pid=pid, control_plane=False)

    async def _discover_ca(self, server: str, pins: list[str]) -> bytes:
        """kubeadm's token discovery: read ``cluster-info`` without trusting the server yet, then
        trust its CA only if it matches a ``caCertHashes`` pin."""
        async with httpx.AsyncClient(verify=False, trust_env=False, timeout=10) as client:  # noqa: S501 - pinned below
            response = await client.get(f"{server}/api/v1/namespaces/kube-public/configmaps/cluster-info")
        if response.status_code != 200:
            raise MachineBootError(f"cluster-info: HTTP {response.status_code}: {response.text[:200]}")
        config = yaml_text.load(response.json()["data"]["kubeconfig"])
        ca_pem = base64.b64decode(config["clusters"][0]["cluster"]["certificate-authority-data"])
        spki = (
            pki.cert_from_pem(ca_pem)
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
        if kubeadm_node.ca_cert_hash(spki) not in pins:
            raise MachineBootError("the cluster CA of cluster-info matches none of the caCertHashes pins")
        return ca_pem

    async def _tls_bootstrap(
        self, server: str, ca_pem: bytes, token: str, name: str, csr_pem: bytes
    ) -> bytes:
        context = ssl.create_default_context(cadata=ca_pem.decode())
        headers = {"Authorization": f"Bearer {token}"}
        csr_name = f"node-csr-{name}"
        body = {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {"name": csr_name},
            "spec": {
                "request": base64.b64encode(csr_pem).decode(),
                "signerName": KUBELET_SIGNER,
                "usages": ["digital signature", "client auth"],
            },
        }
        url = f"{server}/apis/certificates.k8s.io/v1/certificatesigningrequests"
        async with httpx.AsyncClient(verify=context, trust_env=False, timeout=10, headers=headers) as client:
            created = await client.post(url, json=body)
            if created.status_code not in (201, 409):
                raise MachineBootError(
                    f"creating the node's CSR: HTTP {created.status_code}: {created.text[:300]}"
                )
            deadline = asyncio.get_running_loop().time() + CSR_TIMEOUT_SECONDS
            while True:
                current = await client.get(f"{url}/{csr_name}")
                if current.status_code == 200:
                    cert = (current.json().get("status") or {}).get("certificate")
                    if cert:
                        return base64.b64decode(cert)
                if asyncio.get_running_loop().time() > deadline:
                    raise MachineBootError(
                        f"the node's CSR {csr_name} was not signed in {CSR_TIMEOUT_SECONDS:.0f}s"
                    )
                await asyncio.sleep(0.5)

    def _start_kubelet(
        self,
        request: Boot,
        root: Path,
        server: str,
        ca_pem: bytes,
        cert_pem: bytes,
        key_pem: bytes,
        config: Mapping[str, Any],
        static: StaticControlPlane | None,
    ) -> int:
        """Write ``kubelet.conf`` and the kubelet's config, then start the machine's kubelet
        stand-in in a session of its own: it outlives this process, as a machine does."""
        mdir = self.machine_dir(request.machine)
        kubelet_conf = root / "etc" / "kubernetes" / "kubelet.conf"
        text = yaml_text.kubeconfig(
            "cluster",
            url=server,
            ca=ca_pem,
            cert=cert_pem,
            key=key_pem,
            user=f"system:node:{request.machine}",
        )
        pki.write_private_file(kubelet_conf, text.encode())
        extra = ((config.get("nodeRegistration") or {}).get("kubeletExtraArgs")) or []
        kubelet_config = KubeletConfig(
            node=request.machine,
            provider_id=provider_id(request.cluster, request.machine),
            version=request.version,
            kubeconfig=str(kubelet_conf),
            labels=kubeadm_node.node_labels(extra),
            heartbeat_seconds=self.heartbeat_seconds,
            control_plane=static,
        )
        (mdir / CONFIG_FILE).write_text(dump_config(kubelet_config))
        (mdir / STATUS_FILE).unlink(missing_ok=True)
        env, _ = self._host_env()
        if self.host is None:
            env.update(
                LATTICE_BIN_DIR=str(self.toolchain.bin_dir), LATTICE_CRD_DIR=str(self.toolchain.crd_dir)
            )
        env["PYTHONUNBUFFERED"] = "1"
        argv = [self.python, "-m", "lattice.app.cli", "local-kubelet", "--machine-dir", str(mdir)]
        with (mdir / "kubelet.log").open("ab") as out:
            popen = subprocess.Popen(  # noqa: S603 - our own program
                argv,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=None if self.host is None else self.host.enter(mdir),  # noqa: PLW1509
            )
        self._spawned[popen.pid] = popen
        self._update_record(
            request.machine, pid=popen.pid, state=MachineState.BOOTING, control_plane=static is not None
        )
        return popen.pid

    async def _wait_kubelet(self, machine: str, pid: int, phase: Phase) -> KubeletStatus:
        """Wait until the kubelet reports ``phase``; its log tail if it fails or exits."""
        order = [Phase.STARTING, Phase.CONTROL_PLANE_READY, Phase.NODE_REGISTERED]
        mdir = self.machine_dir(machine)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + KUBELET_TIMEOUT_SECONDS
        while True:
            status: KubeletStatus | None = None
            with contextlib.suppress(OSError, KubeletFileError):
                status = parse_status((mdir / STATUS_FILE).read_text())
            if status is not None and status.phase is Phase.FAILED:
                raise MachineBootError(f"the kubelet failed: {status.message}\n{self._kubelet_log(machine)}")
            if status is not None and order.index(status.phase) >= order.index(phase):
                return status
            if not self._alive(pid, mdir):
                raise MachineBootError(f"the kubelet exited\n{self._kubelet_log(machine)}")
            if loop.time() > deadline:
                raise MachineBootError(
                    f"the kubelet did not reach {phase.value} in {KUBELET_TIMEOUT_SECONDS:.0f}s\n"
                    f"{self._kubelet_log(machine)}"
                )
            await asyncio.sleep(0.2)

    def _kubelet_log(self, machine: str, lines: int = 15) -> str:
        try:
            text = (self.machine_dir(machine) / "kubelet.log").read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    # -- processes --------------------------------------------------------------------------

    def _alive(self, pid: object, mdir: Path) -> bool:
        """Whether ``pid`` is this machine's kubelet and has not exited."""
        if not isinstance(pid, int):
            return False
        popen = self._spawned.get(pid)
        if popen is not None:
            # Started here: its exit status is the truth. (Its command line is the parent's
            # until it has exec'd, so reading /proc right after the spawn would say "not it".)
            return popen.poll() is None
        return _is_kubelet_of(pid, mdir)

    def _terminate(self, pid: object, mdir: Path) -> None:
        if not isinstance(pid, int) or not self._alive(pid, mdir):
            return
        # SIGKILL after the timeout: its static pods die with it (parent-death signal).
        local_processes.terminate(
            [pid], STOP_TIMEOUT_SECONDS, group=True, alive=lambda: self._alive(pid, mdir)
        )
        popen = self._spawned.pop(pid, None)
        if popen is not None:
            popen.wait()

    def machines(self) -> list[str]:
        """The machines with a record here: booted, booting or failed, and not stopped."""
        base = self.machines_dir
        if not base.is_dir():
            return []
        return sorted(d.name for d in base.iterdir() if (d / MACHINE_FILE).is_file())

    def pids(self) -> list[int]:
        """The process ids of every running machine: each kubelet stand-in and its static pods."""
        out: list[int] = []
        for machine in self.machines():
            pid = (self._record(machine) or MachineRecord()).pid
            if pid is not None and self._alive(pid, self.machine_dir(machine)):
                out.extend([pid, *_descendants(pid)])
        return out


def _is_kubelet_of(pid: int, mdir: Path) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    state = stat.rpartition(")")[2].split()[0]
    return state not in ("Z", "X") and b"local-kubelet" in cmdline and str(mdir).encode() in cmdline


def _descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    out: list[int] = []
    todo = [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out
