"""The kubelet stand-in of one local machine, run as its own process (``lattice local-kubelet``).

There is no container runtime here, so this is not a kubelet; it does for Cluster API what a
kubeadm node's kubelet does, and no more (docs/local-provider.md):

* on a control-plane machine it runs the static pods kubeadm would have written manifests
  for (etcd, kube-apiserver, kube-controller-manager, kube-scheduler) as real processes, with
  the certificates the real KCP generated, and the apiserver on the cluster's endpoint;
* it registers the Node with the node's own client certificate (``kubelet.conf``) and keeps
  its Lease and Ready condition fresh;
* it creates the four mirror pods and reports each Running and Ready exactly while its process
  runs, so a dead etcd shows as an unhealthy etcd pod;
* it runs the pods the real scheduler binds to its Node when they are Lattice's own program or
  a known one (the Flux controllers; :mod:`lattice.domain.local_pods`), each with a token for
  its own ServiceAccount from the TokenRequest API, runs a known program's HTTP readiness
  probe, reports their status, restarts them when they exit, and confirms their deletion once
  it has stopped them.

The static pods are its children and die with it (a parent-death signal), as a machine's
processes die with the machine. On SIGTERM it stops them and exits.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import attrs
import httpx

from lattice.adapters.addons_bundle import locate_addons
from lattice.adapters.binaries import BinariesNotBuiltError, Toolchain
from lattice.adapters.controlplane import ControlPlane, ManagedProcess, clean_env, free_port, stop_together
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.pod_image import ImageError, UnpackedImage, unpack
from lattice.domain import conditions, kubeadm_node, local_pods, yaml_text
from lattice.domain.local_kubelet import STATUS_FILE, KubeletConfig, KubeletStatus, Phase, dump_status
from lattice.ports import kube
from lattice.ports.clock import Clock
from lattice.ports.kube import ResourceRef

__all__ = ["LocalKubelet", "write_status"]

log = logging.getLogger("lattice.local_kubelet")

REGISTER_TIMEOUT_SECONDS = 120.0
POD_SYNC_SECONDS = 1.0
RESTART_BACKOFF_SECONDS = 10.0
PROBE_TIMEOUT_SECONDS = 1.0


@attrs.define(eq=False)
class _Pod:
    namespace: str
    name: str
    process: ManagedProcess
    started_at: str
    restarts: int = 0
    next_start: float = 0.0
    probe: tuple[int, str] | None = None  # (local port, path) of its readiness probe
    ready: bool | None = None  # the probe's last answer; None without a probe
    env: dict[str, str] = attrs.field(factory=dict)
    reported: tuple[bool, int, bool | None] | None = None  # (running, restarts, ready) last reported


async def _probe(port: int, path: str) -> bool:
    """A kubelet's HTTP probe: any status from 200 to 399 is success."""
    try:
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT_SECONDS) as client:
            answer = await client.get(f"http://127.0.0.1:{port}{path}")
    except httpx.HTTPError:
        return False
    return 200 <= answer.status_code < 400


def write_status(machine_dir: Path, status: KubeletStatus) -> None:
    """Replace the status file in one step (the host may read it at any moment)."""
    target = machine_dir / STATUS_FILE
    partial = target.with_suffix(".partial")
    partial.write_text(dump_status(status))
    os.replace(partial, target)


class LocalKubelet:
    def __init__(
        self,
        config: KubeletConfig,
        machine_dir: Path,
        toolchain: Toolchain,
        clock: Clock,
        *,
        runtime: local_pods.PodRuntime = local_pods.PodRuntime.SOURCE,
        image_dir: Path | None = None,
    ) -> None:
        self.config = config
        self.runtime = runtime
        self.image_dir = image_dir
        self._image: UnpackedImage | ImageError | None = None
        self.machine_dir = machine_dir
        self.toolchain = toolchain
        self.clock = clock
        self.control_plane: ControlPlane | None = None
        self.node_uid = ""
        self.python = sys.executable
        self.pods: dict[str, _Pod] = {}  # by pod uid
        self._refused: set[str] = set()

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
        # All at once, one wait for them all (each pod's program shuts down gracefully: the
        # child's operator stops its Cluster API managers); then the control plane, in order.
        stop_together([pod.process for pod in self.pods.values()], 10.0)
        self.pods.clear()
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
        loop_time = asyncio.get_running_loop().time
        next_report = loop_time() + self.config.heartbeat_seconds
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), POD_SYNC_SECONDS)
            if stop.is_set():
                break
            try:
                if loop_time() >= next_report:
                    next_report = loop_time() + self.config.heartbeat_seconds
                    await self._report(api)
                await self._sync_pods(api)
            except (kube.KubeError, OSError) as exc:
                # A machine whose apiserver is down reports nothing, as a real kubelet.
                log.info("node sync failed: %s", exc, extra={"node": self.config.node})

    # -- pods ---------------------------------------------------------------------------------

    async def _sync_pods(self, api: Kr8sKube) -> None:
        listed = (await api.list("v1", "Pod", field_selector=f"spec.nodeName={self.config.node}")).items
        pods = [
            p
            for p in listed
            if kubeadm_node.MIRROR_ANNOTATION not in (p["metadata"].get("annotations") or {})
        ]
        wanted = {str(p["metadata"]["uid"]): p for p in local_pods.runnable_pods(pods)}
        for uid in [u for u in self.pods if u not in wanted]:
            gone = self.pods.pop(uid)
            await asyncio.to_thread(gone.process.stop, 10.0)
            log.info("pod stopped", extra={"pod": f"{gone.namespace}/{gone.name}"})
        for pod in pods:
            meta = pod["metadata"]
            if meta.get("deletionTimestamp") and str(meta["uid"]) not in self.pods:
                # Its process has stopped: confirm the deletion, as a kubelet does.
                await api.delete(
                    ResourceRef("v1", "Pod", meta["name"], meta["namespace"]), grace_period_seconds=0
                )
        for uid, runnable in wanted.items():
            await self._sync_pod(api, uid, runnable)

    async def _sync_pod(self, api: Kr8sKube, uid: str, pod: local_pods.Obj) -> None:
        meta = pod["metadata"]
        where = f"{meta['namespace']}/{meta['name']}"
        reason = local_pods.refusal(pod)
        if reason is not None:
            if uid not in self._refused:
                self._refused.add(uid)
                log.warning("pod not run: %s", reason, extra={"pod": where})
            return
        running = self.pods.get(uid)
        now = asyncio.get_running_loop().time()
        if running is None:
            prepared = await self._prepare(api, pod)
            if prepared is None:
                return
            argv, env, ports = prepared
            pod_dir = self._pod_dir(pod)
            process = ManagedProcess(name=where, argv=argv, log_path=pod_dir / "container.log", cwd=pod_dir)
            running = _Pod(meta["namespace"], meta["name"], process, started_at=self._now())
            running.probe = local_pods.readiness_probe(pod, ports)
            running.env = env
            self.pods[uid] = running
            process.start(env)
            log.info("pod started", extra={"pod": where, "pid": process.pid})
        elif not running.process.running():
            if running.next_start == 0.0:
                running.next_start = now + RESTART_BACKOFF_SECONDS
                log.info("pod exited", extra={"pod": where, "code": running.process.exit_code()})
            elif now >= running.next_start:
                running.restarts += 1
                running.next_start = 0.0
                running.started_at = self._now()
                running.process.popen = None
                running.process.start(running.env)
        alive = running.process.running()
        if running.probe is not None:
            running.ready = alive and await _probe(*running.probe)
        if running.reported != (alive, running.restarts, running.ready):
            message = "" if alive else f"exited with code {running.process.exit_code()}"
            status = local_pods.pod_status(
                pod,
                running=alive,
                restarts=running.restarts,
                started_at=running.started_at,
                now=self._now(),
                message=message,
                probe_ready=running.ready,
            )
            await api.apply_status(status, kubeadm_node.KUBELET_FIELD_MANAGER)
            running.reported = (alive, running.restarts, running.ready)

    def _pod_dir(self, pod: local_pods.Obj) -> Path:
        meta = pod["metadata"]
        return self.machine_dir / "pods" / f"{meta['namespace']}_{meta['name']}_{meta['uid']}"

    def _pod_env(self) -> dict[str, str]:
        env = clean_env()
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _now(self) -> str:
        return conditions.rfc3339(self.clock.now())

    async def _prepare(
        self, api: Kr8sKube, pod: local_pods.Obj
    ) -> tuple[list[str], dict[str, str], dict[str, int]] | None:
        """Volumes as directories, a ServiceAccount token kubeconfig, then the command line, its
        environment and the local ports of its named container ports; ``None`` while a Secret it
        needs does not exist yet (a kubelet waits too) or a known program's binary is missing."""
        meta = pod["metadata"]
        program = local_pods.known_program(pod)
        binary = ""
        if program is not None and not program.stand_in:
            try:
                binary = str(locate_addons().binary(program.binary))
            except BinariesNotBuiltError as exc:
                if meta["uid"] not in self._refused:
                    self._refused.add(meta["uid"])
                    log.warning("pod not run: %s", exc, extra={"pod": f"{meta['namespace']}/{meta['name']}"})
                return None
        pod_dir = self._pod_dir(pod)
        pod_dir.mkdir(parents=True, exist_ok=True)
        mounts = local_pods.volume_mounts(pod)
        replacements: dict[str, str] = {}
        volume_dirs: dict[str, str] = {}
        for volume in (pod.get("spec") or {}).get("volumes") or []:
            name = str(volume.get("name"))
            if name not in mounts:
                continue
            target = pod_dir / "volumes" / name
            target.mkdir(parents=True, exist_ok=True)
            replacements[mounts[name]] = str(target)
            volume_dirs[name] = str(target)
            for secret_name in local_pods.secret_sources(volume):
                try:
                    secret = await api.get(ResourceRef("v1", "Secret", secret_name, meta["namespace"]))
                except kube.NotFound:
                    return None
                for key, value in (secret.get("data") or {}).items():
                    path = target / key
                    path.write_bytes(base64.b64decode(value))
                    path.chmod(0o600)
        account = local_pods.service_account(pod)
        token = await api.create_subresource(
            ResourceRef("v1", "ServiceAccount", account, meta["namespace"]),
            "token",
            local_pods.token_request(pod),
        )
        kubeconfig = pod_dir / "kubeconfig"
        kubelet_conf: Any = yaml_text.load(Path(self.config.kubeconfig).read_text())
        cluster = kubelet_conf["clusters"][0]["cluster"]
        kubeconfig.write_text(
            yaml_text.dump(
                local_pods.token_kubeconfig(
                    cluster["server"],
                    cluster["certificate-authority-data"],
                    str(token["status"]["token"]),
                    f"system:serviceaccount:{meta['namespace']}:{account}",
                )
            )
        )
        kubeconfig.chmod(0o600)
        env = self._pod_env()
        account_dir = self._service_account_volume(
            pod_dir,
            str(meta["namespace"]),
            str(token["status"]["token"]),
            base64.b64decode(cluster["certificate-authority-data"]),
        )
        if program is None and self.runtime is local_pods.PodRuntime.IMAGE:
            return await self._image_pod(pod, kubeconfig, volume_dirs, account_dir, env)
        if program is None:
            argv = local_pods.pod_argv(
                pod, python=self.python, kubeconfig=str(kubeconfig), mounts=replacements
            )
            return argv, env, {}
        container_env, unresolved = local_pods.container_env(pod, replacements)
        if unresolved:
            log.warning("environment not resolved", extra={"pod": meta["name"], "names": unresolved})
        ports = {name: free_port() for name in local_pods.named_ports(pod)}
        if program.stand_in:
            return (
                local_pods.stand_in_argv(pod, python=self.python, kubeconfig=str(kubeconfig), ports=ports),
                env,
                ports,
            )
        argv = local_pods.with_service_account_volume(
            local_pods.known_program_argv(
                pod, binary=binary, mounts=replacements, env=container_env, ports=ports
            ),
            str(account_dir),
        )
        env.update(container_env)
        env["KUBECONFIG"] = str(kubeconfig)  # controller-runtime's client reads it
        return argv, env, ports

    @staticmethod
    def _service_account_volume(pod_dir: Path, namespace: str, token: str, ca_pem: bytes) -> Path:
        """The files of the pod's projected ServiceAccount volume, in a directory of the pod's."""
        account_dir = pod_dir / "serviceaccount"
        account_dir.mkdir(parents=True, exist_ok=True)
        for file_name, content in local_pods.service_account_files(namespace, token, ca_pem).items():
            (account_dir / file_name).write_bytes(content)
            (account_dir / file_name).chmod(0o600)
        return account_dir

    def _unpacked(self) -> UnpackedImage:
        """The image, unpacked at the first pod; an image that cannot be used is not unpacked
        again at every sync (1 GB each time): the error stays until the kubelet restarts."""
        if isinstance(self._image, ImageError):
            raise self._image
        if self._image is None:
            try:
                if self.image_dir is None:
                    raise ImageError(f"{local_pods.RUNTIME_ENV}=image needs {local_pods.IMAGE_DIR_ENV}")
                self._image = unpack(self.image_dir)
            except ImageError as exc:
                self._image = exc
                raise
        return self._image

    async def _image_pod(
        self,
        pod: local_pods.Obj,
        kubeconfig: Path,
        volume_dirs: dict[str, str],
        account_dir: Path,
        env: dict[str, str],
    ) -> tuple[list[str], dict[str, str], dict[str, int]] | None:
        """A Lattice pod run from the image's root filesystem (:mod:`lattice.adapters.pod_sandbox`);
        ``None`` (the reason logged once) when the image or the pod's settings do not allow it."""
        meta = pod["metadata"]
        where = f"{meta['namespace']}/{meta['name']}"
        host_exec = json.dumps({"root": local_pods.HOST_ROOT, "python": self.python, "env": env})
        try:
            image = await asyncio.to_thread(self._unpacked)
            sandbox = local_pods.image_sandbox(
                pod,
                image.config,
                kubeconfig=str(kubeconfig),
                volumes=volume_dirs,
                service_account_dir=str(account_dir),
                host_exec=host_exec,
            )
        except (ImageError, ValueError, OSError) as exc:
            if meta["uid"] not in self._refused:
                self._refused.add(meta["uid"])
                log.warning("pod not run: %s", exc, extra={"pod": where})
            return None
        # The pod's files belong to the user it runs as, as a kubelet's volumes do.
        owned = [kubeconfig, account_dir, *account_dir.iterdir()]
        for directory in volume_dirs.values():
            owned += [Path(directory), *Path(directory).rglob("*")]
        for path in owned:
            os.chown(path, sandbox.uid, sandbox.gid)
        pod_dir = self._pod_dir(pod)
        spec_path = pod_dir / "sandbox.json"
        spec = {
            "rootfs": str(image.rootfs),
            "digest": image.digest,
            "podDir": str(pod_dir),
            "parent": os.getpid(),
            "sandbox": attrs.asdict(sandbox),
        }
        spec_path.write_text(json.dumps(spec, indent=2))
        spec_path.chmod(0o600)
        return [self.python, "-m", "lattice.adapters.pod_sandbox", str(spec_path)], env, {}

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
