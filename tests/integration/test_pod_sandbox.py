"""The pod sandbox launcher (lattice.adapters.pod_sandbox) on a small root filesystem: the
mounts it lays over the image (as seen from inside its mount namespace), read-only where the
pod says, paths resolved through the image's own symbolic links, and its errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import pytest

from lattice.adapters import pod_sandbox
from lattice.domain import local_pods as lp

pytestmark = pytest.mark.integration

PROBE = """
import errno, json, os, sys
from pathlib import Path
from lattice.adapters import pod_sandbox
spec = json.loads(Path(sys.argv[1]).read_text())
root = pod_sandbox.prepare(spec)
def writable(path):
    try:
        path.write_text("x")
    except OSError as exc:
        return errno.errorcode[exc.errno]
    return "yes"
print(json.dumps({
    "dev": sorted(os.listdir(root / "dev")),
    "token": (root / "run/secrets/kubernetes.io/serviceaccount/token").read_text(),
    "kubeconfig": (root / spec["kubeconfig"].lstrip("/")).read_text(),
    "root_writable": writable(root / "etc/new"),
    "token_writable": writable(root / "run/secrets/kubernetes.io/serviceaccount/token"),
    "tmp_writable": writable(root / "tmp/new"),
    "proc": (root / "proc/self/status").is_file(),
}))
"""


def _rootfs(tmp_path: Path) -> Path:
    rootfs = tmp_path / "image"
    for directory in ("etc", "usr/bin", "run", "var"):
        (rootfs / directory).mkdir(parents=True)
    (rootfs / "var/run").symlink_to("/run")  # as in Debian: absolute, so it must resolve inside
    (rootfs / "etc/hosts").symlink_to("/elsewhere/hosts")
    return rootfs


def _spec(tmp_path: Path, *, read_only: bool) -> dict[str, Any]:
    pod_dir = tmp_path / "pod"
    account = pod_dir / "serviceaccount"
    account.mkdir(parents=True)
    (account / "token").write_text("t0ken")
    kubeconfig = pod_dir / "kubeconfig"
    kubeconfig.write_text("apiVersion: v1\n")
    pod = {
        "metadata": {"name": "p", "namespace": "n", "uid": "u"},
        "spec": {
            "containers": [
                {"name": "c", "image": "lattice:1", "securityContext": {"readOnlyRootFilesystem": read_only}}
            ]
        },
    }
    config = lp.ImageConfig(entrypoint=("/bin/true",), cmd=(), env=(), user="65532:65532", workdir="/")
    sandbox = lp.image_sandbox(
        pod, config, kubeconfig=str(kubeconfig), volumes={}, service_account_dir=str(account)
    )
    return {
        "rootfs": str(_rootfs(tmp_path)),
        "podDir": str(pod_dir),
        "parent": os.getpid(),
        "sandbox": attrs.asdict(sandbox),
        "kubeconfig": str(kubeconfig),
    }


@pytest.mark.parametrize("read_only", [True, False])
def test_the_mounts_over_the_image(tmp_path: Path, read_only: bool) -> None:
    spec = _spec(tmp_path, read_only=read_only)
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    done = subprocess.run(
        [sys.executable, "-c", PROBE, str(tmp_path / "spec.json")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["dev"] == sorted(lp.DEVICES)
    assert seen["token"] == "t0ken"
    assert seen["kubeconfig"] == "apiVersion: v1\n"
    assert seen["root_writable"] == ("EROFS" if read_only else "yes")
    assert seen["token_writable"] == "EROFS"
    assert seen["tmp_writable"] == "yes"
    assert seen["proc"]
    # All of it happened in the launcher's mount namespace: nothing shows on the host, and the
    # image itself is untouched (the overlay took the mount points).
    assert not any((tmp_path / "pod" / "rootfs").iterdir())
    assert sorted(p.name for p in (tmp_path / "image").iterdir()) == ["etc", "run", "usr", "var"]
    assert (tmp_path / "pod" / "overlay" / "upper" / "run" / "secrets").is_dir()


def test_paths_resolve_through_the_images_links(tmp_path: Path) -> None:
    rootfs = _rootfs(tmp_path)
    assert pod_sandbox.inside(rootfs, "/var/run/secrets") == rootfs / "run/secrets"
    assert pod_sandbox.inside(rootfs, "/../../etc/./hosts/..") == rootfs / "elsewhere"
    (rootfs / "loop").symlink_to("/loop")
    with pytest.raises(pod_sandbox.SandboxError, match="too many symbolic links"):
        pod_sandbox.inside(rootfs, "/loop/x")


def test_errors_go_to_the_pods_log(tmp_path: Path) -> None:
    launcher = [sys.executable, "-m", "lattice.adapters.pod_sandbox"]
    usage = subprocess.run(launcher, capture_output=True, text=True, check=False)
    assert usage.returncode == 2
    assert "usage" in usage.stderr
    missing = subprocess.run(
        [*launcher, str(tmp_path / "none.json")], capture_output=True, text=True, check=False
    )
    assert missing.returncode == pod_sandbox.EXIT_SANDBOX
    assert missing.stderr.startswith("pod-sandbox: ")
    spec = _spec(tmp_path, read_only=True)
    spec["sandbox"]["mounts"] = [{"kind": "nfs", "target": "/x"}]
    (tmp_path / "odd.json").write_text(json.dumps(spec))
    odd = subprocess.run([*launcher, str(tmp_path / "odd.json")], capture_output=True, text=True, check=False)
    assert "pod-sandbox: mount /x: unknown kind 'nfs'" in odd.stderr
    spec = _spec(tmp_path / "comma,dir", read_only=True)
    (tmp_path / "comma.json").write_text(json.dumps(spec))
    comma = subprocess.run(
        [*launcher, str(tmp_path / "comma.json")], capture_output=True, text=True, check=False
    )
    assert "cannot hold ',' or ':'" in comma.stderr
