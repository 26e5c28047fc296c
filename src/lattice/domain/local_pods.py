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
