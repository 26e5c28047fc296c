"""Real Kubernetes control planes on loopback: etcd, kube-apiserver, kube-controller-manager.

Each :class:`ControlPlane` owns a directory holding its PKI, etcd data, kubeconfigs and one
log file per process (``logs/<process>.log``, kept after it stops so a failing test can show
it). Processes run in their own process groups and are stopped with SIGTERM, then SIGKILL;
an ``atexit`` hook stops whatever a crashed test left running.

The flags follow controller-runtime's envtest (etcd with ``--unsafe-no-fsync``; the
apiserver with RBAC, a client CA whose ``system:masters`` admin certificate is written to an
admin kubeconfig, a service-account key pair and issuer) with a serving certificate from
:mod:`lattice.adapters.pki` for ``127.0.0.1`` and ``localhost``.

Everything is synchronous (pytest fixtures); :meth:`ControlPlane.astart` and friends run
the same code in a worker thread for async callers.
"""

from __future__ import annotations

import atexit
import ctypes
import json
import os
import random
import shutil
import signal
import socket
import ssl
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio.to_thread
import attrs

from lattice.adapters import capi_crds, kube_kr8s, local_processes, mesh_crds, pki
from lattice.adapters.binaries import Toolchain, locate
from lattice.domain import crds as lattice_crds
from lattice.domain import yaml_text
from lattice.ports import kube

__all__ = [
    "ApplyResult",
    "ControlPlane",
    "ControlPlaneError",
    "ManagedProcess",
    "crd_name_of_file",
    "free_port",
    "http_ok",
    "live_control_planes",
    "start_control_planes",
    "stop_all",
]

SERVICE_CLUSTER_IP_RANGE = "10.0.0.0/24"
KCM_CONTROLLERS = "garbagecollector,namespace,serviceaccount,serviceaccount-token"
# What a workload cluster needs of kube-controller-manager here: node bootstrap (CSRs, tokens),
# node lifecycle, and Deployments for the workloads its kubelet stand-ins run.
KUBEADM_KCM_CONTROLLERS = (
    "csrapproving,csrsigning,csrcleaner,bootstrapsigner,tokencleaner,nodelifecycle,deployment,replicaset"
)
ADMIN_USER = "lattice-admin"
LOOPBACK = "127.0.0.1"
_PR_SET_PDEATHSIG = 1
APISERVER_GRACE = 3.0
"""Seconds a kube-apiserver gets between SIGTERM and SIGKILL."""


class ControlPlaneError(RuntimeError):
    """A control plane that would not start or stop; the message includes its log tails."""


_port_lock = threading.Lock()
_handed_out: set[int] = set()


EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
LISTEN_PORTS_FROM = 10000
"""Ports handed out for listening are drawn from here up to the kernel's ephemeral range."""


def listening_port_range(ephemeral: Path = EPHEMERAL_RANGE) -> tuple[int, int] | None:
    """The ports below the kernel's ephemeral range (``ip_local_port_range``), where no outgoing
    connection takes a local port: a port chosen there stays free until its server binds it.
    None when that range is too narrow or unknown (then the kernel picks, from its range)."""
    try:
        low = int(ephemeral.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None
    return (LISTEN_PORTS_FROM, low - 1) if low - 1 - LISTEN_PORTS_FROM >= 1000 else None


_random_ports = random.Random()  # noqa: S311 - spreading ports, not crypto


def free_port(host: str = LOOPBACK) -> int:
    """A TCP port free on ``host`` now, never one this process handed out before. Drawn below
    the ephemeral range: a port from the kernel's own range could be taken as the local port of
    any outgoing connection (another test's, an API server's) before its server binds it."""
    span = listening_port_range()
    for _ in range(200):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind((host, 0 if span is None else _random_ports.randint(*span)))
            except OSError:
                continue
            port: int = sock.getsockname()[1]
        with _port_lock:
            if port not in _handed_out:
                _handed_out.add(port)
                return port
    raise ControlPlaneError("no free TCP port found")  # pragma: no cover - kernel exhaustion


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether something listens on ``host:port``."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((host, port)) == 0


def clean_env() -> dict[str, str]:
    """This process's environment without the caller's ``KUBE*`` settings (a process started
    for one cluster must never pick up another's ``KUBECONFIG``), with kubectl's rc off."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
    env["KUBERC"] = "off"
    return env


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


@attrs.define(eq=False)
class ManagedProcess:
    """One child process, in its own process group, logging to a file it appends to."""

    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    cwd: Path | None = None

    def start(self, env: Mapping[str, str]) -> None:
        if self.running():
            raise ControlPlaneError(f"{self.name} is already running")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("ab") as log:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            log.write(f"==> {stamp} starting: {' '.join(self.argv)}\n".encode())
            log.flush()
            # A child started from the main thread dies with this process even on SIGKILL;
            # from another thread PDEATHSIG would fire when that thread ends, so it is not set.
            in_main = threading.current_thread() is threading.main_thread()
            self.popen = subprocess.Popen(  # noqa: S603 - argv built here from known binaries
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=dict(env),
                cwd=self.cwd,
                start_new_session=True,
                preexec_fn=_die_with_parent if in_main else None,  # noqa: PLW1509
            )

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def exit_code(self) -> int | None:
        """The exit code of a process that was started and has exited, else ``None``."""
        return self.popen.poll() if self.popen is not None else None

    @property
    def pid(self) -> int | None:
        return self.popen.pid if self.popen is not None else None

    def stop(self, timeout: float) -> None:
        """SIGTERM to the process group, SIGKILL after ``timeout``, then to what the leader left
        in its group, and only then reap the leader.

        The order matters: once the leader is reaped, its pid (the group's id) can be given to
        any new process, and with ``pid_max`` 32768 and thousands of threads it soon is; a
        group signal sent after that could kill another process (another test's API server or
        manager). So a leader already reaped (by :meth:`running` or :meth:`exit_code`) gets no
        group signal at all."""
        popen = self.popen
        if popen is None:
            return
        if popen.returncode is None:  # not reaped: its pid still names its group
            if not _has_exited(popen):
                local_processes.terminate(
                    [popen.pid], timeout, group=True, alive=lambda: not _has_exited(popen)
                )
            local_processes.send(popen.pid, signal.SIGKILL, group=True)
        popen.wait(timeout)
        self.popen = None

    def tail(self, lines: int) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-lines:])


def _has_exited(popen: subprocess.Popen[bytes]) -> bool:
    """Whether the process has exited, without reaping it (``waitid`` with ``WNOWAIT``; ``poll``
    would reap it): until it is reaped, its pid cannot be given to another process."""
    if popen.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:  # reaped behind Popen's back
        return True


def stop_together(procs: Sequence[ManagedProcess], timeout: float) -> None:
    """Stop several processes at once: SIGTERM to every group, one wait of at most ``timeout``
    for all of them, SIGKILL to what is left, each reaped only after its group's last signal
    (:meth:`ManagedProcess.stop`). Stopping them one by one costs the sum of their shutdowns
    (each controller-runtime manager drains its controllers on SIGTERM)."""
    running = [p.popen for p in procs if p.popen is not None and not _has_exited(p.popen)]
    if running:
        local_processes.terminate(
            [popen.pid for popen in running],
            timeout,
            group=True,
            alive=lambda: not all(_has_exited(popen) for popen in running),
        )
    for proc in procs:
        proc.stop(timeout)


def http_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """Whether a GET of ``url`` answers 200 within 2 s. Loopback only: never through an
    HTTP(S)_PROXY from the environment."""
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if context is not None:
        handlers.append(urllib.request.HTTPSHandler(context=context))
    try:
        with urllib.request.build_opener(*handlers).open(url, timeout=2) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


_live_lock = threading.Lock()
_live: set[ControlPlane] = set()


def live_control_planes() -> list[ControlPlane]:
    """Control planes started by this process and not stopped yet."""
    with _live_lock:
        return list(_live)


def stop_all(timeout: float = 10.0) -> None:
    """Stop every control plane this process started (registered with ``atexit``)."""
    for cp in live_control_planes():
        cp.stop(timeout)


atexit.register(stop_all)


@attrs.define(eq=False)
class ControlPlane:
    """One control plane: etcd, kube-apiserver and optionally kube-controller-manager."""

    name: str
    dir: Path
    toolchain: Toolchain
    controller_manager: bool = False
    etcd_port: int = 0
    etcd_peer_port: int = 0
    apiserver_port: int = 0
    kcm_port: int = 0
    kubeadm: bool = False
    """Run as a kubeadm control-plane node does: Node authorization and NodeRestriction,
    bootstrap-token authentication, the controller-manager's CSR signing/approval, bootstrap
    signer, token cleaner and node lifecycle controllers, and a kube-scheduler."""
    pki_source: Path | None = None
    """A kubeadm ``pki`` directory whose ``ca.crt``/``ca.key``/``sa.key``/``sa.pub`` this control
    plane uses (the certificates the real KCP generated) instead of generating its own."""
    scheduler_port: int = 0
    pinned_apiserver_port: int = 0
    """The apiserver always listens here (a machine's apiserver serves the cluster's endpoint)."""
    _procs: dict[str, ManagedProcess] = attrs.field(factory=dict)
    _ssl: ssl.SSLContext | None = None

    @classmethod
    def create(
        cls,
        name: str = "cp",
        *,
        base_dir: Path | None = None,
        toolchain: Toolchain | None = None,
        controller_manager: bool = False,
    ) -> ControlPlane:
        """A control plane (not started) in a new directory under ``base_dir`` (or /tmp)."""
        base_dir = base_dir if base_dir is not None else Path(tempfile.gettempdir())
        base_dir.mkdir(parents=True, exist_ok=True)
        directory = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=base_dir))
        return cls(
            name=name,
            dir=directory,
            toolchain=toolchain if toolchain is not None else locate(),
            controller_manager=controller_manager,
        )

    # -- paths -------------------------------------------------------------------------

    @property
    def url(self) -> str:
        return f"https://{LOOPBACK}:{self.apiserver_port}"

    @property
    def kubeconfig(self) -> Path:
        """The admin kubeconfig (user ``lattice-admin`` in group ``system:masters``)."""
        return self.dir / "admin.kubeconfig"

    @property
    def logs_dir(self) -> Path:
        return self.dir / "logs"

    @property
    def pki_dir(self) -> Path:
        return self.dir / "pki"

    @property
    def ca_file(self) -> Path:
        return self.pki_dir / "ca.crt"

    def _pki(self, name: str) -> Path:
        return self.pki_dir / name

    # -- lifecycle ---------------------------------------------------------------------

    def _write_pki(self) -> None:
        if self.ca_file.is_file():
            return
        if self.pki_source is not None:
            ca = pki.CertificateAuthority(
                cert=pki.cert_from_pem((self.pki_source / "ca.crt").read_bytes()),
                key=pki.key_from_pem((self.pki_source / "ca.key").read_bytes()),
            )
        else:
            ca = pki.new_ca(f"{self.name}-ca", organizations=["lattice-test"])
        serving = ca.issue(
            "kube-apiserver",
            dns_names=["localhost", "kubernetes", "kubernetes.default"],
            ip_addresses=[LOOPBACK],
            server=True,
        )
        admin = ca.issue(ADMIN_USER, organizations=["system:masters"], client=True)
        # With --use-service-account-credentials=false every controller acts as the
        # controller-manager itself, so (like a single-credential test setup) it is a superuser.
        kcm = ca.issue("system:kube-controller-manager", organizations=["system:masters"], client=True)
        kcm_serving = ca.issue(
            "kube-controller-manager",
            dns_names=["localhost"],
            ip_addresses=[LOOPBACK],
            server=True,
        )
        sa = (
            pki.generate_key()
            if self.pki_source is None
            else pki.key_from_pem((self.pki_source / "sa.key").read_bytes())
        )
        scheduler = ca.issue("system:kube-scheduler", client=True)
        files = {
            "scheduler.crt": scheduler.cert_pem,
            "scheduler.key": scheduler.key_pem,
            "ca.key": ca.key_pem,
            "apiserver.crt": serving.cert_pem,
            "apiserver.key": serving.key_pem,
            "admin.crt": admin.cert_pem,
            "admin.key": admin.key_pem,
            "kcm.crt": kcm.cert_pem,
            "kcm.key": kcm.key_pem,
            "kcm-serving.crt": kcm_serving.cert_pem,
            "kcm-serving.key": kcm_serving.key_pem,
            "sa.key": pki.key_to_pem(sa),
            "sa.pub": pki.public_key_to_pem(sa),
        }
        for name, data in files.items():
            pki.write_private_file(self._pki(name), data)
        pki.write_private_file(self.ca_file, ca.cert_pem)  # last: marks the PKI complete

    def _write_kubeconfigs(self) -> None:
        ca = self.ca_file.read_bytes()
        for path, cert, user in (
            (self.kubeconfig, "admin", ADMIN_USER),
            (self.dir / "kcm.kubeconfig", "kcm", "system:kube-controller-manager"),
            (self.dir / "scheduler.kubeconfig", "scheduler", "system:kube-scheduler"),
        ):
            text = yaml_text.kubeconfig(
                self.name,
                url=self.url,
                ca=ca,
                cert=self._pki(f"{cert}.crt").read_bytes(),
                key=self._pki(f"{cert}.key").read_bytes(),
                user=user,
            )
            pki.write_private_file(path, text.encode())

    def _allocate_ports(self) -> None:
        self.etcd_port = free_port()
        self.etcd_peer_port = free_port()
        self.apiserver_port = self.pinned_apiserver_port or free_port()
        self.kcm_port = free_port()
        self.scheduler_port = free_port()

    def _env(self) -> dict[str, str]:
        return clean_env()

    def env(self) -> dict[str, str]:
        """The environment its processes run with (no ``KUBE*`` variables of the caller)."""
        return self._env()

    def _etcd_argv(self) -> list[str]:
        client = f"http://{LOOPBACK}:{self.etcd_port}"
        peer = f"http://{LOOPBACK}:{self.etcd_peer_port}"
        return [
            str(self.toolchain.etcd),
            "--name=default",
            f"--data-dir={self.dir / 'etcd'}",
            f"--listen-client-urls={client}",
            f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=default={peer}",
            "--unsafe-no-fsync=true",
            "--log-level=warn",
        ]

    @property
    def _etcd_bootstrapping(self) -> Path:
        return self.dir / "etcd.bootstrapping"

    def _discard_interrupted_etcd_bootstrap(self) -> None:
        """Start etcd from an empty data directory unless a start of it ever got ready.

        etcd stopped during its very first start can leave a WAL without its own
        membership; started again on it, it never elects itself and the apiserver gives
        up (etcd-io/etcd#10688). A marker is written before the first start and removed
        by the first ready probe, so only a directory that never served is discarded.
        """
        data = self.dir / "etcd"
        if self._etcd_bootstrapping.exists():
            shutil.rmtree(data, ignore_errors=True)
        elif data.exists():
            return
        self._etcd_bootstrapping.touch()

    def _apiserver_argv(self) -> list[str]:
        return [
            str(self.toolchain.kube_apiserver),
            f"--etcd-servers=http://{LOOPBACK}:{self.etcd_port}",
            f"--cert-dir={self.dir / 'apiserver-certs'}",
            f"--tls-cert-file={self._pki('apiserver.crt')}",
            f"--tls-private-key-file={self._pki('apiserver.key')}",
            f"--secure-port={self.apiserver_port}",
            f"--bind-address={LOOPBACK}",
            f"--advertise-address={LOOPBACK}",
            f"--service-cluster-ip-range={SERVICE_CLUSTER_IP_RANGE}",
            "--allow-privileged=true",
            *(
                # As kubeadm runs it: pods get their ServiceAccount token volume, which is what
                # lets a node request a token for them (the Node authorizer checks its audience).
                ["--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction"]
                if self.kubeadm
                else ["--authorization-mode=RBAC", "--disable-admission-plugins=ServiceAccount"]
            ),
            *(["--enable-bootstrap-token-auth=true"] if self.kubeadm else []),
            f"--client-ca-file={self.ca_file}",
            f"--service-account-issuer=https://{LOOPBACK}:{self.apiserver_port}",
            f"--service-account-key-file={self._pki('sa.pub')}",
            f"--service-account-signing-key-file={self._pki('sa.key')}",
            "--endpoint-reconciler-type=none",
            "--enable-priority-and-fairness=false",
            # On SIGTERM, end open watches after 1 s rather than wait for them: with the default
            # (0, untracked) an API server whose clients still watch (the kubelet stand-in, the
            # Cluster API managers' caches of a workload cluster) does not exit within 10 s, and
            # each stop waited out APISERVER_GRACE before its SIGKILL.
            "--shutdown-watch-termination-grace-period=1s",
            "--profiling=false",
        ]

    def _component_argv(self, binary: Path, kubeconfig: Path, port: int) -> list[str]:
        """What kube-controller-manager and kube-scheduler share: one kubeconfig for the API,
        authentication and authorization, serving on loopback."""
        return [
            str(binary),
            f"--kubeconfig={kubeconfig}",
            f"--authentication-kubeconfig={kubeconfig}",
            f"--authorization-kubeconfig={kubeconfig}",
            f"--bind-address={LOOPBACK}",
            f"--secure-port={port}",
        ]

    def _kcm_argv(self) -> list[str]:
        kubeconfig = self.dir / "kcm.kubeconfig"
        return [
            *self._component_argv(self.toolchain.kube_controller_manager, kubeconfig, self.kcm_port),
            f"--cert-dir={self.dir / 'kcm-certs'}",
            f"--tls-cert-file={self._pki('kcm-serving.crt')}",
            f"--tls-private-key-file={self._pki('kcm-serving.key')}",
            f"--controllers={KCM_CONTROLLERS},{KUBEADM_KCM_CONTROLLERS}"
            if self.kubeadm
            else f"--controllers={KCM_CONTROLLERS}",
            *(
                [
                    f"--cluster-signing-cert-file={self.ca_file}",
                    f"--cluster-signing-key-file={self._pki('ca.key')}",
                    "--node-monitor-grace-period=40s",
                ]
                if self.kubeadm
                else []
            ),
            "--use-service-account-credentials=false",
            "--leader-elect=false",
            f"--service-account-private-key-file={self._pki('sa.key')}",
            f"--root-ca-file={self.ca_file}",
            "--profiling=false",
        ]

    def _process(self, name: str, argv: list[str]) -> ManagedProcess:
        proc = self._procs.get(name)
        if proc is None:
            proc = ManagedProcess(name=name, argv=argv, log_path=self.logs_dir / f"{name}.log")
            self._procs[name] = proc
        else:
            proc.argv = argv
        return proc

    def launch(self) -> None:
        """Start the processes without waiting for them (see :meth:`wait_ready`)."""
        if self.running:
            raise ControlPlaneError(f"control plane {self.name} is already running")
        self.dir.mkdir(parents=True, exist_ok=True)
        self._write_pki()
        if not self.apiserver_port:
            self._allocate_ports()
        self._write_kubeconfigs()
        self._ssl = None
        with _live_lock:
            _live.add(self)
        self._discard_interrupted_etcd_bootstrap()
        env = self._env()
        self._process("etcd", self._etcd_argv()).start(env)
        self._process("kube-apiserver", self._apiserver_argv()).start(env)
        # The controller-manager starts once the apiserver is ready (see ready()): before
        # RBAC is bootstrapped it cannot read its authentication config and exits.
        for late in ("kube-controller-manager", "kube-scheduler"):
            proc = self._procs.get(late)
            if proc is not None:
                proc.popen = None

    @property
    def running(self) -> bool:
        """Whether any of its processes runs."""
        return any(p.running() for p in self._procs.values())

    def running_processes(self) -> list[str]:
        """The names of its processes that run now (``etcd``, ``kube-apiserver``, ...)."""
        return [name for name, p in self._procs.items() if p.running()]

    def pids(self) -> list[int]:
        """The process ids of its running processes."""
        return [p.pid for p in self._procs.values() if p.running() and p.pid is not None]

    def ports(self) -> list[int]:
        ports = [self.etcd_port, self.etcd_peer_port, self.apiserver_port]
        return [*ports, self.kcm_port] if self.controller_manager else ports

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            context = ssl.create_default_context(cafile=str(self.ca_file))
            context.load_cert_chain(str(self._pki("admin.crt")), str(self._pki("admin.key")))
            self._ssl = context
        return self._ssl

    def get_json(self, path: str, timeout: float = 30.0) -> dict[str, Any] | None:
        """GET ``path`` (``/api/...``, ``/apis/...``) as the admin from this process: the
        object, or None when the API server answers 404. Tests poll through this: a request
        costs this process about a millisecond of CPU, a ``kubectl get`` process about 80 ms.

        :raises ControlPlaneError: any other answer, or no answer, naming the path."""
        opener = urllib.request.build_opener(
            urllib.request.ProxyHandler({}), urllib.request.HTTPSHandler(context=self._ssl_context())
        )
        # self.url is always https://127.0.0.1:<port>: no other scheme can reach the opener.
        request = urllib.request.Request(self.url + path, headers={"Accept": "application/json"})  # noqa: S310
        try:
            with opener.open(request, timeout=timeout) as response:
                body: dict[str, Any] = json.loads(response.read())
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            detail = exc.read().decode(errors="replace")[:500]
            raise ControlPlaneError(f"{self.name}: GET {path}: HTTP {exc.code}: {detail}") from exc
        except (urllib.error.URLError, OSError) as exc:
            raise ControlPlaneError(f"{self.name}: GET {path}: {exc}") from exc
        return body

    def _get_ok(self, url: str) -> bool:
        return http_ok(url, self._ssl_context())

    def _check_alive(self) -> None:
        for proc in self._procs.values():
            code = proc.exit_code()
            if code is not None:
                raise ControlPlaneError(
                    f"{self.name}: {proc.name} exited with code {code}\n{self.log_tails()}"
                )

    def ready(self) -> bool:
        """One readiness probe: apiserver ``/readyz``, then controller-manager ``/healthz``.

        The controller-manager is started by the first probe that finds the apiserver ready.
        """
        self._check_alive()
        if not self._get_ok(f"{self.url}/readyz"):
            return False
        self._etcd_bootstrapping.unlink(missing_ok=True)
        if self.kubeadm:
            scheduler = self._process("kube-scheduler", self._scheduler_argv())
            if scheduler.popen is None:
                scheduler.start(self._env())
        if not self.controller_manager:
            return True
        kcm = self._process("kube-controller-manager", self._kcm_argv())
        if kcm.popen is None:
            kcm.start(self._env())
            return False
        return self._get_ok(f"https://{LOOPBACK}:{self.kcm_port}/healthz")

    def _scheduler_argv(self) -> list[str]:
        kubeconfig = self.dir / "scheduler.kubeconfig"
        return [
            *self._component_argv(self.toolchain.kube_scheduler, kubeconfig, self.scheduler_port),
            "--leader-elect=false",
            "--profiling=false",
        ]

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Wait until :meth:`ready`; raise :class:`ControlPlaneError` with the logs if not."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{self.name} not ready after {timeout:.0f}s\n{self.log_tails()}")
            time.sleep(0.1)

    def start(self, timeout: float = 60.0) -> Self:
        """Launch and wait until ready; retry with fresh ports if a port was taken meanwhile."""
        _start_all([self], timeout)
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop every process (SIGTERM, SIGKILL after ``timeout``); the directory stays."""
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self._procs.get(name)
            if proc is not None:
                proc.stop(min(timeout, APISERVER_GRACE) if name == "kube-apiserver" else timeout)
        with _live_lock:
            _live.discard(self)

    def detach(self) -> None:
        """Let the processes outlive this Python process (the local provider's "machines"):
        the ``atexit`` hook no longer stops them. Start from a non-main thread so that no
        parent-death signal is set either."""
        with _live_lock:
            _live.discard(self)

    def stop_apiserver(self, timeout: float = APISERVER_GRACE) -> None:
        """Stop only the kube-apiserver (etcd and the controller-manager keep running).

        An apiserver with open watches (any controller) does not exit on SIGTERM for a long
        time although it stops listening at once, so it gets only a short grace period
        before SIGKILL; its state is all in etcd.
        """
        proc = self._procs.get("kube-apiserver")
        if proc is not None:
            proc.stop(timeout)

    def start_apiserver(self, timeout: float = 60.0) -> None:
        """Start the kube-apiserver again on the same port and wait for ``/readyz``."""
        proc = self._process("kube-apiserver", self._apiserver_argv())
        proc.start(self._env())
        deadline = time.monotonic() + timeout
        while not self._get_ok(f"{self.url}/readyz"):
            self._check_alive()
            if time.monotonic() > deadline:
                raise ControlPlaneError(f"{self.name}: apiserver not ready\n{self.log_tails()}")
            time.sleep(0.1)

    def restart_apiserver(self, timeout: float = 60.0) -> None:
        """Stop and start the kube-apiserver (same URL, same data, same credentials)."""
        self.stop_apiserver()
        self.start_apiserver(timeout)

    def log_tails(self, lines: int = 40) -> str:
        """The last lines of each process log, for error messages."""
        parts = []
        for proc in self._procs.values():
            parts.append(f"--- {proc.log_path} (last {lines} lines) ---\n{proc.tail(lines)}")
        return "\n".join(parts)

    # -- kubectl -----------------------------------------------------------------------

    def kubectl(
        self,
        *args: str,
        input: str | None = None,
        check: bool = True,
        timeout: float = 120.0,
    ) -> subprocess.CompletedProcess[str]:
        """Run the real kubectl against this control plane as the admin."""
        argv = [
            str(self.toolchain.kubectl),
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self.dir / 'kubectl-cache'}",
            *args,
        ]
        result = subprocess.run(  # noqa: S603 - argv built from our kubectl
            argv,
            input=input,
            capture_output=True,
            text=True,
            env=self._env(),
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            stderr = result.stderr.strip()
            if len(stderr) > 4000:
                stderr = f"{stderr[:2000]}\n[...]\n{stderr[-2000:]}"
            raise ControlPlaneError(f"kubectl {' '.join(args)[:300]} failed ({result.returncode}): {stderr}")
        return result

    def apply(
        self,
        manifests: str | Sequence[Mapping[str, Any]],
        *,
        dry_run: bool = False,
        field_manager: str = "lattice",
        check: bool = True,
        together: bool = False,
    ) -> ApplyResult:
        """Server-side apply of a YAML stream or of objects as the admin, through the one
        implementation (:meth:`lattice.adapters.kube_kr8s.Kr8sKube.apply`): in order, forcing
        conflicts, refusing unknown fields, a namespaced object without a namespace in
        ``default``. A refused object does not stop the others; with ``check`` any refusal
        raises :class:`ControlPlaneError` naming them. ``together``: objects that do not depend
        on each other, sent all at once."""
        objects = _documents(manifests) if isinstance(manifests, str) else [dict(m) for m in manifests]
        try:
            done = kube_kr8s.apply_blocking(
                str(self.kubeconfig), objects, field_manager, dry_run=dry_run, together=together
            )
            result = ApplyResult(done.objects, done.errors)
        except kube.KubeError as exc:  # the API server cannot be reached at all
            result = ApplyResult((), (str(exc),))
        if check and result.errors:
            raise ControlPlaneError(f"{self.name}: apply refused: {result.stderr}")
        return result

    def wait_established(self, crd_names: Iterable[str], timeout: float = 120.0) -> None:
        """Until every named CRD is Established, through the kube client as the agent waits
        (:func:`lattice.adapters.kube_kr8s.await_established`)."""
        try:
            kube_kr8s.wait_established_blocking(str(self.kubeconfig), crd_names, timeout)
        except (TimeoutError, kube.KubeError) as exc:
            raise ControlPlaneError(f"{self.name}: {exc}") from exc

    def install_crds(self, crds: Sequence[Mapping[str, Any]]) -> list[str]:
        """Apply CRD objects and wait until they are Established; return their names."""
        self.apply(crds)
        names = [str(crd["metadata"]["name"]) for crd in crds]
        self.wait_established(names)
        return names

    def install_mesh_crds(self, names: Iterable[str] = mesh_crds.DISCOVERY_CRDS) -> list[str]:
        """Install the real Istio/Cilium/Gateway API/external-dns CRDs the discovery compilers
        target (fetched by scripts/fetch-mesh-crds.sh), as a platform's mesh install would."""
        return self.install_crds(mesh_crds.load_mesh_crds(mesh_crds.locate_mesh_crds(), names))

    def install_lattice_crds(self) -> list[str]:
        """Install the CRDs ``lattice crds`` prints (:func:`lattice.domain.crds.all_crds`)."""
        return self.install_crds(lattice_crds.all_crds())

    def install_capi_crds(self, providers: Iterable[str] | None = None) -> list[str]:
        """Install the collected Cluster API CRDs labelled as ``clusterctl init`` labels them.

        kubectl itself reads the (large) upstream YAML files and hands them over as JSON
        (``create --dry-run=client``, which sends nothing); the labels are added here and
        everything is applied server-side in one go, then waited on until Established.
        """
        loaded = capi_crds.load_providers(self.toolchain.crd_dir, providers)
        files = [arg for p in loaded for f in p.files for arg in ("-f", str(f))]
        converted = self.kubectl("create", "--dry-run=client", "-o", "json", *files, timeout=300)
        by_file = {crd_name_of_file(f): p for p in loaded for f in p.files}
        crds: list[dict[str, Any]] = []
        for crd in _json_stream(converted.stdout):
            name = str(crd["metadata"]["name"])
            owner = by_file.get(name)
            if owner is None or crd.get("kind") != "CustomResourceDefinition":
                raise ControlPlaneError(f"{crd.get('kind')} {name} matches no collected CRD file")
            labelled = dict(crd)
            labelled["metadata"] = {
                **crd["metadata"],
                "labels": {**crd["metadata"].get("labels", {}), **capi_crds.crd_labels(owner, crd)},
            }
            crds.append(labelled)
        if len(crds) != len(by_file):
            raise ControlPlaneError(f"kubectl read {len(crds)} CRDs from {len(by_file)} files")
        return self.install_crds(crds)

    # -- context managers and async ------------------------------------------------------

    def __enter__(self) -> Self:
        if not self.running:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    async def astart(self, ready_within: float = 60.0) -> Self:
        await anyio.to_thread.run_sync(lambda: self.start(ready_within))
        return self

    async def astop(self, grace: float = 10.0) -> None:
        await anyio.to_thread.run_sync(lambda: self.stop(grace))

    async def arestart_apiserver(self, ready_within: float = 60.0) -> None:
        await anyio.to_thread.run_sync(lambda: self.restart_apiserver(ready_within))

    async def __aenter__(self) -> Self:
        if not self.running:
            await self.astart()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.astop()


@attrs.frozen
class ApplyResult:
    """What :meth:`ControlPlane.apply` did: the objects as the server returned them, and one
    line per refused object. ``returncode`` and ``stderr`` read like the kubectl results tests
    were written against (0 when nothing was refused; the refusals)."""

    objects: tuple[dict[str, Any], ...]
    errors: tuple[str, ...]

    @property
    def returncode(self) -> int:
        return 1 if self.errors else 0

    @property
    def stderr(self) -> str:
        return "\n".join(self.errors)


def _documents(text: str) -> list[dict[str, Any]]:
    """The objects of a YAML stream, Lists flattened, empty documents skipped."""
    out: list[dict[str, Any]] = []
    for doc in yaml_text.load_all(text):
        if isinstance(doc, dict):
            out.extend(dict(item) for item in _items(doc))
    return out


def _items(obj: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    if obj.get("kind", "").endswith("List"):
        return list(obj.get("items", []))
    return [obj]


def _json_stream(text: str) -> list[Mapping[str, Any]]:
    """Objects from concatenated JSON documents (as ``kubectl create -o json`` prints them)."""
    decoder = json.JSONDecoder()
    objects: list[Mapping[str, Any]] = []
    index = 0
    while True:
        while index < len(text) and text[index].isspace():
            index += 1
        if index >= len(text):
            return objects
        obj, index = decoder.raw_decode(text, index)
        objects.extend(_items(obj))


def crd_name_of_file(path: Path) -> str:
    """``<group>_<plural>.yaml`` (the controller-gen file name) -> ``<plural>.<group>``."""
    group, _, plural = path.stem.partition("_")
    return f"{plural}.{group}"


def _port_conflict(cp: ControlPlane) -> bool:
    needles = ("address already in use", "bind: address")
    return any(n in p.tail(30).lower() for p in cp._procs.values() for n in needles)


def _start_all(cps: Sequence[ControlPlane], timeout: float, attempts: int = 3) -> None:
    pending = list(cps)
    for attempt in range(1, attempts + 1):
        for cp in pending:
            cp.launch()
        failed: list[ControlPlane] = []
        errors: list[ControlPlaneError] = []
        deadline = time.monotonic() + timeout
        waiting = list(pending)
        while waiting:
            for cp in list(waiting):
                try:
                    if cp.ready():
                        waiting.remove(cp)
                except ControlPlaneError as exc:
                    waiting.remove(cp)
                    cp.stop()
                    if _port_conflict(cp) and attempt < attempts:
                        cp.apiserver_port = 0  # fresh ports on the next launch
                        failed.append(cp)
                    else:
                        errors.append(exc)
            if errors:
                break
            if waiting and time.monotonic() > deadline:
                for cp in waiting:
                    errors.append(
                        ControlPlaneError(f"{cp.name} not ready after {timeout:.0f}s\n{cp.log_tails()}")
                    )
                    cp.stop()
                break
            if waiting:
                time.sleep(0.1)
        if errors:
            for cp in cps:
                cp.stop()
            raise errors[0]
        if not failed:
            return
        pending = failed


def start_control_planes(
    count: int,
    *,
    base_dir: Path | None = None,
    toolchain: Toolchain | None = None,
    controller_manager: bool = False,
    names: Sequence[str] | None = None,
    timeout: float = 90.0,
) -> list[ControlPlane]:
    """Start ``count`` independent control planes at once and wait until all are ready."""
    names = list(names) if names is not None else [f"cp{i}" for i in range(count)]
    if len(names) != count:
        raise ValueError("names must have count entries")
    tools = toolchain if toolchain is not None else locate()
    cps = [
        ControlPlane.create(name, base_dir=base_dir, toolchain=tools, controller_manager=controller_manager)
        for name in names
    ]
    _start_all(cps, timeout)
    return cps
