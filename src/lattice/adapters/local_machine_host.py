"""Local machines that boot from the bootstrap data the real CABPK rendered (an honest stand-in).

There are no VMs here, so a "machine" is a directory (its root file system for the files the
bootstrap data writes) plus processes. Booting one does what cloud-init does with CABPK's
``cloud-config``: lay every ``write_files`` entry under the machine's root, then run every
``runcmd`` entry in order, verbatim, with ``/bin/sh -c``, except the one kubeadm command, which
is emulated:

* ``kubeadm init``: start etcd, kube-apiserver (on the cluster's control-plane endpoint),
  kube-controller-manager and kube-scheduler as real processes with the certificates the real
  KCP generated (``/etc/kubernetes/pki`` from the bootstrap data); write ``admin.conf``; upload
  ``kubeadm-config``, the bootstrap-token RBAC and ``cluster-info``; register the Node with a
  node certificate signed by the cluster CA (as kubeadm writes ``kubelet.conf``); mark it as a
  control plane; create the mirror pods of the four static pods.
* ``kubeadm join`` (worker): discover the cluster CA from ``cluster-info``, checked against the
  ``caCertHashes`` pin; TLS-bootstrap a node client certificate with the bootstrap token (a real
  CertificateSigningRequest, approved and signed by the workload's controller-manager); register
  the Node with it.

The commands run on this host, not in a chroot: ``KUBECONFIG`` (control planes) and
``LATTICE_BOOTSTRAP_DIR`` point into the machine's root, ``kubectl`` is on ``PATH``. A kubelet
stand-in then keeps each Node's Lease and Ready condition fresh and reports each mirror pod as
Running and Ready exactly while its real process runs. Nothing here writes a CAPI object.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import logging
import os
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread
import attrs
import httpx
from cryptography.hazmat.primitives import serialization
from ruamel.yaml import YAML

from lattice.adapters import pki
from lattice.adapters.binaries import Toolchain
from lattice.adapters.controlplane import ControlPlane, ControlPlaneError
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.domain import conditions, kubeadm_node, yaml_text
from lattice.domain.bootstrap_data import (
    BootstrapData,
    BootstrapDataError,
    KubeadmStep,
    kubeadm_documents,
    kubeadm_step,
)
from lattice.domain.local_infra import Boot, provider_id
from lattice.ports import kube
from lattice.ports.clock import Clock
from lattice.ports.machine_host import MachineBootError

__all__ = ["LocalMachineHost"]

log = logging.getLogger("lattice.local_machines")

HEARTBEAT_SECONDS = 10.0
CSR_TIMEOUT_SECONDS = 60.0
COMMAND_TIMEOUT_SECONDS = 600.0
KUBELET_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"


@attrs.define(eq=False)
class _Machine:
    name: str
    node_api: Kr8sKube
    version: str
    node_uid: str
    mirror_pods: bool = False


def _under(root: Path, path: str) -> Path:
    target = (root / path.lstrip("/")).resolve()
    if not target.is_relative_to(root.resolve()):
        raise MachineBootError(f"bootstrap file {path} escapes the machine's root")
    return target


class LocalMachineHost:
    """The :class:`lattice.ports.machine_host.MachineHost` of this host."""

    def __init__(
        self,
        toolchain: Toolchain,
        state_dir: Path,
        clock: Clock,
        *,
        heartbeat_seconds: float = HEARTBEAT_SECONDS,
    ) -> None:
        self.toolchain = toolchain
        self.state_dir = state_dir
        self.clock = clock
        self.heartbeat_seconds = heartbeat_seconds
        self._machines: dict[str, _Machine] = {}
        self._failed: dict[str, str] = {}
        # Control planes started by a boot, successful or not: a machine whose bootstrap failed
        # keeps running (as a VM does when cloud-init fails) until its LocalMachine goes.
        self._control_planes: dict[str, ControlPlane] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self._heartbeat: asyncio.Task[None] | None = None

    # -- the port ---------------------------------------------------------------------------

    def booted(self, machine: str) -> bool:
        return machine in self._machines

    async def boot(self, request: Boot, data: BootstrapData) -> None:
        lock = self._locks.setdefault(request.machine, asyncio.Lock())
        async with lock:
            if request.machine in self._machines:
                return
            if request.machine in self._failed:
                raise MachineBootError(self._failed[request.machine])
            try:
                machine = await self._boot(request, data)
            except (MachineBootError, BootstrapDataError, ControlPlaneError, kube.KubeError, OSError) as exc:
                message = f"machine {request.machine} failed to boot: {exc}"[:4000]
                self._failed[request.machine] = message
                raise MachineBootError(message) from exc
            self._machines[request.machine] = machine
            self._ensure_heartbeat()

    async def stop(self, machine: str) -> None:
        self._machines.pop(machine, None)
        self._failed.pop(machine, None)
        control_plane = self._control_planes.pop(machine, None)
        if control_plane is not None:
            await anyio.to_thread.run_sync(control_plane.stop)

    async def close(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            await asyncio.gather(self._heartbeat, return_exceptions=True)
            self._heartbeat = None

    # -- booting ----------------------------------------------------------------------------

    def machine_dir(self, machine: str) -> Path:
        return self.state_dir / "machines" / machine

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

    def _env(self, root: Path, machine: _Machine | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["PATH"] = f"{self.toolchain.bin_dir}{os.pathsep}{env.get('PATH', '')}"
        env["KUBERC"] = "off"
        env["LATTICE_BOOTSTRAP_DIR"] = str(root / "etc" / "lattice")
        env["LATTICE_MACHINE_ROOT"] = str(root)
        admin = root / "etc" / "kubernetes" / "admin.conf"
        if machine is not None and machine.name in self._control_planes and admin.is_file():
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
        docs = kubeadm_documents(_under(root, step.config_path).read_bytes())
        cluster_configuration = docs.get("ClusterConfiguration")
        if cluster_configuration is None:
            raise MachineBootError(f"{step.config_path} holds no ClusterConfiguration")
        init = docs.get("InitConfiguration") or {}
        pki_dir = root / "etc" / "kubernetes" / "pki"
        cp = ControlPlane(
            name=request.machine,
            dir=self.machine_dir(request.machine) / "control-plane",
            toolchain=self.toolchain,
            controller_manager=True,
            kubeadm=True,
            pki_source=pki_dir,
            pinned_apiserver_port=request.endpoint[1],
        )
        self._control_planes[request.machine] = cp
        await anyio.to_thread.run_sync(lambda: cp.start(120.0))
        admin = root / "etc" / "kubernetes" / "admin.conf"
        pki.write_private_file(admin, cp.kubeconfig.read_bytes())
        admin_api = await Kr8sKube.connect(str(admin))
        ca_pem = (pki_dir / "ca.crt").read_bytes()
        server = f"https://{request.endpoint[0]}:{request.endpoint[1]}"
        for obj in [
            kubeadm_node.kubeadm_config(cluster_configuration),
            *kubeadm_node.bootstrap_rbac(),
            kubeadm_node.cluster_info(server, ca_pem),
        ]:
            await admin_api.apply(obj, kubeadm_node.FIELD_MANAGER)
        # kubeadm writes kubelet.conf with a node certificate signed by the cluster CA.
        ca = pki.CertificateAuthority(
            cert=pki.cert_from_pem(ca_pem), key=pki.key_from_pem((pki_dir / "ca.key").read_bytes())
        )
        node_cert = ca.issue(f"system:node:{request.machine}", organizations=["system:nodes"], client=True)
        machine = await self._kubelet(
            request, root, server, ca_pem, node_cert.cert_pem, node_cert.key_pem, init
        )
        # kubeadm's mark-control-plane phase, as the admin.
        await admin_api.apply(kubeadm_node.mark_control_plane(request.machine), kubeadm_node.FIELD_MANAGER)
        for component in kubeadm_node.CONTROL_PLANE_COMPONENTS:
            pod = kubeadm_node.mirror_pod(
                component, request.machine, node_uid=machine.node_uid, command=[component]
            )
            with contextlib.suppress(kube.Conflict):
                await machine.node_api.create(pod)
        machine.mirror_pods = True
        await self._report(machine)
        return machine

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
        return await self._kubelet(request, root, server, ca_pem, cert_pem, pki.key_to_pem(key), join)

    async def _discover_ca(self, server: str, pins: list[str]) -> bytes:
        """kubeadm's token discovery: read ``cluster-info`` without trusting the server yet, then
        trust its CA only if it matches a ``caCertHashes`` pin."""
        async with httpx.AsyncClient(verify=False, trust_env=False, timeout=10) as client:  # noqa: S501 - pinned below
            response = await client.get(f"{server}/api/v1/namespaces/kube-public/configmaps/cluster-info")
        if response.status_code != 200:
            raise MachineBootError(f"cluster-info: HTTP {response.status_code}: {response.text[:200]}")
        config = YAML(typ="safe", pure=True).load(response.json()["data"]["kubeconfig"])
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

    async def _kubelet(
        self,
        request: Boot,
        root: Path,
        server: str,
        ca_pem: bytes,
        cert_pem: bytes,
        key_pem: bytes,
        config: Mapping[str, Any],
    ) -> _Machine:
        """Write ``kubelet.conf`` and register the Node with the node's own credentials."""
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
        node_api = await Kr8sKube.connect(str(kubelet_conf))
        extra = ((config.get("nodeRegistration") or {}).get("kubeletExtraArgs")) or []
        node = kubeadm_node.node(
            request.machine,
            provider_id=provider_id(request.cluster, request.machine),
            labels=kubeadm_node.node_labels(extra),
        )
        registered = await node_api.apply(node, kubeadm_node.KUBELET_FIELD_MANAGER)
        machine = _Machine(
            node_uid=str(registered["metadata"]["uid"]),
            name=request.machine,
            node_api=node_api,
            version=request.version,
        )
        await self._report(machine)
        return machine

    # -- the kubelet stand-in ---------------------------------------------------------------

    async def _report(self, machine: _Machine) -> None:
        moment = self.clock.now()
        now = conditions.rfc3339(moment)
        api = machine.node_api
        await api.apply_status(
            kubeadm_node.node_status(
                machine.name, address="127.0.0.1", version=machine.version, kubelet_port=0, now=now
            ),
            kubeadm_node.KUBELET_FIELD_MANAGER,
        )
        micro = moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
        await api.apply(kubeadm_node.lease(machine.name, now=micro), kubeadm_node.KUBELET_FIELD_MANAGER)
        control_plane = self._control_planes.get(machine.name)
        if control_plane is None or not machine.mirror_pods:
            return
        running = set(control_plane.running_processes())
        for component in kubeadm_node.CONTROL_PLANE_COMPONENTS:
            try:
                await api.apply_status(
                    kubeadm_node.mirror_pod_status(
                        component, machine.name, running=component in running, now=now
                    ),
                    kubeadm_node.KUBELET_FIELD_MANAGER,
                )
            except kube.NotFound:
                continue

    def _ensure_heartbeat(self) -> None:
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.create_task(self._heartbeat_loop(), name="local-machine-heartbeats")

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.heartbeat_seconds)
            for machine in list(self._machines.values()):
                try:
                    await self._report(machine)
                except (kube.KubeError, OSError) as exc:
                    # A machine whose apiserver is down reports nothing, as a real kubelet.
                    log.info("heartbeat of %s failed: %s", machine.name, exc)

    def machines(self) -> list[str]:
        """The machines that have booted here, or failed to and still run, and were not stopped."""
        return sorted({*self._machines, *self._control_planes})

    def pids(self) -> list[int]:
        """The process ids of every running machine process (control planes)."""
        return [pid for cp in self._control_planes.values() for pid in cp.pids()]
