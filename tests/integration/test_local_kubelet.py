"""The kubelet stand-in of a local machine, as its own process: a control plane that cannot
start is reported in its status file with the reason (the host turns that into the
LocalMachine's BootFailed condition), and nothing is left running."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from lattice.adapters.binaries import Toolchain
from lattice.adapters.clock import SystemClock
from lattice.adapters.local_kubelet import LocalKubelet
from lattice.adapters.local_machine_host import LocalMachineHost
from lattice.adapters.pod_image import ImageError
from lattice.domain import crds, deploy, local_pods
from lattice.domain import local_kubelet as lk
from lattice.testing.fixtures import ControlPlaneFactory

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

ROOT = Path(__file__).resolve().parents[2]


def test_static_pods_that_cannot_start_are_reported(toolchain: Toolchain, tmp_path: Path) -> None:
    config = lk.KubeletConfig(
        node="m0",
        provider_id="local://c/m0",
        version=toolchain.versions.kubernetes,
        kubeconfig=str(tmp_path / "kubelet.conf"),
        control_plane=lk.StaticControlPlane(
            dir=str(tmp_path / "cp"), pki_dir=str(tmp_path / "no-pki"), apiserver_port=1
        ),
    )
    (tmp_path / lk.CONFIG_FILE).write_text(lk.dump_config(config))
    done = subprocess.run(
        [sys.executable, "-m", "lattice.app.cli", "local-kubelet", "--machine-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 1, done.stderr
    status = lk.parse_status((tmp_path / lk.STATUS_FILE).read_text())
    assert status.phase is lk.Phase.FAILED
    assert "no-pki/ca.crt" in status.message


# -- Lattice's pods run from the built image ------------------------------------------------


def _image_dir() -> Path:
    """The built image: ``LATTICE_IMAGE_DIR`` (CI sets it), else where build-image.sh puts it."""
    configured = (
        os.environ.get("LATTICE_IMAGE_DIR")
        or subprocess.run(
            ["bash", str(ROOT / "scripts/build-image.sh"), "--print-dir"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    directory = Path(configured)
    if not (directory / ".complete").is_file():
        pytest.fail(f"no built image at {directory}: run `bash scripts/build-image.sh`")
    return directory


PARENT = """
import json, os, subprocess, sys, time
spec = json.load(open(sys.argv[1]))
spec["parent"] = os.getpid()
json.dump(spec, open(sys.argv[1], "w"))
child = subprocess.Popen([sys.executable, "-m", "lattice.adapters.pod_sandbox", sys.argv[1]])
print(child.pid, flush=True)
time.sleep(600)
"""


def _pod(namespace: str, name: str, node: str) -> dict[str, Any]:
    """The operator Deployment's pod as `lattice deploy-manifests` ships it, bound to ``node``."""
    deployment = next(
        m
        for m in deploy.operator_manifests("ghcr.io/lattice-dev/lattice:test", replicas=1)
        if m["kind"] == "Deployment"
    )
    template = deployment["spec"]["template"]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": template["metadata"]["labels"]},
        "spec": {**template["spec"], "nodeName": node},
    }


def _status_of(pid: int) -> dict[str, str]:
    lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    return {key: value.strip() for key, _, value in (line.partition(":") for line in lines)}


def _pods_in(rootfs: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if os.readlink(entry / "root") == str(rootfs):
                    found.append(int(entry.name))
    return found


def _wait(what: str, probe: Any, within: float) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {within:.0f} s waiting for {what}")
        time.sleep(1.0)


def test_the_operator_pod_runs_from_the_image_as_its_user(
    control_plane_factory: ControlPlaneFactory, tmp_path: Path
) -> None:
    image_dir = _image_dir()
    cp = control_plane_factory.one()
    for manifest in deploy.operator_manifests("ghcr.io/lattice-dev/lattice:test", replicas=1):
        if manifest["kind"] != "Deployment":
            cp.apply([manifest])
    cp.apply(list(crds.all_crds()))
    machine = tmp_path / "machine"
    machine.mkdir()
    config = lk.KubeletConfig(
        node="img-0",
        provider_id="local://c/img-0",
        version=cp.toolchain.versions.kubernetes,
        kubeconfig=str(cp.kubeconfig),
        heartbeat_seconds=2.0,
    )
    (machine / lk.CONFIG_FILE).write_text(lk.dump_config(config))
    env = {**os.environ, "LATTICE_IMAGE_DIR": str(image_dir), "PYTHONUNBUFFERED": "1"}
    env.pop("LATTICE_POD_RUNTIME", None)  # the image is the default when LATTICE_IMAGE_DIR is set
    with (machine / "kubelet.log").open("ab") as log:
        kubelet = subprocess.Popen(
            [sys.executable, "-m", "lattice.app.cli", "local-kubelet", "--machine-dir", str(machine)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
    try:
        cp.apply([_pod("lattice-system", "operator-0", "img-0")])

        def ready() -> bool:
            pod = json.loads(
                cp.kubectl("get", "pod", "-n", "lattice-system", "operator-0", "-o", "json").stdout
            )
            found = {c["type"]: c["status"] for c in (pod.get("status") or {}).get("conditions") or []}
            return found.get("Ready") == "True"

        def leads() -> str:
            lease = cp.kubectl(
                "get", "lease", "-n", "lattice-system", "lattice-operator", "-o", "json", check=False
            ).stdout
            return str(json.loads(lease)["spec"].get("holderIdentity") or "") if lease.strip() else ""

        try:
            _wait("the operator pod Ready", ready, 180)
            holder = _wait("the operator from the image to take its Lease", leads, 120)
        finally:
            print((machine / "kubelet.log").read_text(errors="replace")[-3000:])
            for log_file in (machine / "pods").glob("*/container.log"):
                print(log_file.read_text(errors="replace")[-3000:])
        assert holder
        (pod_dir,) = (machine / "pods").iterdir()
        rootfs = pod_dir / "rootfs"
        (pid,) = _pods_in(rootfs)
        # Its root is the image's (an overlay of the unpacked layers); it runs as the image's
        # user, with no way to gain privileges, its Secrets and token where the manifest says.
        assert not (rootfs / "opt").exists()  # the image is mounted in the pod's namespace only
        inside = Path(f"/proc/{pid}/root")  # (its /var/run is a link to /run)
        assert (inside / "opt/lattice/site/lattice/app/cli.py").is_file()
        assert (inside / "usr/local/bin/lattice").is_file()
        assert not (inside / "usr/bin/sh").exists()
        status = _status_of(pid)
        assert status["Uid"].split() == ["65532"] * 4
        assert status["Gid"].split() == ["65532"] * 4
        assert status["NoNewPrivs"] == "1"
        assert (inside / "run/secrets/kubernetes.io/serviceaccount/namespace").read_text() == "lattice-system"
        assert os.readlink(f"/proc/{pid}/exe") == str(rootfs / "usr/bin/python3.11")  # the image's
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        assert cmdline[:4] == [b"/usr/bin/python3.11", b"-sE", b"/usr/local/bin/lattice", b"operator"]
        assert "forbidden" not in (pod_dir / "container.log").read_text().lower()

        # Stopping the kubelet stops its pods.
        kubelet.terminate()
        assert kubelet.wait(60) == 0
        assert not _pods_in(rootfs)

        # And a pod's process dies with the process that started it even when that one is
        # killed (the parent-death signal, set again after the user change): here a parent that
        # starts the launcher as the kubelet does, with the image's sleep as the command.
        spec = json.loads((pod_dir / "sandbox.json").read_text())
        spec["sandbox"]["argv"] = ["/usr/bin/sleep", "600"]
        (pod_dir / "sleep.json").write_text(json.dumps(spec))
        parent = subprocess.Popen(
            [sys.executable, "-c", PARENT, str(pod_dir / "sleep.json")],
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        _wait("the sleep to run in the image", lambda: child in _pods_in(rootfs), 30)
        parent.kill()
        parent.wait(30)
        _wait("the pod's process to die with its parent", lambda: not _pods_in(rootfs), 30)
    finally:
        if kubelet.poll() is None:
            kubelet.terminate()
            kubelet.wait(60)


def test_a_provider_in_an_image_pod_runs_machine_commands_on_the_host(
    toolchain: Toolchain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What the kubelet passes a local-infra operator pod (LATTICE_HOST_EXEC): its machines'
    commands run chrooted to the host's root (here ``/`` itself) with the host's environment,
    and their kubelets with the host's Python."""
    host_env = {"PATH": "/usr/bin:/bin", "LATTICE_BIN_DIR": "/host-bin", "MARK": "on-the-host"}
    exec_doc = {"root": "/", "python": "/host/python", "env": host_env}
    monkeypatch.setenv(local_pods.HOST_EXEC_ENV, json.dumps(exec_doc))
    host = LocalMachineHost(toolchain, tmp_path / "machines", SystemClock())
    assert host.python == "/host/python"
    root = host.machine_dir("m0") / "root"
    root.mkdir(parents=True)
    asyncio.run(host._run("m0", 0, 'echo "$MARK $PATH" > out', root, None))
    assert (root / "out").read_text() == "on-the-host /host-bin:/usr/bin:/bin\n"


def test_an_unknown_pod_runtime_is_refused_by_name(tmp_path: Path) -> None:
    config = lk.KubeletConfig(node="m0", provider_id="local://c/m0", version="v1.36.0", kubeconfig="/none")
    (tmp_path / lk.CONFIG_FILE).write_text(lk.dump_config(config))
    done = subprocess.run(
        [sys.executable, "-m", "lattice.app.cli", "local-kubelet", "--machine-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "LATTICE_POD_RUNTIME": "vm"},
    )
    assert done.returncode == 2, done.stderr
    status = lk.parse_status((tmp_path / lk.STATUS_FILE).read_text())
    assert status.phase is lk.Phase.FAILED
    assert "LATTICE_POD_RUNTIME='vm': one of source, image" in status.message


def test_an_image_that_cannot_be_used_is_not_unpacked_again_at_every_sync(
    toolchain: Toolchain, tmp_path: Path
) -> None:
    config = lk.KubeletConfig(node="m0", provider_id="local://c/m0", version="v1.36.0", kubeconfig="/none")
    kubelet = LocalKubelet(
        config,
        tmp_path,
        toolchain,
        SystemClock(),
        runtime=local_pods.PodRuntime.IMAGE,
        image_dir=tmp_path / "not-built",
    )
    with pytest.raises(ImageError, match="no built image") as first:
        kubelet._unpacked()
    with pytest.raises(ImageError) as again:
        kubelet._unpacked()
    assert again.value is first.value
    without = LocalKubelet(config, tmp_path, toolchain, SystemClock(), runtime=local_pods.PodRuntime.IMAGE)
    with pytest.raises(ImageError, match="LATTICE_POD_RUNTIME=image needs LATTICE_IMAGE_DIR"):
        without._unpacked()
