"""Which pods a local machine's kubelet stand-in can run, and how (pure).

There is no container runtime here. The kubelet stand-in runs a pod bound to its Node only when
the pod's one container is Lattice's own program (the Lattice image, or an explicit
``lattice`` command), or one of the programs of :data:`KNOWN_IMAGES` (the Flux controllers
Lattice installs, built from their Go modules by ``scripts/build-addons.sh``): it runs that
program as a local process with the container's arguments (``$(VAR)`` expanded from the
container's environment, as a kubelet does), its Secret and emptyDir volumes written to
directories (paths in arguments and environment values rewritten to them), and a kubeconfig
holding a token for the pod's ServiceAccount, bound to the pod (the TokenRequest API, as a
kubelet does for a projected service-account token). So the RBAC the pod's ServiceAccount is
given is the RBAC it runs with. Anything else stays Pending, and the reason is in the log.

A known program also gets its ServiceAccount volume where every pod has it,
``/var/run/secrets/kubernetes.io/serviceaccount`` (token, ``ca.crt``, ``namespace``), as a
container runtime mounts it: the process runs in a mount namespace of its own (``unshare``)
with a tmpfs over ``/var/run`` and the pod's directory bound there, so nothing on the host
changes (controller-runtime reads its leader-election namespace from that path).

Pods share this host's network, so a known program's named container ports are given free
local ports, passed with the flag that program binds each with; its HTTP readiness probe is
run against the mapped port, and the pod is Ready only while it answers. A Lattice pod is Ready
while its process runs.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from enum import StrEnum
from typing import Any

from attrs import frozen

Obj = Mapping[str, Any]

LATTICE_IMAGE_REPOSITORY = "lattice"  # the last path segment of the Lattice image's repository
TOKEN_SECONDS = 24 * 3600


@frozen
class KnownProgram:
    """A non-Lattice program the stand-in can run: its binary (in the add-ons bundle) and the
    flag that binds each of its named container ports; or, for a program that cannot run here
    at all, the ``lattice`` subcommand that stands in for it (``stand_in``)."""

    binary: str
    port_flags: Mapping[str, str]
    stand_in: tuple[str, ...] = ()


KNOWN_IMAGES: Mapping[str, KnownProgram] = {
    "ghcr.io/fluxcd/source-controller": KnownProgram(
        "source-controller",
        {"http": "--storage-addr", "http-prom": "--metrics-addr", "healthz": "--health-addr"},
    ),
    "ghcr.io/fluxcd/kustomize-controller": KnownProgram(
        "kustomize-controller", {"http-prom": "--metrics-addr", "healthz": "--health-addr"}
    ),
    # Cilium's operator needs Cilium's agents and a datapath: ``lattice local-lb`` stands in for
    # its LB-IPAM and for the delivery of LoadBalancer addresses (lattice.domain.local_lb).
    "quay.io/cilium/operator-generic": KnownProgram("", {"health": "--health-addr"}, ("local-lb",)),
}


def _repository(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return name[: len(name) - len(last)] + last.split(":", 1)[0]


def known_program(pod: Obj) -> KnownProgram | None:
    """The known program a pod's one container runs, if it is one."""
    containers = (pod.get("spec") or {}).get("containers") or [{}]
    return KNOWN_IMAGES.get(_repository(str(containers[0].get("image", ""))))


def _image_repository(image: str) -> str:
    name = image.split("@", 1)[0]
    last = name.rsplit("/", 1)[-1]
    return last.split(":", 1)[0]


def refusal(pod: Obj) -> str | None:
    """Why this kubelet cannot run ``pod``, or ``None`` if it can."""
    spec = pod.get("spec") or {}
    containers = spec.get("containers") or []
    if spec.get("initContainers"):
        return "init containers are not run by the local kubelet stand-in"
    if len(containers) != 1:
        return "the local kubelet stand-in runs pods with exactly one container"
    container = containers[0]
    command = container.get("command") or []
    program = known_program(pod)
    if program is not None:
        if command and not program.stand_in:
            return "a known program's image runs with its own entrypoint"
        return None
    if command:
        if command[0] != "lattice":
            return f"the local kubelet stand-in runs only the lattice program, not {command[0]!r}"
        return None
    if _image_repository(str(container.get("image", ""))) != LATTICE_IMAGE_REPOSITORY:
        return f"the local kubelet stand-in runs only the Lattice image, not {container.get('image')!r}"
    return None


def secret_sources(volume: Obj) -> list[str]:
    """The Secrets a volume projects (``secret`` or ``projected`` sources)."""
    if "secret" in volume:
        return [str(volume["secret"]["secretName"])]
    sources = (volume.get("projected") or {}).get("sources") or []
    return [str(s["secret"]["name"]) for s in sources if "secret" in s]


def volume_mounts(pod: Obj) -> dict[str, str]:
    """Volume name → mount path, for the pod's one container."""
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    return {str(m["name"]): str(m["mountPath"]) for m in container.get("volumeMounts") or []}


def _rewrite(arg: str, replacements: Mapping[str, str]) -> str:
    """A path under a mount, alone or as a ``--flag=path`` value, moved to its local directory."""
    prefix, sep, value = arg.partition("=")
    if sep and prefix.startswith("-"):
        return f"{prefix}={_rewrite(value, replacements)}"
    for mount, local in replacements.items():
        if arg == mount or arg.startswith(mount.rstrip("/") + "/"):
            return local + arg[len(mount) :]
    return arg


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' ``$(VAR)`` expansion: defined names are replaced, ``$$`` is a literal ``$``,
    anything else stays as written."""

    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        return env.get(match.group(1), match.group(0))

    return _VAR.sub(one, text)


POD_IP = "127.0.0.1"
_QUANTITY = re.compile(r"^([0-9]+)(Ki|Mi|Gi|Ti|k|M|G|T)?$")
_FACTORS = {
    None: 1,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
    "k": 10**3,
    "M": 10**6,
    "G": 10**9,
    "T": 10**12,
}


def _memory_bytes(quantity: str) -> str | None:
    match = _QUANTITY.match(quantity)
    return None if match is None else str(int(match.group(1)) * _FACTORS[match.group(2)])


def container_env(pod: Obj, mounts: Mapping[str, str]) -> tuple[dict[str, str], list[str]]:
    """The container's environment as a kubelet resolves it (values, the pod's name and
    namespace, its memory limit in bytes), paths rewritten; and what it could not resolve."""
    meta = pod.get("metadata") or {}
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    limits = (container.get("resources") or {}).get("limits") or {}
    env: dict[str, str] = {}
    unresolved: list[str] = []
    fields = {
        "metadata.name": meta.get("name"),
        "metadata.namespace": meta.get("namespace"),
        "spec.nodeName": (pod.get("spec") or {}).get("nodeName"),
        "status.podIP": POD_IP,  # pods share the host's network here
        "status.hostIP": POD_IP,
    }
    for item in container.get("env") or []:
        name = str(item.get("name"))
        source = item.get("valueFrom")
        if source is None:
            env[name] = _rewrite(expand(str(item.get("value", "")), env), mounts)
        elif "fieldRef" in source and fields.get(source["fieldRef"].get("fieldPath")):
            env[name] = str(fields[source["fieldRef"]["fieldPath"]])
        elif "resourceFieldRef" in source and source["resourceFieldRef"].get("resource") == "limits.memory":
            found = _memory_bytes(str(limits.get("memory", "")))
            if found is None:
                unresolved.append(name)
            else:
                env[name] = found
        else:
            unresolved.append(name)
    return env, unresolved


def named_ports(pod: Obj) -> list[str]:
    """The named container ports of a known program that it binds with a flag."""
    program = known_program(pod)
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    if program is None:
        return []
    return [str(p["name"]) for p in container.get("ports") or [] if p.get("name") in program.port_flags]


def known_program_argv(
    pod: Obj, *, binary: str, mounts: Mapping[str, str], env: Mapping[str, str], ports: Mapping[str, int]
) -> list[str]:
    """A known program's local command line: its image's entrypoint (``binary``), the
    container's arguments expanded and rewritten, then each named port's flag on its free local
    port (a later flag wins over the container's own)."""
    program = known_program(pod)
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    args = [_rewrite(expand(str(a), env), mounts) for a in container.get("args") or []]
    if program is not None:
        args += [f"{program.port_flags[name]}=127.0.0.1:{port}" for name, port in sorted(ports.items())]
    return [binary, *args]


def stand_in_argv(pod: Obj, *, python: str, kubeconfig: str, ports: Mapping[str, int]) -> list[str]:
    """The command line of the ``lattice`` stand-in for a known program that cannot run here:
    the container's own arguments are the real program's and are not passed."""
    program = known_program(pod)
    if program is None or not program.stand_in:
        raise ValueError("not a stand-in program's pod")
    flags = [f"{program.port_flags[name]}=127.0.0.1:{port}" for name, port in sorted(ports.items())]
    return [python, "-m", "lattice.app.cli", *program.stand_in, "--kubeconfig", kubeconfig, *flags]


SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
_PROJECT_SERVICE_ACCOUNT = (
    'run="$(readlink -f /var/run)" && mount -t tmpfs -o mode=0755 tmpfs "$run" '
    '&& mkdir -p "$run/secrets/kubernetes.io/serviceaccount" '
    '&& mount --bind "$1" "$run/secrets/kubernetes.io/serviceaccount" && shift && exec "$@"'
)


def with_service_account_volume(argv: Sequence[str], local_dir: str) -> list[str]:
    """``argv`` run with ``local_dir`` mounted at :data:`SERVICE_ACCOUNT_DIR`, in a private
    mount namespace (the process keeps its pid: ``unshare`` and ``sh`` exec)."""
    return [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        _PROJECT_SERVICE_ACCOUNT,
        "sh",
        local_dir,
        *argv,
    ]


def service_account_files(namespace: str, token: str, ca_pem: bytes) -> dict[str, bytes]:
    """The files of a pod's projected ServiceAccount volume."""
    return {"token": token.encode(), "ca.crt": ca_pem, "namespace": namespace.encode()}


def readiness_probe(pod: Obj, ports: Mapping[str, int]) -> tuple[int, str] | None:
    """(local port, path) of the container's HTTP readiness probe, when its port is one this
    kubelet mapped; ``None`` when there is no such probe."""
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    get = ((container.get("readinessProbe") or {}).get("httpGet")) or None
    if get is None:
        return None
    port = get.get("port")
    if isinstance(port, str) and port in ports:
        return ports[port], str(get.get("path") or "/")
    return None


def pod_argv(pod: Obj, *, python: str, kubeconfig: str, mounts: Mapping[str, str]) -> list[str]:
    """The local command line of a runnable pod. ``mounts``: container path → local directory.

    Pods share this host's network here, so the operator's health server gets a free port
    (``--health-port 0``) instead of the container port."""
    container = (pod.get("spec") or {}).get("containers", [{}])[0]
    command = list(container.get("command") or ["lattice"])
    env, _ = container_env(pod, mounts)
    args = [_rewrite(expand(str(a), env), mounts) for a in [*command[1:], *(container.get("args") or [])]]
    extra = ["--kubeconfig", kubeconfig]
    if args[:1] == ["operator"]:
        extra += ["--health-port", "0"]
    return [python, "-m", "lattice.app.cli", *args, *extra]


def token_request(pod: Obj) -> dict[str, Any]:
    """A TokenRequest for the pod's ServiceAccount, bound to the pod (so it dies with it)."""
    meta = pod.get("metadata") or {}
    return {
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": TOKEN_SECONDS,
            "boundObjectRef": {
                "apiVersion": "v1",
                "kind": "Pod",
                "name": meta.get("name"),
                "uid": meta.get("uid"),
            },
        },
    }


def service_account(pod: Obj) -> str:
    spec = pod.get("spec") or {}
    return str(spec.get("serviceAccountName") or spec.get("serviceAccount") or "default")


def pod_status(
    pod: Obj,
    *,
    running: bool,
    restarts: int,
    started_at: str,
    now: str,
    message: str = "",
    probe_ready: bool | None = None,
) -> dict[str, Any]:
    """The status a kubelet reports: Running while the process runs, Ready then too unless its
    readiness probe says otherwise (``probe_ready``); when it has exited and waits to be
    restarted, ``CrashLoopBackOff`` with the exit in ``message``."""
    meta = pod.get("metadata") or {}
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    is_ready = running and probe_ready is not False
    ready = "True" if is_ready else "False"

    def condition(kind: str, status: str) -> Obj:
        return {"type": kind, "status": status, "lastTransitionTime": now}

    state: Obj = (
        {"running": {"startedAt": started_at}}
        if running
        else {"waiting": {"reason": "CrashLoopBackOff", "message": message}}
    )
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
        "status": {
            "phase": "Running",
            "hostIP": "127.0.0.1",
            "podIP": "127.0.0.1",
            "startTime": started_at,
            "conditions": [
                condition("PodScheduled", "True"),
                condition("Initialized", "True"),
                condition("ContainersReady", ready),
                condition("Ready", ready),
            ],
            "containerStatuses": [
                {
                    "name": container.get("name", ""),
                    "image": container.get("image", ""),
                    "imageID": "",
                    "ready": is_ready,
                    "started": running,
                    "restartCount": restarts,
                    "state": state,
                }
            ],
        },
    }


def token_kubeconfig(server: str, ca_pem_b64: str, token: str, user: str) -> dict[str, Any]:
    """A kubeconfig that authenticates with a ServiceAccount token (no client certificate)."""
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "cluster", "cluster": {"server": server, "certificate-authority-data": ca_pem_b64}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "cluster", "context": {"cluster": "cluster", "user": user}}],
        "current-context": "cluster",
    }


def runnable_pods(pods: Sequence[Obj]) -> list[Obj]:
    """The pods this kubelet should have running: not being deleted, not finished."""
    return [
        p
        for p in pods
        if not (p.get("metadata") or {}).get("deletionTimestamp")
        and (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
    ]


# -- running a Lattice pod from the built image (LATTICE_POD_RUNTIME) ---------------------------

RUNTIME_ENV = "LATTICE_POD_RUNTIME"
IMAGE_DIR_ENV = "LATTICE_IMAGE_DIR"
HOST_EXEC_ENV = "LATTICE_HOST_EXEC"  # how a local-infra operator pod reaches the host (see below)
HOST_ROOT = "/host"  # where such a pod sees the host's root filesystem
DEVICES = ("null", "zero", "random", "urandom")


class PodRuntime(StrEnum):
    """Where the kubelet stand-in runs a Lattice pod from: the developer's source tree (its
    virtualenv, as local processes) or the built image's root filesystem (what ships)."""

    SOURCE = "source"
    IMAGE = "image"


def pod_runtime(value: str | None, image_dir: str | None) -> PodRuntime:
    """``LATTICE_POD_RUNTIME`` when set, else the image when ``LATTICE_IMAGE_DIR`` is set (CI
    sets it), else the source tree. ``ValueError`` names the variable and what it accepts."""
    if value:
        try:
            runtime = PodRuntime(value)
        except ValueError:
            choices = ", ".join(r.value for r in PodRuntime)
            raise ValueError(f"{RUNTIME_ENV}={value!r}: one of {choices} is required") from None
        if runtime is PodRuntime.IMAGE and not image_dir:
            raise ValueError(
                f"{RUNTIME_ENV}=image needs {IMAGE_DIR_ENV} (bash scripts/build-image.sh --print-dir)"
            )
        return runtime
    return PodRuntime.IMAGE if image_dir else PodRuntime.SOURCE


@frozen
class ImageConfig:
    """What the kubelet needs of an OCI image's configuration."""

    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    user: str
    workdir: str


def _strings(value: object, where: str, errors: list[str]) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        errors.append(f"{where}: a list of strings is required")
        return ()
    return tuple(value)


def parse_image_config(doc: Obj) -> ImageConfig:
    """The ``config`` of an OCI image configuration; ``ValueError`` names every bad field."""
    errors: list[str] = []
    config = doc.get("config")
    if not isinstance(config, Mapping):
        raise ValueError("image config: config: an object is required")  # noqa: TRY004 - a bad document
    env: list[tuple[str, str]] = []
    for item in _strings(config.get("Env"), "config.Env", errors):
        name, sep, value = item.partition("=")
        if not sep or not name:
            errors.append(f"config.Env: {item!r} is not NAME=value")
            continue
        env.append((name, value))
    user = config.get("User") or "0"
    workdir = config.get("WorkingDir") or "/"
    if not isinstance(user, str):
        errors.append("config.User: a string is required")
        user = "0"
    if not isinstance(workdir, str) or not workdir.startswith("/"):
        errors.append("config.WorkingDir: an absolute path is required")
        workdir = "/"
    entrypoint = _strings(config.get("Entrypoint"), "config.Entrypoint", errors)
    cmd = _strings(config.get("Cmd"), "config.Cmd", errors)
    if errors:
        raise ValueError("image config: " + "; ".join(errors))
    return ImageConfig(entrypoint=entrypoint, cmd=cmd, env=tuple(env), user=user, workdir=workdir)


@frozen
class Mount:
    """One mount of a pod's sandbox. ``kind``: ``bind`` (a host file or directory), ``rbind``
    (a host directory with everything mounted under it), ``tmpfs`` or ``proc``."""

    kind: str
    target: str
    source: str = ""
    read_only: bool = False


@frozen
class Sandbox:
    """How a Lattice pod runs from the image's root filesystem: its command line and
    environment, its user, the mounts laid over the image, and whether the image itself is
    read-only. The pod shares the host's network and process id space (see
    :func:`image_sandbox`)."""

    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    uid: int
    gid: int
    groups: tuple[int, ...]
    workdir: str
    mounts: tuple[Mount, ...]
    read_only_root: bool
    no_new_privileges: bool


def runs_local_infra(pod: Obj) -> bool:
    """Whether the pod runs the local infrastructure provider: it boots machines, which are
    processes of this host (docs/local-provider.md), so it runs privileged with the host's root
    at :data:`HOST_ROOT`, as a CAPD manager's pod reaches the host's Docker daemon."""
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    return "--local-infra" in [*(container.get("command") or []), *(container.get("args") or [])]


def _id(value: str, where: str) -> int:
    if not value.isdigit():
        raise ValueError(f"{where}: a numeric user id is required, not {value!r}")
    return int(value)


def pod_user(pod: Obj, config: ImageConfig) -> tuple[int, int, tuple[int, ...]]:
    """The (uid, gid, supplementary groups) a container runs as: its securityContext, the
    pod's, then the image's ``User``; ``ValueError`` when runAsNonRoot forbids the result."""
    spec = pod.get("spec") or {}
    container = (spec.get("containers") or [{}])[0]
    pod_ctx = spec.get("securityContext") or {}
    ctx = container.get("securityContext") or {}

    def setting(key: str) -> Any:
        return ctx.get(key, pod_ctx.get(key))

    image_uid, _, image_gid = config.user.partition(":")
    uid = setting("runAsUser")
    uid = _id(image_uid, "image config User") if uid is None else int(uid)
    gid = setting("runAsGroup")
    gid = (_id(image_gid, "image config User") if image_gid else 0) if gid is None else int(gid)
    if setting("runAsNonRoot") and uid == 0:
        raise ValueError("runAsNonRoot is set and the container would run as root (uid 0)")
    groups = pod_ctx.get("fsGroup")
    return uid, gid, () if groups is None else (int(groups),)


def image_argv(pod: Obj, config: ImageConfig, *, kubeconfig: str) -> list[str]:
    """A container's command line as a container runtime builds it: ``command`` replaces the
    image's Entrypoint, ``args`` its Cmd, ``$(VAR)`` expanded; then the kubeconfig and, for the
    operator, a free health port, as :func:`pod_argv` adds them."""
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    env, _ = container_env(pod, {})
    command = [str(c) for c in container.get("command") or config.entrypoint]
    args = [str(a) for a in container.get("args") or ([] if container.get("command") else config.cmd)]
    argv = [expand(a, env) for a in [*command, *args]]
    extra = ["--kubeconfig", kubeconfig]
    if "operator" in argv[1:2]:
        extra += ["--health-port", "0"]
    return [*argv, *extra]


def _flag_value(args: Sequence[str], flag: str) -> str | None:
    for index, arg in enumerate(args):
        if arg == flag and index + 1 < len(args):
            return args[index + 1]
        if arg.startswith(flag + "="):
            return arg.partition("=")[2]
    return None


def image_sandbox(
    pod: Obj,
    config: ImageConfig,
    *,
    kubeconfig: str,
    volumes: Mapping[str, str],
    service_account_dir: str,
    host_exec: str = "",
) -> Sandbox:
    """The sandbox of a Lattice pod run from the image (``volumes``: volume name → the host
    directory holding it; ``host_exec``: the :data:`HOST_EXEC_ENV` value for a local-infra
    pod). ``ValueError`` says why the pod cannot run so.

    Mounted over the image: ``/proc``; a ``/dev`` holding only null, zero, random, urandom;
    the host's ``/etc/resolv.conf`` and ``/etc/hosts``; the pod's kubeconfig at its host path;
    its ServiceAccount volume at :data:`SERVICE_ACCOUNT_DIR`; each volume at its mountPath
    (read-only when the mount says so); a fresh ``/tmp`` unless a volume is mounted there. A
    local-infra pod also gets the host's root at :data:`HOST_ROOT` and the machines directory
    at its host path, and runs as root: its machines are this host's processes.

    No pid namespace: a machine the pod boots must outlive it (as a VM outlives its cloud
    controller), and the pids in the machines' records must mean the same to every host."""
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    ctx = container.get("securityContext") or {}
    local_infra = runs_local_infra(pod)
    uid, gid, groups = (0, 0, ()) if local_infra else pod_user(pod, config)
    mounts: list[Mount] = []
    if local_infra:
        mounts.append(Mount("rbind", HOST_ROOT, "/"))
    mounts += [
        Mount("proc", "/proc"),
        Mount("tmpfs", "/dev"),
        *(Mount("bind", f"/dev/{name}", f"/dev/{name}") for name in DEVICES),
        Mount("bind", "/etc/resolv.conf", "/etc/resolv.conf", read_only=True),
        Mount("bind", "/etc/hosts", "/etc/hosts", read_only=True),
        Mount("bind", kubeconfig, kubeconfig, read_only=True),
        Mount("bind", SERVICE_ACCOUNT_DIR, service_account_dir, read_only=True),
    ]
    targets = set()
    for mount in container.get("volumeMounts") or []:
        name, target = str(mount.get("name")), str(mount.get("mountPath"))
        if name not in volumes:
            raise ValueError(f"volumeMounts: volume {name!r} is not one this kubelet can provide")
        mounts.append(Mount("bind", target, volumes[name], read_only=bool(mount.get("readOnly"))))
        targets.add(target.rstrip("/"))
    if "/tmp" not in targets:  # noqa: S108 - the pod's own, fresh
        mounts.append(Mount("tmpfs", "/tmp"))  # noqa: S108
    argv = image_argv(pod, config, kubeconfig=kubeconfig)
    machines = _flag_value(argv, "--machines-dir")
    if local_infra and machines:
        mounts.append(Mount("bind", machines, machines))
    env = dict(config.env)
    env.update(container_env(pod, {})[0])
    env.setdefault("HOME", "/")
    env["HOSTNAME"] = str((pod.get("metadata") or {}).get("name", ""))
    env["PYTHONUNBUFFERED"] = "1"
    if local_infra:
        env[HOST_EXEC_ENV] = host_exec
    return Sandbox(
        argv=tuple(argv),
        env=tuple(sorted(env.items())),
        uid=uid,
        gid=gid,
        groups=groups,
        workdir=str(container.get("workingDir") or config.workdir),
        # a mount over a directory first, then what is mounted under it (a kubeconfig under /tmp)
        mounts=tuple(sorted(mounts, key=lambda m: len(m.target.rstrip("/").split("/")))),
        read_only_root=bool(ctx.get("readOnlyRootFilesystem")),
        no_new_privileges=ctx.get("allowPrivilegeEscalation") is False and not local_infra,
    )
