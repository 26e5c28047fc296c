"""The kubelet stand-in of one local machine, run as its own process (``lattice local-kubelet``).

There is no container runtime here, so this is not a kubelet; it does for Cluster API what a
kubeadm node's kubelet does, and no more (docs/local-provider.md):

* on a control-plane machine it runs the static pods kubeadm would have written manifests
  for (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) as real processes, with
  the certificates the real KCP generated, and the apiserver on the cluster's endpoint;
* it registers the Node with the node's own client certificate (``kubelet.conf``) and keeps
  its Lease and Ready condition fresh;
* it creates the four mirror pods and reports each Running and Ready exactly while its process
  runs, so a dead etcd shows as an unhealthy etcd pod.

The static pods are its children and die with it (a parent-death signal), as a machine's
processes die with the machine. On SIGTERM it stops them and exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from pathlib import Path

from lattice.adapters.binaries import Toolchain
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.domain import conditions, kubeadm_node
from lattice.domain.local_kubelet import STATUS_FILE, KubeletConfig, KubeletStatus, Phase, dump_status
from lattice.ports import kube
from lattice.ports.clock import Clock

__all__ = ["LocalKubelet", "write_status"]

log = logging.getLogger("lattice.local_kubelet")

REGISTER_TIMEOUT_SECONDS = 120.0


def write_status(machine_dir: Path, status: KubeletStatus) -> None:
    """Replace the status file in one step (the host may read it at any moment)."""
    target = machine_dir / STATUS_FILE
    partial = target.with_suffix(".partial")
    partial.write_text(dump_status(status))
    os.replace(partial, target)


class LocalKubelet:
    def __init__(self, config: KubeletConfig, machine_dir: Path, toolchain: Toolchain, clock: Clock) -> None:
        self.config = config
        self.machine_dir = machine_dir
        self.toolchain = toolchain
        self.clock = clock
        self.control_plane: ControlPlane | None = None
        self.node_uid = ""

    def _status(self, phase: Phase, message: str = "") -> None:
        admin = str(self.control_plane.kubeconfig) if self.control_plane is not None else ""
        write_status(
            self.machine_dir,
            KubeletStatus(phase=phase, message=message, admin_kubeconfig=admin, node_uid=self.node_uid),
        )

    def fail(self, message: str) -> None:
        self._status(Phase.FAILED, message[-4000:])

    def start_static_pods(self, timeout: float = 120.0) -> None:
        """Start the control plane's processes and wait until the apiserver is ready.

        Call it from the main thread: the processes then die with this one."""
        self._status(Phase.STARTING)
        spec = self.config.control_plane
        if spec is None:
            return
        self.control_plane = ControlPlane(
            name=self.config.node,
            dir=Path(spec.dir),
            toolchain=self.toolchain,
            controller_manager=True,
            kubeadm=True,
            pki_source=Path(spec.pki_dir),
            pinned_apiserver_port=spec.apiserver_port,
        )
        self.control_plane.start(timeout)
        self._status(Phase.CONTROL_PLANE_READY)

    def stop_static_pods(self) -> None:
        if self.control_plane is not None:
            self.control_plane.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Register the Node, create the mirror pods, then report until ``stop`` is set."""
        api = await Kr8sKube.connect(self.config.kubeconfig)
        node = kubeadm_node.node(
            self.config.node, provider_id=self.config.provider_id, labels=self.config.labels
        )
        loop = asyncio.get_running_loop()
        deadline = loop.time() + REGISTER_TIMEOUT_SECONDS
        while True:
            try:
                registered = await api.apply(node, kubeadm_node.KUBELET_FIELD_MANAGER)
                break
            except (kube.KubeError, OSError) as exc:
                if loop.time() > deadline:
                    raise RuntimeError(f"could not register Node {self.config.node}: {exc}") from exc
                await asyncio.sleep(1.0)
        self.node_uid = str(registered["metadata"]["uid"])
        await self._report(api)
        if self.control_plane is not None:
            for component in kubeadm_node.CONTROL_PLANE_COMPONENTS:
                pod = kubeadm_node.mirror_pod(
                    component, self.config.node, node_uid=self.node_uid, command=[component]
                )
                with contextlib.suppress(kube.Conflict):
                    await api.create(pod)
            await self._report(api)
        self._status(Phase.NODE_REGISTERED)
        log.info("node registered", extra={"node": self.config.node})
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.config.heartbeat_seconds)
            if stop.is_set():
                break
            try:
                await self._report(api)
            except (kube.KubeError, OSError) as exc:
                # A machine whose apiserver is down reports nothing, as a real kubelet.
                log.info("heartbeat failed: %s", exc, extra={"node": self.config.node})

    async def _report(self, api: Kr8sKube) -> None:
        moment = self.clock.now()
        now = conditions.rfc3339(moment)
        name = self.config.node
        await api.apply_status(
            kubeadm_node.node_status(
                name, address="127.0.0.1", version=self.config.version, kubelet_port=0, now=now
            ),
            kubeadm_node.KUBELET_FIELD_MANAGER,
        )
        micro = moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
        await api.apply(kubeadm_node.lease(name, now=micro), kubeadm_node.KUBELET_FIELD_MANAGER)
        if self.control_plane is None:
            return
        running = set(self.control_plane.running_processes())
        for component in kubeadm_node.CONTROL_PLANE_COMPONENTS:
            try:
                await api.apply_status(
                    kubeadm_node.mirror_pod_status(component, name, running=component in running, now=now),
                    kubeadm_node.KUBELET_FIELD_MANAGER,
                )
            except kube.NotFound:
                continue
