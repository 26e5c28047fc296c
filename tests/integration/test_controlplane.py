"""The control-plane harness against the real etcd, kube-apiserver and controller-manager."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from lattice.adapters import controlplane
from lattice.adapters.binaries import Toolchain
from lattice.adapters.controlplane import ControlPlane, ControlPlaneError, port_in_use
from lattice.testing.fixtures import ControlPlaneFactory

pytestmark = pytest.mark.integration


def _alive(pid: int) -> bool:
    """Whether ``pid`` is a live (not zombie) process, from /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def _wait_gone(pids: list[int], timeout: float = 10.0) -> list[int]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        alive = [pid for pid in pids if _alive(pid)]
        if not alive:
            return []
        time.sleep(0.1)
    return [pid for pid in pids if _alive(pid)]


def _configmap(name: str, data: dict[str, str] | None = None) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": data or {"k": "v"},
    }


def test_version_is_stamped(capi_control_plane: ControlPlane, toolchain: Toolchain) -> None:
    version = json.loads(capi_control_plane.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == toolchain.versions.kubernetes
    assert version["clientVersion"]["gitVersion"] == toolchain.versions.kubernetes


def test_admin_is_a_cluster_admin_and_rbac_is_on(capi_control_plane: ControlPlane) -> None:
    out = capi_control_plane.kubectl("auth", "whoami", "-o", "json").stdout
    user = json.loads(out)["status"]["userInfo"]
    assert user["username"] == "lattice-admin"
    assert "system:masters" in user["groups"]
    can = capi_control_plane.kubectl("auth", "can-i", "list", "secrets", "--as=nobody", check=False)
    assert can.stdout.strip() == "no"


def test_independent_control_planes(control_plane_factory: ControlPlaneFactory) -> None:
    a, b = control_plane_factory(2)
    assert a.url != b.url
    assert a.dir != b.dir
    assert not set(a.ports()) & set(b.ports())
    a.apply([_configmap("only-in-a")])
    assert a.kubectl("get", "configmap", "only-in-a", "-o", "name").stdout.strip() == ("configmap/only-in-a")
    missing = b.kubectl("get", "configmap", "only-in-a", check=False)
    assert missing.returncode != 0
    assert "NotFound" in missing.stderr
    # Different CAs: a's admin credentials are not trusted by b.
    cross = b.kubectl("--server", a.url, "get", "ns", check=False)
    assert cross.returncode != 0


def test_stop_frees_ports_and_processes(control_plane_factory: ControlPlaneFactory) -> None:
    cp = control_plane_factory.one(controller_manager=True)
    pids = cp.pids()
    assert len(pids) == 3
    assert all(_alive(pid) for pid in pids)
    assert all(port_in_use(port) for port in (cp.etcd_port, cp.apiserver_port, cp.kcm_port))
    assert cp in controlplane.live_control_planes()
    cp.stop()
    assert not cp.running
    assert cp.pids() == []
    assert _wait_gone(pids) == []
    # Nothing listens any more. (Binding the port again is no test: once free, an ephemeral
    # port may at once be the source port of another process's connection.)
    for port in cp.ports():
        assert not port_in_use(port), port
    assert cp not in controlplane.live_control_planes()
    logs = {p.name for p in cp.logs_dir.iterdir()}
    assert logs == {"etcd.log", "kube-apiserver.log", "kube-controller-manager.log"}
    assert "starting:" in (cp.logs_dir / "kube-apiserver.log").read_text()
    cp.stop()  # idempotent
    # Applying to a stopped control plane is refused like any other refusal.
    assert "cannot reach the API server" in cp.apply([_configmap("late")], check=False).stderr
    with pytest.raises(ControlPlaneError, match="cannot reach the API server"):
        cp.apply([_configmap("late")])
    with pytest.raises(ControlPlaneError, match="cannot reach the API server"):
        cp.wait_established(["widgets.example.com"])


def test_apply_goes_on_past_a_refused_object_and_names_it(control_plane_factory: ControlPlaneFactory) -> None:
    """ControlPlane.apply is Kr8sKube.apply (server-side, Strict field validation) of each
    object of a YAML stream: Lists flattened, a namespaced object without a namespace in
    ``default``, a refusal naming its object without stopping the others."""
    cp = control_plane_factory.one()
    stream = textwrap.dedent(
        """\
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: unplaced}
        data: {k: v}
        ---
        apiVersion: v1
        kind: ConfigMap
        metadata: {name: misspelt, namespace: default}
        dta: {k: v}
        ---
        apiVersion: v1
        kind: List
        items:
        - {apiVersion: v1, kind: ConfigMap, metadata: {name: listed, namespace: default}}
        - {kind: ConfigMap, metadata: {name: no-version}}
        """
    )
    result = cp.apply(stream, check=False)
    assert [o["metadata"]["name"] for o in result.objects] == ["unplaced", "listed"]
    assert result.objects[0]["metadata"]["namespace"] == "default"
    assert result.returncode == 1
    assert len(result.errors) == 2
    assert "ConfigMap misspelt in namespace default" in result.errors[0]
    assert "dta" in result.errors[0]
    assert result.errors[1] == "ConfigMap no-version: no apiVersion"
    with pytest.raises(ControlPlaneError, match="ConfigMap misspelt"):
        cp.apply(stream)
    assert cp.apply([_configmap("fine")]).stderr == ""
    # Sent all at once, the objects and the refusals keep their order all the same.
    together = cp.apply(stream, check=False, together=True)
    assert [o["metadata"]["name"] for o in together.objects] == ["unplaced", "listed"]
    assert [e.split(":")[0] for e in together.errors] == [e.split(":")[0] for e in result.errors]


def test_stop_together_signals_every_process_before_waiting_for_any(tmp_path: Path) -> None:
    """Each of the two processes exits on SIGTERM only once the other has had its SIGTERM too:
    stopped one after the other, the first would wait for the second until it is killed."""

    def waits_for(me: str, other: str) -> controlplane.ManagedProcess:
        wait = f"while [ ! -e {tmp_path}/{other} ]; do sleep 0.05; done"
        script = (
            f"trap 'touch {tmp_path}/{me}; {wait}; exit 0' TERM; echo trapped; while :; do sleep 0.05; done"
        )
        return controlplane.ManagedProcess(me, ["/bin/sh", "-c", script], tmp_path / f"{me}.log")

    procs = [waits_for("a", "b"), waits_for("b", "a")]
    for proc in procs:
        proc.start(os.environ)
    for proc in procs:
        while proc.tail(1) != "trapped":  # the log's first line is the command line
            time.sleep(0.05)
    popens = [proc.popen for proc in procs]
    controlplane.stop_together(procs, timeout=60)
    assert [p.returncode if p is not None else None for p in popens] == [0, 0]
    assert all(proc.popen is None for proc in procs)
    controlplane.stop_together(procs, timeout=60)  # stopped already: nothing to do


def test_stop_signals_the_group_before_it_reaps_the_leader(tmp_path: Path) -> None:
    """A leader that has exited but is not reaped yet keeps its pid, so the SIGKILL to its group
    (here: a child it left behind) cannot reach a process that took the pid over."""
    proc = controlplane.ManagedProcess("leaver", ["/bin/sh", "-c", "sleep 600 & echo $!"], tmp_path / "l.log")
    proc.start(os.environ)
    assert proc.popen is not None
    leader = proc.popen.pid
    while not controlplane._has_exited(proc.popen):
        time.sleep(0.05)
    left = int(proc.tail(1))
    assert "\nState:\tZ" in Path(f"/proc/{leader}/status").read_text()  # exited, pid still held
    assert Path(f"/proc/{left}").exists()
    proc.stop(timeout=60)
    assert proc.popen is None
    assert not Path(f"/proc/{leader}").exists()
    deadline = time.monotonic() + 60
    while Path(f"/proc/{left}").exists() and "\nState:\tZ" not in Path(f"/proc/{left}/status").read_text():
        assert time.monotonic() < deadline, "the child left in the group was not killed"
        time.sleep(0.05)


def test_a_leader_reaped_behind_popens_back_counts_as_exited(tmp_path: Path) -> None:
    proc = controlplane.ManagedProcess("reaped", ["/bin/true"], tmp_path / "r.log")
    proc.start(os.environ)
    assert proc.popen is not None
    os.waitpid(proc.popen.pid, 0)
    assert controlplane._has_exited(proc.popen)


def _widget_crd(plural: str) -> dict[str, object]:
    """A CRD of kind Widget: a second one claiming the kind is never Established."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.example.com"},
        "spec": {
            "group": "example.com",
            "scope": "Cluster",
            "names": {"kind": "Widget", "plural": plural, "singular": plural[:-1], "listKind": "WidgetList"},
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object"}},
                }
            ],
        },
    }


def test_wait_established_names_the_crd_that_is_not(control_plane_factory: ControlPlaneFactory) -> None:
    """ControlPlane.wait_established reads the CRDs through the kube client (as the agent's
    KubeManifestApplier does) and, out of time, names the first CRD pending and why."""
    cp = control_plane_factory.one()
    assert cp.install_crds([_widget_crd("widgets")]) == ["widgets.example.com"]
    cp.wait_established(name for name in ["widgets.example.com"])  # any iterable, done at once
    cp.apply([_widget_crd("gadgets")])
    with pytest.raises(ControlPlaneError) as caught:
        cp.wait_established(["widgets.example.com", "gadgets.example.com"], timeout=3)
    message = str(caught.value)
    assert message.startswith(
        f"{cp.name}: CustomResourceDefinition gadgets.example.com is not Established"
    ), message
    assert "NamesAccepted=False" in message, message
    with pytest.raises(
        ControlPlaneError, match=r"CustomResourceDefinition missing\.example\.com: .*not found"
    ):
        cp.wait_established(["missing.example.com"], timeout=0.5)


def test_restart_apiserver_keeps_data_and_url(control_plane_factory: ControlPlaneFactory) -> None:
    cp = control_plane_factory.one()
    url, kubeconfig = cp.url, cp.kubeconfig.read_text()
    cp.apply([_configmap("survivor", {"a": "1"})])
    old = cp._procs["kube-apiserver"].pid
    cp.restart_apiserver()
    assert cp._procs["kube-apiserver"].pid != old
    assert cp.url == url
    assert cp.kubeconfig.read_text() == kubeconfig
    got = json.loads(cp.kubectl("get", "configmap", "survivor", "-o", "json").stdout)
    assert got["data"] == {"a": "1"}
    got = cp.get_json("/api/v1/namespaces/default/configmaps/survivor")
    assert got is not None
    assert got["data"] == {"a": "1"}
    assert cp.get_json("/api/v1/namespaces/default/configmaps/absent") is None
    with pytest.raises(ControlPlaneError, match=r"GET /api/v1/namespaces\?labelSelector=%3D: HTTP 400"):
        cp.get_json("/api/v1/namespaces?labelSelector=%3D")
    cp.stop_apiserver()
    down = cp.kubectl("get", "ns", "--request-timeout=2s", check=False)
    assert down.returncode != 0
    with pytest.raises(ControlPlaneError, match=r"GET /api/v1/namespaces: .*refused"):
        cp.get_json("/api/v1/namespaces", timeout=2)
    cp.start_apiserver()
    assert cp.kubectl("get", "configmap", "survivor", "-o", "name").stdout.strip()
    assert (cp.logs_dir / "kube-apiserver.log").read_text().count("starting:") == 3


def test_controller_manager_collects_garbage_and_deletes_namespaces(
    control_plane_factory: ControlPlaneFactory,
) -> None:
    cp = control_plane_factory.one(controller_manager=True)
    cp.kubectl("create", "namespace", "doomed")
    cp.apply([{**_configmap("in-doomed"), "metadata": {"name": "in-doomed", "namespace": "doomed"}}])
    owner = cp.apply([_configmap("owner")]).objects[0]
    dependent = _configmap("dependent")
    dependent["metadata"] = {
        "name": "dependent",
        "namespace": "default",
        "ownerReferences": [
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "name": "owner",
                "uid": owner["metadata"]["uid"],
            }
        ],
    }
    cp.apply([dependent])
    cp.kubectl("delete", "configmap", "owner", "--wait=true")
    cp.kubectl("wait", "--for=delete", "configmap/dependent", "--timeout=60s", timeout=90)
    cp.kubectl("delete", "namespace", "doomed", "--wait=false")
    cp.kubectl("wait", "--for=delete", "namespace/doomed", "--timeout=60s", timeout=90)
    # The service-account controller gives a new namespace its default service account.
    cp.kubectl("create", "namespace", "fresh")
    cp.kubectl(
        "wait",
        "--for=create",
        "serviceaccount/default",
        "-n",
        "fresh",
        "--timeout=60s",
        timeout=90,
    )


def test_three_at_once(control_plane_factory: ControlPlaneFactory) -> None:
    # How long this takes is measured by benchmarks/controlplane.py, not asserted here.
    cps = control_plane_factory(3)
    assert len({cp.url for cp in cps}) == 3
    for cp in cps:
        assert cp.ready()
        cp.kubectl("get", "namespaces")


def test_async_use(toolchain: Toolchain, tmp_path: Path) -> None:
    async def main() -> list[int]:
        cp = ControlPlane.create("async", base_dir=tmp_path, toolchain=toolchain)
        async with cp:
            assert cp.ready()
            pids = cp.pids()
            await cp.arestart_apiserver()
            assert cp.ready()
            pids += cp.pids()
        assert not cp.running
        return pids

    pids = anyio.run(main)
    assert _wait_gone(pids) == []


def test_context_manager(toolchain: Toolchain, tmp_path: Path) -> None:
    with ControlPlane.create("ctx", base_dir=tmp_path, toolchain=toolchain) as cp:
        assert cp.ready()
        pids = cp.pids()
    assert _wait_gone(pids) == []


def test_a_failing_process_is_reported_with_its_log(toolchain: Toolchain, tmp_path: Path) -> None:
    # A bin dir with the real binaries, except an etcd that refuses to start.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("kube-apiserver", "kube-controller-manager", "kubectl", "clusterctl"):
        (bin_dir / name).symlink_to(toolchain.binary(name))
    fake = bin_dir / "etcd"
    fake.write_text("#!/bin/sh\necho 'etcd: refusing to start for this test' >&2\nexit 3\n")
    fake.chmod(0o755)
    broken = Toolchain(bin_dir=bin_dir, crd_dir=toolchain.crd_dir, versions=toolchain.versions)
    cp = ControlPlane.create("broken", base_dir=tmp_path, toolchain=broken)
    with pytest.raises(ControlPlaneError) as err:
        cp.start(timeout=30)
    assert "etcd exited with code 3" in str(err.value)
    assert "refusing to start for this test" in str(err.value)
    assert not cp.running
    assert cp not in controlplane.live_control_planes()


def test_not_ready_in_time_is_reported(toolchain: Toolchain, tmp_path: Path) -> None:
    cp = ControlPlane.create("slow", base_dir=tmp_path, toolchain=toolchain)
    with pytest.raises(ControlPlaneError, match="not ready after 0s") as err:
        cp.start(timeout=0.01)
    assert "kube-apiserver.log" in str(err.value)
    assert not cp.running
    cp.launch()
    try:
        with pytest.raises(ControlPlaneError, match="already running"):
            cp.launch()
        with pytest.raises(ControlPlaneError, match="not ready after 0s"):
            cp.wait_ready(timeout=0.0)
        cp.wait_ready()
    finally:
        cp.stop()


def test_an_interrupted_first_etcd_start_is_started_again_from_scratch(
    toolchain: Toolchain, tmp_path: Path
) -> None:
    cp = ControlPlane.create("interrupted", base_dir=tmp_path, toolchain=toolchain)
    wal = cp.dir / "etcd" / "member" / "wal"
    wal.mkdir(parents=True)
    (wal / "0000000000000000-0000000000000000.wal").write_bytes(b"cut short")
    (cp.dir / "etcd.bootstrapping").touch()
    with cp.start():
        assert not (cp.dir / "etcd.bootstrapping").exists()
        cp.kubectl("create", "namespace", "kept")
    cp.start()
    try:
        assert cp.kubectl("get", "namespace", "kept", "-o", "name").stdout.strip() == "namespace/kept"
    finally:
        cp.stop()


def test_a_taken_port_is_retried(
    toolchain: Toolchain, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    taken = squatter.getsockname()[1]
    real = controlplane.free_port
    handed = iter([taken])

    def first_taken() -> int:
        return next(handed, None) or real()

    monkeypatch.setattr(controlplane, "free_port", first_taken)
    cp = ControlPlane.create("retry", base_dir=tmp_path, toolchain=toolchain)
    try:
        cp.start()
        assert cp.etcd_port != taken
        assert "address already in use" in (cp.logs_dir / "etcd.log").read_text()
    finally:
        cp.stop()
        squatter.close()


def test_kubectl_errors_name_the_command(capi_control_plane: ControlPlane) -> None:
    with pytest.raises(ControlPlaneError, match="kubectl get nosuchkind failed"):
        capi_control_plane.kubectl("get", "nosuchkind")


def test_capi_crds_are_labelled_like_clusterctl_init(capi_control_plane: ControlPlane) -> None:
    crds = json.loads(
        capi_control_plane.kubectl("get", "crd", "-l", "clusterctl.cluster.x-k8s.io", "-o", "json").stdout
    )["items"]
    by_name = {crd["metadata"]["name"]: crd["metadata"]["labels"] for crd in crds}
    assert by_name["clusters.cluster.x-k8s.io"]["cluster.x-k8s.io/provider"] == "cluster-api"
    kcp = by_name["kubeadmcontrolplanes.controlplane.cluster.x-k8s.io"]
    assert kcp["cluster.x-k8s.io/provider"] == "control-plane-kubeadm"
    assert kcp["cluster.x-k8s.io/v1beta2"] == "v1beta2"
    assert (
        by_name["kubeadmconfigtemplates.bootstrap.cluster.x-k8s.io"]["cluster.x-k8s.io/v1beta2"] == "v1beta2"
    )
    assert (
        by_name["dockerclusters.infrastructure.cluster.x-k8s.io"]["cluster.x-k8s.io/provider"]
        == "infrastructure-docker"
    )
    assert (
        by_name["awsclusters.infrastructure.cluster.x-k8s.io"]["cluster.x-k8s.io/v1beta1"]
        == "v1beta1_v1beta2"
    )
    assert by_name["gcpclusters.infrastructure.cluster.x-k8s.io"]["cluster.x-k8s.io/v1beta1"] == "v1beta1"
    assert by_name["azureclusters.infrastructure.cluster.x-k8s.io"]["cluster.x-k8s.io/v1beta1"] == "v1beta1"
    assert by_name["providers.clusterctl.cluster.x-k8s.io"] == {
        "clusterctl.cluster.x-k8s.io": "",
        "clusterctl.cluster.x-k8s.io/core": "inventory",
    }
    cluster = json.loads(
        capi_control_plane.kubectl("get", "crd", "clusters.cluster.x-k8s.io", "-o", "json").stdout
    )
    storage = [v["name"] for v in cluster["spec"]["versions"] if v["storage"]]
    assert storage == ["v1beta2"]


def test_clusterctl_accepts_the_control_plane(capi_control_plane: ControlPlane, tmp_path: Path) -> None:
    """clusterctl's management-cluster checks (version, CRDs) pass on the real apiserver."""
    out = tmp_path / "moved"
    out.mkdir()
    capi_control_plane.kubectl("create", "namespace", "clusterctl-empty")
    result = subprocess.run(
        [
            str(capi_control_plane.toolchain.clusterctl),
            "move",
            f"--kubeconfig={capi_control_plane.kubeconfig}",
            "-n",
            "clusterctl-empty",
            f"--to-directory={out}",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "CLUSTERCTL_DISABLE_VERSIONCHECK": "true", "HOME": str(tmp_path)},
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(out.iterdir()) == []


LEAK_TEST = textwrap.dedent(
    """
    import json, os

    def test_uses_control_planes(control_plane_factory, capi_control_plane):
        cps = control_plane_factory(2, controller_manager=True)
        pids = capi_control_plane.pids() + [pid for cp in cps for pid in cp.pids()]
        with open(os.environ["PIDS_FILE"], "w") as f:
            json.dump(pids, f)
    """
)


def test_fixtures_leak_no_processes(tmp_path: Path) -> None:
    """Run the fixtures in a separate pytest session; afterwards none of its processes live."""
    (tmp_path / "test_leak.py").write_text(LEAK_TEST)
    pids_file = tmp_path / "pids.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "lattice.testing.fixtures",
            "-p",
            "no:cacheprovider",
            "-o",
            "addopts=",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_leak.py"),
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "PIDS_FILE": str(pids_file)},
        cwd=Path(__file__).resolve().parents[2],
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    pids = json.loads(pids_file.read_text())
    assert len(pids) == 3 + 2 * 3
    assert _wait_gone(pids, timeout=5) == []


ORPHAN_SCRIPT = textwrap.dedent(
    """
    import json, os, sys, time
    from pathlib import Path
    from lattice.adapters.controlplane import ControlPlane

    cp = ControlPlane.create("orphan", base_dir=Path(sys.argv[1])).start()
    print(json.dumps(cp.pids()), flush=True)
    if sys.argv[2] == "exit":
        sys.exit(0)  # never stopped explicitly: the atexit hook must stop it
    time.sleep(600)  # killed with SIGKILL: the children must die with us
    """
)


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_processes_die_with_their_owner(tmp_path: Path, how: str) -> None:
    proc = subprocess.Popen(
        [sys.executable, "-c", ORPHAN_SCRIPT, str(tmp_path), how],
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    pids = json.loads(proc.stdout.readline())
    assert len(pids) == 2
    if how == "kill":
        assert all(_alive(pid) for pid in pids)
        proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert _wait_gone(pids) == []
