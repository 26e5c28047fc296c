"""Start one pod's process in the image's root filesystem (``python -m lattice.adapters.pod_sandbox
SPEC``), as a container runtime would, without one.

The kubelet stand-in writes the spec (JSON: a :class:`lattice.domain.local_pods.Sandbox`, the
unpacked image's root filesystem and the pod's directory) and starts this module with it. In a
mount namespace of its own it lays an overlay over the image (the writes of the container go to
``<pod>/overlay``, reset at each start), mounts what the sandbox lists (``/proc``, a minimal
``/dev``, the pod's volumes and ServiceAccount files at their paths), makes the image read-only
when the pod says so, enters it (chroot), becomes the pod's user, asks to be killed when the
kubelet dies (parent-death signal, set after the user change, which clears it) and executes the
container's command. The process keeps this pid: the kubelet stops it as any of its children.
The network and the pid space stay the host's.

Needs root. Errors go to the pod's log, prefixed ``pod-sandbox:``; the exit code is then 127.
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import signal
import sys
from pathlib import Path
from typing import Any

CLONE_NEWNS = 0x00020000
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_REMOUNT = 0x20
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_PDEATHSIG = 1
PR_SET_NO_NEW_PRIVS = 38
EXIT_SANDBOX = 127
MAX_LINKS = 40

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(RuntimeError):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(errno)}")


def _bytes(text: str | None) -> bytes | None:
    return None if text is None else text.encode()


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    encode = _bytes
    result = _libc.mount(encode(source), target.encode(), encode(fstype), ctypes.c_ulong(flags), encode(data))
    _check(result, f"mount {source or fstype} on {target}")


def inside(root: Path, path: str) -> Path:
    """``path`` of the image resolved as the image sees it (its symbolic links, absolute ones
    included, stay under ``root``); components that do not exist yet are kept as written."""
    parts = [p for p in path.split("/") if p and p != "."]
    resolved = root
    links = 0
    while parts:
        part = parts.pop(0)
        if part == "..":
            if resolved != root:
                resolved = resolved.parent
            continue
        candidate = resolved / part
        if candidate.is_symlink():
            links += 1
            if links > MAX_LINKS:
                raise SandboxError(f"{path}: too many symbolic links in the image")
            link = os.readlink(candidate)
            if link.startswith("/"):
                resolved = root
            parts = [p for p in link.split("/") if p and p != "."] + parts
            continue
        resolved = candidate
    return resolved


def _prepare_target(root: Path, target: str, *, directory: bool) -> str:
    where = inside(root, target)
    if directory:
        where.mkdir(parents=True, exist_ok=True)
    else:
        where.parent.mkdir(parents=True, exist_ok=True)
        if not where.exists():
            where.touch()
    return str(where)


def prepare(spec: dict[str, Any]) -> Path:
    """A mount namespace of this process's own with the pod's root laid out; returns the root."""
    sandbox = spec["sandbox"]
    pod_dir = Path(spec["podDir"])
    lower = str(spec["rootfs"])
    overlay = pod_dir / "overlay"
    shutil.rmtree(overlay, ignore_errors=True)  # a restarted container starts from the image again
    (overlay / "upper").mkdir(parents=True)
    (overlay / "work").mkdir()
    root = pod_dir / "rootfs"
    root.mkdir(exist_ok=True)
    for path in (lower, str(overlay)):
        if "," in path or ":" in path:
            raise SandboxError(f"{path}: an overlay path cannot hold ',' or ':'")
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount(
        "overlay",
        str(root),
        "overlay",
        0,
        f"lowerdir={lower},upperdir={overlay / 'upper'},workdir={overlay / 'work'}",
    )
    for mount in sandbox["mounts"]:
        kind, target, source = mount["kind"], mount["target"], mount.get("source", "")
        if kind == "rbind":
            where = _prepare_target(root, target, directory=True)
            _mount(source, where, None, MS_BIND | MS_REC)
        elif kind == "proc":
            where = _prepare_target(root, target, directory=True)
            _mount("proc", where, "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        elif kind == "tmpfs":
            where = _prepare_target(root, target, directory=True)
            mode = "1777" if target.rstrip("/") == "/tmp" else "755"  # noqa: S108
            _mount("tmpfs", where, "tmpfs", MS_NOSUID, f"mode={mode}")
        elif kind == "bind":
            where = _prepare_target(root, target, directory=Path(source).is_dir())
            _mount(source, where, None, MS_BIND)
            if mount.get("read_only"):
                _mount(None, where, None, MS_REMOUNT | MS_BIND | MS_RDONLY)
        else:
            raise SandboxError(f"mount {target}: unknown kind {kind!r}")
    if sandbox["read_only_root"]:
        _mount(None, str(root), None, MS_REMOUNT | MS_BIND | MS_RDONLY)
    return root


def enter(spec: dict[str, Any]) -> tuple[list[str], dict[str, str]]:
    """Everything up to the exec: the command line and environment to execute."""
    sandbox = spec["sandbox"]
    root = prepare(spec)
    os.chdir(root)
    os.chroot(".")
    os.setgroups(list(sandbox["groups"]))
    os.setresgid(sandbox["gid"], sandbox["gid"], sandbox["gid"])
    os.setresuid(sandbox["uid"], sandbox["uid"], sandbox["uid"])
    os.chdir(sandbox["workdir"])
    if sandbox["no_new_privileges"]:
        _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    # Changing the user cleared the parent-death signal the kubelet set: set it again.
    _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl(PR_SET_PDEATHSIG)")
    if os.getppid() != spec["parent"]:
        raise SandboxError("the kubelet is gone")
    return list(sandbox["argv"]), dict(sandbox["env"])


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m lattice.adapters.pod_sandbox SPEC.json", file=sys.stderr)
        return 2
    try:
        spec = json.loads(Path(args[0]).read_text())
        command, env = enter(spec)
        os.execvpe(command[0], command, env)  # noqa: S606 - the pod's own command
    except (OSError, SandboxError, KeyError, ValueError) as exc:
        print(f"pod-sandbox: {exc}", file=sys.stderr, flush=True)
    return EXIT_SANDBOX


if __name__ == "__main__":
    raise SystemExit(main())
