"""The real Cluster API managers as processes against one control plane (not a stand-in).

A cluster that manages clusters runs three managers built from ``sigs.k8s.io/cluster-api``
(``scripts/build-k8s.sh``): the core manager, the kubeadm bootstrap provider (CABPK) and the
kubeadm control-plane provider (KCP). In a real installation they are Deployments behind a
Service; here they are local processes (the stand-in for the kubelet running those
Deployments) and their admission and conversion webhooks are registered the way envtest does
it: a generated CA, a serving certificate for the loopback address, and webhook
configurations whose ``clientConfig.url`` points at the process. So defaulting, validation and
conversion happen exactly as in a real installation, and with ``failurePolicy: Fail``: while a
manager is down, writes to its kinds are refused, as they would be.

:meth:`CapiManagers.stop` removes the webhook configurations and the conversion settings
before it stops the processes, leaving the control plane writable.
"""

from __future__ import annotations

import atexit
import base64
import contextlib
import logging
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, Self

import attrs

from lattice.adapters import capi_crds, kube_kr8s, pki
from lattice.adapters.binaries import Toolchain
from lattice.adapters.controlplane import (
    LOOPBACK,
    ControlPlane,
    ControlPlaneError,
    ManagedProcess,
    clean_env,
    crd_name_of_file,
    free_port,
    http_ok,
    stop_together,
)
from lattice.domain import capi_managers, yaml_text
from lattice.domain.capi_managers import MANAGERS, Manager, Ports
from lattice.domain.refs import ResourceRef
from lattice.ports.kube import KubeError

__all__ = ["CapiManagers", "CapiManagersError", "KubeconfigTarget", "Target", "live_managers"]

log = logging.getLogger("lattice.capi_managers")

FIELD_MANAGER = "lattice-capi-managers"


class CapiManagersError(ControlPlaneError):
    """A manager did not start, or its webhooks could not be registered; with its log."""


def _yaml_all(path: Path) -> list[Any]:
    return [doc for doc in yaml_text.load_all(path.read_text()) if doc]


def _yaml_one(path: Path) -> Any:
    return yaml_text.load(path.read_text()) or {}


_live_lock = threading.Lock()
_live: set[CapiManagers] = set()


def live_managers() -> list[CapiManagers]:
    """The managers started by this process and not stopped yet."""
    with _live_lock:
        return list(_live)


def _stop_live() -> None:
    with _live_lock:
        live = list(_live)
    for managers in live:
        managers.stop(unregister=False)


atexit.register(_stop_live)


class Target(Protocol):
    """The cluster the managers run against: a harness control plane, or any kubeconfig."""

    @property
    def toolchain(self) -> Toolchain: ...

    @property
    def kubeconfig(self) -> Path: ...

    @property
    def logs_dir(self) -> Path: ...

    @property
    def running(self) -> bool: ...

    def env(self) -> dict[str, str]: ...

    def kubectl(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...

    def apply(
        self,
        manifests: Sequence[Mapping[str, Any]],
        *,
        field_manager: str = "lattice",
        together: bool = False,
    ) -> object: ...


@attrs.frozen
class KubeconfigTarget:
    """A cluster reached through a kubeconfig (an operator's own cluster), driven with kubectl."""

    kubeconfig: Path
    toolchain: Toolchain
    dir: Path

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def running(self) -> bool:
        return True

    def env(self) -> dict[str, str]:
        return clean_env()

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        argv = [str(self.toolchain.kubectl), f"--kubeconfig={self.kubeconfig}", *args]
        result = subprocess.run(  # noqa: S603 - our kubectl
            argv, input=input, capture_output=True, text=True, env=self.env(), timeout=120, check=False
        )
        if check and result.returncode != 0:
            raise CapiManagersError(f"kubectl {' '.join(args)[:300]} failed: {result.stderr.strip()[:2000]}")
        return result

    def apply(
        self,
        manifests: Sequence[Mapping[str, Any]],
        *,
        field_manager: str = "lattice",
        together: bool = False,
    ) -> object:
        """Server-side apply through the one implementation (``Kr8sKube.apply``)."""
        done = kube_kr8s.apply_blocking(
            str(self.kubeconfig), [dict(m) for m in manifests], field_manager, together=together
        )
        if done.errors:
            raise CapiManagersError("apply refused: " + "; ".join(done.errors))
        return done


class CapiManagers:
    """The core, CABPK and KCP managers of one cluster, with their webhooks."""

    def __init__(
        self,
        control_plane: Target,
        *,
        directory: Path | None = None,
        free_port: Callable[[], int] = free_port,
    ) -> None:
        self.control_plane = control_plane
        self._free_port = free_port
        if directory is None:
            if not isinstance(control_plane, ControlPlane):
                raise ValueError("a directory is needed for the managers of a kubeconfig target")
            directory = control_plane.dir / "capi-managers"
        self.dir = directory
        self.ports: dict[str, Ports] = {}
        self._procs: dict[str, ManagedProcess] = {}
        self._ca_bundle = ""
        self._registered: list[dict[str, Any]] = []
        self._conversions: list[str] = []

    # -- paths and files ------------------------------------------------------------------

    @property
    def cert_dir(self) -> Path:
        return self.dir / "serving-certs"

    def _write_serving_cert(self) -> None:
        """One CA and one serving certificate (IP SAN 127.0.0.1) shared by the three managers,
        as envtest's TinyCA does; ``tls.crt``/``tls.key`` are what controller-runtime reads."""
        ca = pki.new_ca("lattice-capi-webhooks-ca", organizations=["lattice"])
        serving = ca.issue("capi-webhooks", dns_names=["localhost"], ip_addresses=[LOOPBACK], server=True)
        pki.write_private_file(self.cert_dir / "tls.key", serving.key_pem)
        pki.write_private_file(self.cert_dir / "tls.crt", serving.cert_pem)
        self._ca_bundle = base64.b64encode(ca.cert_pem).decode()

    # -- lifecycle ------------------------------------------------------------------------

    def _argv(self, manager: Manager) -> list[str]:
        ports = self.ports[manager.binary]
        return capi_managers.manager_argv(
            str(self.control_plane.toolchain.binary(manager.binary)),
            kubeconfig=str(self.control_plane.kubeconfig),
            cert_dir=str(self.cert_dir),
            host=LOOPBACK,
            ports=ports,
            extra=manager.flags,
        )

    def _health_ok(self, manager: Manager) -> bool:
        return http_ok(f"http://{LOOPBACK}:{self.ports[manager.binary].health}/readyz")

    def _check_alive(self) -> None:
        for proc in self._procs.values():
            code = proc.exit_code()
            if code is not None:
                raise CapiManagersError(f"{proc.name} exited with code {code}\n{proc.tail(40)}")

    def start(self, timeout: float = 120.0) -> Self:
        """Start the managers (:meth:`_start`). A start that fails takes back what it did: the
        conversion and webhooks it registered, the processes it started (as :meth:`stop`), so
        a CRD is never left converting through a webhook nothing serves."""
        try:
            return self._start(timeout)
        except ControlPlaneError:  # CapiManagersError, or a refused webhook registration
            self.stop()
            raise

    def _start(self, timeout: float) -> Self:
        """Register the managers' CRD conversion and wait until the API server serves those
        kinds from new watch caches, then start the managers, wait until each is ready (webhook
        server included) and register their admission webhooks; a manager that exits fails
        with its log.

        Conversion comes first because changing a CRD's spec gives its kind a new storage and,
        about a second later, ends every watch on the old one. Registered after the managers'
        caches had synced (as it was), it cut all their watches a few seconds into their life,
        and until each informer had listed again its cache missed what was created meanwhile:
        a pivot imported in that window had the MachineDeployment controller miss the imported
        MachineSet and create a second one (seen in CI, ``test_pivot_faults``). Objects stored
        at the version the managers read need no conversion, so nothing calls the webhook
        before its server is up; the admission webhooks, which would refuse writes until then,
        are registered once the managers are ready."""
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_serving_cert()
        deadline = time.monotonic() + timeout
        for manager in MANAGERS:
            self.ports[manager.binary] = Ports(
                webhook=self._free_port(), health=self._free_port(), diagnostics=self._free_port()
            )
        objects = self.desired_objects()
        conversions = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
        kubeconfig = str(self.control_plane.kubeconfig)
        try:
            missing = kube_kr8s.missing_crds_blocking(
                kubeconfig, [o["metadata"]["name"] for o in conversions]
            )
            if missing:
                raise CapiManagersError(
                    "the Cluster API CRDs the managers serve are not installed (as clusterctl init "
                    f"installs them): {', '.join(missing)}"
                )
            self._registered, self._conversions = [], []
            self._register(conversions)
            kube_kr8s.wait_watch_cache_blocking(
                kubeconfig, self._conversions, max(1.0, deadline - time.monotonic())
            )
        except (TimeoutError, KubeError) as exc:
            raise CapiManagersError(f"registering the managers' conversion webhooks: {exc}") from exc
        env = self.control_plane.env()
        with _live_lock:
            _live.add(self)
        for manager in MANAGERS:
            proc = ManagedProcess(
                name=manager.binary,
                argv=self._argv(manager),
                log_path=self.control_plane.logs_dir / f"{manager.binary}.log",
            )
            self._procs[manager.binary] = proc
            proc.start(env)
        waiting = list(MANAGERS)
        while waiting:
            self._check_alive()
            waiting = [m for m in waiting if not self._health_ok(m)]
            if waiting and time.monotonic() > deadline:
                names = ", ".join(m.binary for m in waiting)
                tails = "\n".join(self._procs[m.binary].tail(40) for m in waiting)
                raise CapiManagersError(f"not ready after {timeout:.0f}s: {names}\n{tails}")
            if waiting:
                time.sleep(0.2)
        self._register([o for o in objects if o["kind"] in capi_managers.WEBHOOK_KINDS])
        return self

    def _provider_files(self, manager: Manager) -> tuple[Path, Sequence[Path]]:
        provider_dir = self.control_plane.toolchain.crd_dir / manager.provider
        loaded = capi_crds.load_providers(self.control_plane.toolchain.crd_dir, [manager.provider])
        return provider_dir, loaded[0].files

    def desired_objects(self) -> list[dict[str, Any]]:
        """The webhook configurations and CRD conversion settings of the three managers."""
        objects: list[dict[str, Any]] = []
        for manager in MANAGERS:
            provider_dir, files = self._provider_files(manager)
            base = f"https://{LOOPBACK}:{self.ports[manager.binary].webhook}"
            objects.extend(
                capi_managers.webhook_configurations(
                    _yaml_all(provider_dir / "webhook.yaml"),
                    prefix=manager.prefix,
                    base_url=base,
                    ca_bundle=self._ca_bundle,
                )
            )
            plurals = set(capi_managers.conversion_plurals(_yaml_one(provider_dir / "kustomization.yaml")))
            for path in files:
                name = crd_name_of_file(path)
                if name.split(".", 1)[0] in plurals:
                    objects.append(
                        capi_managers.conversion_patch(name, url=f"{base}/convert", ca_bundle=self._ca_bundle)
                    )
        return objects

    def _register(self, objects: Sequence[dict[str, Any]]) -> None:
        # independent objects (CRD patches, webhook configurations): sent all at once
        self.control_plane.apply(objects, field_manager=FIELD_MANAGER, together=True)
        self._registered += [o for o in objects if o["kind"] in capi_managers.WEBHOOK_KINDS]
        self._conversions += [
            o["metadata"]["name"] for o in objects if o["kind"] == "CustomResourceDefinition"
        ]

    def unregister_webhooks(self) -> None:
        """Delete the webhook configurations and take conversion back to ``None``."""
        if self._conversions:
            self.control_plane.apply(
                [capi_managers.without_conversion(name) for name in self._conversions],
                field_manager=FIELD_MANAGER,
                together=True,
            )
        if self._registered:
            refs = [ResourceRef.of(obj) for obj in self._registered]
            try:
                kube_kr8s.delete_blocking(str(self.control_plane.kubeconfig), refs)
            except KubeError as exc:
                raise CapiManagersError(f"deleting the webhook configurations: {exc}") from exc
        self._registered = []
        self._conversions = []

    def stop(self, timeout: float = 10.0, *, unregister: bool = True) -> None:
        """Unregister the webhooks (while the apiserver is there), then stop the processes."""
        started = time.monotonic()
        if unregister and self.control_plane.running:
            with contextlib.suppress(ControlPlaneError):
                self.unregister_webhooks()
        unregistered = time.monotonic()
        stop_together(list(self._procs.values()), timeout)
        with _live_lock:
            _live.discard(self)
        log.info(
            "Cluster API managers stopped",
            extra={
                "unregister_s": round(unregistered - started, 3),
                "processes_s": round(time.monotonic() - unregistered, 3),
            },
        )

    def pids(self) -> list[int]:
        return [p.pid for p in self._procs.values() if p.running() and p.pid is not None]

    def log_tails(self, lines: int = 40) -> str:
        return "\n".join(f"--- {p.log_path} ---\n{p.tail(lines)}" for p in self._procs.values())

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()
