"""Which pods a local machine's kubelet stand-in can run, and how (pure).

There is no container runtime here. The kubelet stand-in runs a pod bound to its Node only when
the pod's one container is Lattice's own program (the Lattice image, or an explicit
``lattice`` command): it runs that command as a local process with the container's arguments,
its Secret and emptyDir volumes written to directories (paths in the arguments rewritten to
them), and a kubeconfig holding a token for the pod's ServiceAccount, bound to the pod (the
TokenRequest API, as a kubelet does for a projected service-account token). So the RBAC the
pod's ServiceAccount is given is the RBAC it runs with. Anything else stays Pending, and the
reason is in the log.

Probes are not run: a pod is Ready while its process runs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

Obj = Mapping[str, Any]

LATTICE_IMAGE_REPOSITORY = "lattice"  # the last path segment of the Lattice image's repository
TOKEN_SECONDS = 24 * 3600


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
    for mount, local in replacements.items():
        if arg == mount or arg.startswith(mount.rstrip("/") + "/"):
            return local + arg[len(mount) :]
    return arg


def pod_argv(pod: Obj, *, python: str, kubeconfig: str, mounts: Mapping[str, str]) -> list[str]:
    """The local command line of a runnable pod. ``mounts``: container path → local directory.

    Pods share this host's network here, so the operator's health server gets a free port
    (``--health-port 0``) instead of the container port."""
    container = (pod.get("spec") or {}).get("containers", [{}])[0]
    command = list(container.get("command") or ["lattice"])
    args = [_rewrite(str(a), mounts) for a in [*command[1:], *(container.get("args") or [])]]
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
    pod: Obj, *, running: bool, restarts: int, started_at: str, now: str, message: str = ""
) -> dict[str, Any]:
    """The status a kubelet reports: Running and Ready while the process runs; when it has
    exited and waits to be restarted, ``CrashLoopBackOff`` with the exit in ``message``."""
    meta = pod.get("metadata") or {}
    container = ((pod.get("spec") or {}).get("containers") or [{}])[0]
    ready = "True" if running else "False"

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
                    "ready": running,
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
