"""The local infrastructure provider: boots "machines" as local control-plane processes.

It reconciles every CAPI ``Cluster`` whose infrastructure is a ``LocalCluster``, doing what a
cloud provider, kubeadm and CAPI's own controllers would do, and no more (docs/local-provider.md
lists each stand-in):

1. sets the ownerReferences CAPI's controllers would set (so ``clusterctl move`` finds the graph);
2. boots the control plane (etcd, kube-apiserver, kube-controller-manager as real processes, in
   their own sessions so they outlive this process, as machines outlive a provider), installs
   the CAPI and Lattice CRDs there (standing in for the components a real node would pull);
3. writes ``<cluster>-kubeconfig`` and the provisioning status the pivot preflight reads;
4. runs the KubeadmControlPlane's ``postKubeadmCommands`` **verbatim in a shell** against the new
   cluster, so the real registration call to the cell happens;
5. plays the kubelet for Lattice's own workloads: when the ``lattice-agent`` (or
   ``lattice-operator``) Deployment appears in the new cluster, it runs that program as a local
   process with the Deployment's arguments and Secrets.

A paused Cluster is left alone, and infrastructure deleted by a move (clusterctl's
``delete-for-move`` annotation) keeps running.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from attrs import define, field

from lattice.adapters.agent_kube import KubeManifestApplier
from lattice.adapters.binaries import Toolchain
from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app.operator.informer import Informer
from lattice.app.operator.workqueue import WorkQueue, serve
from lattice.domain import capi, install, local_machines, local_provider
from lattice.domain.agent_payload import NAMESPACE as AGENT_NAMESPACE
from lattice.ports import kube
from lattice.ports.clock import Clock
from lattice.ports.kube import KubeApi, Obj, ResourceRef

log = logging.getLogger("lattice.local_provider")

CLUSTER_API_VERSION = f"{capi.CLUSTER_API}/v1beta2"
WORKLOADS = ("lattice-agent", "lattice-operator")


@define
class Machine:
    """A booted local cluster: its control plane and the local "pods" running in it."""

    name: str
    control_plane: ControlPlane
    pods: dict[str, subprocess.Popen[bytes]] = field(factory=dict)
    pod_specs: dict[str, str] = field(factory=dict)  # workload → fingerprint of what runs
    bootstrapped: bool = False

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig


class LocalProvider:
    def __init__(
        self,
        api: KubeApi,
        toolchain: Toolchain,
        state_dir: Path,
        clock: Clock,
        *,
        random: Callable[[], float],
        python: str = sys.executable,
        machines_dir: Path | None = None,
    ) -> None:
        self.api = api
        self.toolchain = toolchain
        self.state_dir = state_dir
        self.clock = clock
        self.python = python
        self.machines_dir = machines_dir or state_dir / "machines"
        self.machines: dict[str, Machine] = {}
        self.queue: WorkQueue[tuple[str, str]] = WorkQueue(random=random)
        self.clusters = Informer(
            api,
            CLUSTER_API_VERSION,
            "Cluster",
            label_selector=f"{capi.LABEL_MANAGED_BY}=lattice",
            handler=self._on_cluster,
        )
        self._tasks: list[asyncio.Task[None]] = []

    def _on_cluster(self, _event: str, obj: Obj) -> None:
        meta = obj["metadata"]
        self.queue.add((meta["namespace"], meta["name"]))

    async def run(self, stop: asyncio.Event) -> None:
        self._tasks = [
            asyncio.create_task(self.clusters.run()),
            asyncio.create_task(self._worker()),
            asyncio.create_task(self._kubelet_loop()),
        ]
        try:
            await stop.wait()
        finally:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _worker(self) -> None:
        await serve(self.queue, lambda key: self.reconcile(*key), logger=log, what="local provider")

    # ------------------------------------------------------------------ reconcile

    async def reconcile(self, namespace: str, name: str) -> float | None:
        cluster = self.clusters.get(namespace, name)
        if cluster is None or not local_machines.is_local(cluster):
            return None
        if cluster["metadata"].get("deletionTimestamp"):
            if not local_machines.moving(cluster):
                await self.teardown(name)
            return None
        if local_machines.is_paused(cluster):
            return None
        objects = await self._cluster_objects(namespace, name)
        await self._adopt(cluster, objects)
        local_cluster = next((o for o in objects if o["kind"] == "LocalCluster"), None)
        kcp = next((o for o in objects if o["kind"] == "KubeadmControlPlane"), None)
        if local_cluster is None or kcp is None:
            return 2.0  # the operator is still applying
        booted_here = name in self.machines or self._state_file(name).exists()
        if local_machines.provisioned_elsewhere(local_cluster, booted_here=booted_here):
            # Provisioned by another provider (this cluster's cell, before the pivot): the machine
            # runs; this provider did not boot it and must not boot a second one.
            return None
        machine = await self.boot(name, local_cluster)
        await self._report_provisioned(cluster, local_cluster, kcp, machine)
        if not machine.bootstrapped and local_machines.BOOTSTRAPPED not in (
            local_cluster["metadata"].get("annotations") or {}
        ):
            await self._run_post_kubeadm(namespace, name, kcp, machine)
            await self.api.merge_patch(
                ResourceRef.of(local_cluster),
                {"metadata": {"annotations": {local_machines.BOOTSTRAPPED: "true"}}},
            )
        machine.bootstrapped = True
        await self._apply_resource_sets(cluster, machine)
        return None

    async def _apply_resource_sets(self, cluster: Obj, machine: Machine) -> None:
        """CAPI's ClusterResourceSet controller, for the install flow: apply each matching set's
        Secrets/ConfigMaps to the new cluster once (strategy ApplyOnce)."""
        namespace = cluster["metadata"]["namespace"]
        labels = cluster["metadata"].get("labels") or {}
        try:
            sets = (await self.api.list(install.CRS_API, "ClusterResourceSet", namespace=namespace)).items
        except kube.NotFound:
            return
        done_file = self.machines_dir / f"{machine.name}-resource-sets.json"
        done: list[str] = json.loads(done_file.read_text()) if done_file.exists() else []
        pending = [
            s
            for s in sets
            if s["metadata"]["name"] not in done
            and install.selector_matches(s["spec"]["clusterSelector"], labels)
        ]
        if not pending:
            return
        child = await Kr8sKube.connect(str(machine.kubeconfig))
        applier = KubeManifestApplier(child)
        for resource_set in pending:
            for resource in resource_set["spec"]["resources"]:
                kind = "Secret" if resource["kind"] == "Secret" else "ConfigMap"
                source = await self.api.get(ResourceRef("v1", kind, resource["name"], namespace))
                values = (source.get("data") or {}).values()
                streams = [base64.b64decode(v) if kind == "Secret" else v.encode() for v in values]
                await applier.apply(tuple(streams))
            done.append(resource_set["metadata"]["name"])
            done_file.write_text(json.dumps(done))
            log.info(
                "applied ClusterResourceSet",
                extra={"cluster": machine.name, "resource_set": resource_set["metadata"]["name"]},
            )

    async def _cluster_objects(self, namespace: str, name: str) -> list[Obj]:
        out: list[Obj] = []
        kinds = [
            (f"{local_provider.API_VERSION}", "LocalCluster"),
            (f"{local_provider.API_VERSION}", "LocalMachineTemplate"),
            (f"{capi.CONTROLPLANE_API}/v1beta2", "KubeadmControlPlane"),
            (f"{capi.CLUSTER_API}/v1beta2", "MachineDeployment"),
            (f"{capi.BOOTSTRAP_API}/v1beta2", "KubeadmConfigTemplate"),
        ]
        for api_version, kind in kinds:
            listed = await self.api.list(
                api_version, kind, namespace=namespace, label_selector=f"{capi.LABEL_CLUSTER_NAME}={name}"
            )
            out.extend(listed.items)
        return out

    async def _adopt(self, cluster: Obj, objects: list[Obj]) -> None:
        for obj in local_machines.owned_by_cluster(objects):
            patch = local_machines.owner_patch(obj, cluster)
            if patch is not None:
                obj.update(await self.api.merge_patch(ResourceRef.of(obj), patch))

    async def boot(self, name: str, local_cluster: Obj) -> Machine:
        machine = self.machines.get(name)
        if machine is not None and machine.control_plane.running:
            return machine
        adopted = await self._adopt_machine(name)
        if adopted is not None:
            self.machines[name] = adopted
            return adopted
        log.info("booting local machine", extra={"cluster": name})
        control_plane = ControlPlane.create(
            name, base_dir=self.machines_dir, toolchain=self.toolchain, controller_manager=True
        )
        # Started from a worker thread: the processes do not die with this process, like machines.
        await asyncio.to_thread(control_plane.start, 120.0)
        control_plane.detach()
        await asyncio.to_thread(control_plane.install_capi_crds, LOCAL_CAPI_PROVIDERS)
        await asyncio.to_thread(control_plane.install_lattice_crds)
        machine = Machine(name=name, control_plane=control_plane)
        self.machines[name] = machine
        self._state_file(name).write_text(
            json.dumps(
                {
                    "dir": str(control_plane.dir),
                    "ports": {
                        "etcd": control_plane.etcd_port,
                        "etcd_peer": control_plane.etcd_peer_port,
                        "apiserver": control_plane.apiserver_port,
                        "kcm": control_plane.kcm_port,
                    },
                    "pids": control_plane.pids(),
                    "spec": local_cluster.get("spec") or {},
                }
            )
        )
        return machine

    def _state_file(self, name: str) -> Path:
        return self.machines_dir / f"{name}.json"

    async def _adopt_machine(self, name: str) -> Machine | None:
        """After a restart of this provider: take over a machine that is still running."""
        path = self._state_file(name)
        if not path.exists():
            return None
        saved = json.loads(path.read_text())
        ports = saved["ports"]
        control_plane = ControlPlane(
            name=name,
            dir=Path(saved["dir"]),
            toolchain=self.toolchain,
            controller_manager=False,  # probe only the apiserver; its controller-manager runs on
            etcd_port=ports["etcd"],
            etcd_peer_port=ports["etcd_peer"],
            apiserver_port=ports["apiserver"],
            kcm_port=ports["kcm"],
        )
        if not await asyncio.to_thread(control_plane.ready):
            return None  # the machine is gone; boot a new one
        log.info("adopted running local machine", extra={"cluster": name})
        return Machine(name=name, control_plane=control_plane, bootstrapped=True)

    async def _report_provisioned(self, cluster: Obj, local_cluster: Obj, kcp: Obj, machine: Machine) -> None:
        namespace = cluster["metadata"]["namespace"]
        name = cluster["metadata"]["name"]
        endpoint = {"host": "127.0.0.1", "port": machine.control_plane.apiserver_port}
        if (local_cluster.get("spec") or {}).get("controlPlaneEndpoint") != endpoint:
            await self.api.merge_patch(
                ResourceRef.of(local_cluster), {"spec": {"controlPlaneEndpoint": endpoint}}
            )
        await self.api.apply_status(
            {**_identity(local_cluster), "status": local_machines.local_cluster_status()},
            local_machines.FIELD_MANAGER,
        )
        secret = local_machines.kubeconfig_secret(cluster, machine.kubeconfig.read_bytes())
        await self.api.apply(secret, local_machines.FIELD_MANAGER)
        machine_obj, local_machine = local_machines.control_plane_machines(
            cluster, kcp, kcp["spec"]["version"]
        )
        stored_machine = await self.api.apply(machine_obj, local_machines.FIELD_MANAGER)
        await self.api.apply_status(
            {
                **_identity(stored_machine),
                "status": local_machines.machine_status(machine_obj["metadata"]["name"]),
            },
            local_machines.FIELD_MANAGER,
        )
        local_machine["metadata"]["ownerReferences"] = [local_machines.owner_ref(stored_machine)]
        stored_local = await self.api.apply(local_machine, local_machines.FIELD_MANAGER)
        await self.api.apply_status(
            {**_identity(stored_local), "status": local_machines.local_cluster_status()},
            local_machines.FIELD_MANAGER,
        )
        await self.api.apply_status(
            {**_identity(cluster), "status": local_machines.cluster_status(self.clock.now())},
            local_machines.FIELD_MANAGER,
        )
        log.info("local machine provisioned", extra={"cluster": name, "namespace": namespace, **endpoint})

    async def _run_post_kubeadm(self, namespace: str, name: str, kcp: Obj, machine: Machine) -> None:
        commands = local_machines.post_kubeadm_commands(kcp)
        if not commands:
            return
        bootstrap = self.machines_dir / f"{name}-bootstrap"
        bootstrap.mkdir(parents=True, exist_ok=True)
        for path, secret_name, key in local_machines.bootstrap_files(kcp):
            secret = await self.api.get(ResourceRef("v1", "Secret", secret_name, namespace))
            content = base64.b64decode(secret.get("data", {}).get(key, ""))
            target = bootstrap / Path(path).name  # kubeadm writes /etc/lattice/<file>
            target.write_bytes(content)
            target.chmod(0o600)
        env = {
            **os.environ,
            "KUBECONFIG": str(machine.kubeconfig),
            "LATTICE_BOOTSTRAP_DIR": str(bootstrap),
            "PATH": f"{self.toolchain.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        log_path = bootstrap / "post-kubeadm.log"
        for command in commands:
            with log_path.open("ab") as out:
                process = await asyncio.create_subprocess_exec(
                    "/bin/sh", "-c", command, stdout=out, stderr=subprocess.STDOUT, env=env
                )
                code = await process.wait()
            if code != 0:
                tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-10:])
                raise RuntimeError(f"postKubeadmCommands exited with {code}:\n{tail}")
        log.info("postKubeadmCommands succeeded", extra={"cluster": name})

    async def teardown(self, name: str) -> None:
        machine = self.machines.pop(name, None)
        if machine is None:
            return
        for proc in machine.pods.values():
            _stop(proc)
        await asyncio.to_thread(machine.control_plane.stop)
        log.info("local machine deleted", extra={"cluster": name})

    # ------------------------------------------------------------------ kubelet stand-in

    async def _kubelet_loop(self) -> None:
        clients: dict[str, Kr8sKube] = {}
        while True:
            for name, machine in list(self.machines.items()):
                try:
                    client = clients.get(name)
                    if client is None:
                        client = await Kr8sKube.connect(str(machine.kubeconfig))
                        clients[name] = client
                    await self._sync_pods(machine, client)
                except (kube.KubeError, OSError) as exc:
                    log.debug("kubelet sync failed", extra={"cluster": name, "error": str(exc)})
            await asyncio.sleep(1.0)

    async def _sync_pods(self, machine: Machine, client: KubeApi) -> None:
        for workload in WORKLOADS:
            try:
                deployment = await client.get(ResourceRef("apps/v1", "Deployment", workload, AGENT_NAMESPACE))
            except kube.NotFound:
                continue
            fingerprint = json.dumps(deployment.get("spec", {}).get("template", {}), sort_keys=True)
            running = machine.pods.get(workload)
            if (
                running is not None
                and running.poll() is None
                and machine.pod_specs.get(workload) == fingerprint
            ):
                continue
            argv = await self._pod_argv(machine, client, deployment)
            if argv is None:
                continue
            if running is not None:
                _stop(running)
            machine.pods[workload] = self._start_pod(machine, workload, argv)
            machine.pod_specs[workload] = fingerprint

    async def _pod_argv(self, machine: Machine, client: KubeApi, deployment: Obj) -> list[str] | None:
        """The container's command line, with Secret volumes materialised as local files."""
        pod = deployment["spec"]["template"]["spec"]
        container = pod["containers"][0]
        pod_dir = machine.control_plane.dir / "pods" / deployment["metadata"]["name"]
        mounts = {m["name"]: m["mountPath"] for m in container.get("volumeMounts", [])}
        replacements: dict[str, str] = {}
        for volume in pod.get("volumes", []):
            if "emptyDir" in volume and volume["name"] in mounts:
                scratch = pod_dir / volume["name"]
                scratch.mkdir(parents=True, exist_ok=True)
                replacements[mounts[volume["name"]]] = str(scratch)
                continue
            sources = _secret_sources(volume)
            if not sources or volume["name"] not in mounts:
                continue
            target = pod_dir / volume["name"]
            target.mkdir(parents=True, exist_ok=True)
            for secret_name in sources:
                try:
                    secret = await client.get(ResourceRef("v1", "Secret", secret_name, AGENT_NAMESPACE))
                except kube.NotFound:
                    return None  # like a kubelet: wait for the Secret
                for key, value in (secret.get("data") or {}).items():
                    path = target / key
                    path.write_bytes(base64.b64decode(value))
                    path.chmod(0o600)
            replacements[mounts[volume["name"]]] = str(target)
        args = [_rewrite(a, replacements) for a in container.get("args", [])]
        command = container.get("command", ["lattice"])
        if command[0] == "lattice":
            command = [self.python, "-m", "lattice.app.cli", *command[1:]]
        extra = ["--kubeconfig", str(machine.kubeconfig)]
        if deployment["metadata"]["name"] == "lattice-operator":
            # Pods would each have their own network namespace; here they share the host's.
            extra += ["--health-port", "0"]
        return [*command, *args, *extra]

    def _start_pod(self, machine: Machine, workload: str, argv: list[str]) -> subprocess.Popen[bytes]:
        logs = machine.control_plane.dir / "pods"
        logs.mkdir(parents=True, exist_ok=True)
        _kill_recorded(logs / f"{workload}.pid")  # a previous provider's pod, if still running
        with (logs / f"{workload}.log").open("ab") as out:
            proc = subprocess.Popen(  # noqa: S603 - our own program with the Deployment's args
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        (logs / f"{workload}.pid").write_text(str(proc.pid))
        log.info("started local pod", extra={"cluster": machine.name, "workload": workload, "pid": proc.pid})
        return proc


def _identity(obj: Obj) -> Obj:
    meta = obj["metadata"]
    identity: Obj = {"apiVersion": obj["apiVersion"], "kind": obj["kind"], "metadata": {"name": meta["name"]}}
    if meta.get("namespace"):
        identity["metadata"]["namespace"] = meta["namespace"]
    return identity


def _secret_sources(volume: Obj) -> list[str]:
    if "secret" in volume:
        return [volume["secret"]["secretName"]]
    projected = volume.get("projected", {}).get("sources", [])
    return [s["secret"]["name"] for s in projected if "secret" in s]


def _rewrite(arg: str, replacements: dict[str, str]) -> str:
    for mount, local in replacements.items():
        if arg.startswith(mount):
            return local + arg[len(mount) :]
    return arg


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def _kill_recorded(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text())
    except (OSError, ValueError):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)


def remove_state(state_dir: Path) -> None:
    shutil.rmtree(state_dir, ignore_errors=True)
