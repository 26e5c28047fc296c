"""What the local kubelet stand-in runs of a pod, and how (pure)."""

from __future__ import annotations

from typing import Any

import pytest

from lattice.domain import deploy, local_pods


def operator_pod(**container: Any) -> dict[str, Any]:
    manifests = deploy.operator_manifests("ghcr.io/lattice-dev/lattice:0.1.0", replicas=1, state_volume=True)
    template = next(m for m in manifests if m["kind"] == "Deployment")["spec"]["template"]
    spec = {**template["spec"], "containers": [{**template["spec"]["containers"][0], **container}]}
    return {
        "metadata": {"name": "op-1", "namespace": "lattice-system", "uid": "u-1"},
        "spec": spec,
    }


def test_the_lattice_image_runs_with_a_token_kubeconfig_and_local_volumes() -> None:
    pod = operator_pod()
    assert local_pods.refusal(pod) is None
    mounts = local_pods.volume_mounts(pod)
    assert mounts == {"state": deploy.STATE_DIR}
    argv = local_pods.pod_argv(pod, python="py", kubeconfig="/k", mounts={deploy.STATE_DIR: "/local/state"})
    assert argv[:4] == ["py", "-m", "lattice.app.cli", "operator"]
    assert argv[-4:] == ["--kubeconfig", "/k", "--health-port", "0"]
    assert local_pods.service_account(pod) == deploy.SERVICE_ACCOUNT


def test_paths_under_a_mount_are_rewritten_and_others_kept() -> None:
    pod = operator_pod(command=["lattice", "agent"], args=["--cert", "/etc/tls/tls.crt", "--x", "/etc/tlsx"])
    argv = local_pods.pod_argv(pod, python="py", kubeconfig="/k", mounts={"/etc/tls": "/m/tls"})
    assert argv == [
        "py",
        "-m",
        "lattice.app.cli",
        "agent",
        "--cert",
        "/m/tls/tls.crt",
        "--x",
        "/etc/tlsx",
        "--kubeconfig",
        "/k",
    ]


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"image": "nginx:1.27"}, "only the Lattice image, not 'nginx:1.27'"),
        ({"command": ["/bin/sh", "-c", "true"]}, "only the lattice program, not '/bin/sh'"),
    ],
)
def test_other_programs_are_refused_with_the_reason(change: dict[str, Any], reason: str) -> None:
    assert reason in (local_pods.refusal(operator_pod(**change)) or "")


def test_pod_shapes_it_cannot_run() -> None:
    pod = operator_pod()
    two = {**pod, "spec": {**pod["spec"], "containers": pod["spec"]["containers"] * 2}}
    assert "exactly one container" in (local_pods.refusal(two) or "")
    init = {**pod, "spec": {**pod["spec"], "initContainers": [{"name": "i"}]}}
    assert "init containers" in (local_pods.refusal(init) or "")
    digest = operator_pod(image="registry.example/team/lattice@sha256:abc")
    assert local_pods.refusal(digest) is None


def test_secret_sources() -> None:
    assert local_pods.secret_sources({"secret": {"secretName": "a"}}) == ["a"]
    projected = {"projected": {"sources": [{"secret": {"name": "b"}}, {"configMap": {"name": "c"}}]}}
    assert local_pods.secret_sources(projected) == ["b"]
    assert local_pods.secret_sources({"emptyDir": {}}) == []


def test_token_request_is_bound_to_the_pod() -> None:
    request = local_pods.token_request(operator_pod())
    assert request["spec"]["boundObjectRef"] == {
        "apiVersion": "v1",
        "kind": "Pod",
        "name": "op-1",
        "uid": "u-1",
    }
    assert request["spec"]["expirationSeconds"] == local_pods.TOKEN_SECONDS


def test_status_follows_the_process() -> None:
    pod = operator_pod()
    up = local_pods.pod_status(pod, running=True, restarts=0, started_at="t0", now="t1")["status"]
    assert {c["type"]: c["status"] for c in up["conditions"]}["Ready"] == "True"
    assert up["containerStatuses"][0]["state"] == {"running": {"startedAt": "t0"}}
    down = local_pods.pod_status(
        pod, running=False, restarts=2, started_at="t0", now="t1", message="exited 3"
    )
    status = down["status"]
    assert {c["type"]: c["status"] for c in status["conditions"]}["Ready"] == "False"
    assert status["containerStatuses"][0]["restartCount"] == 2
    assert status["containerStatuses"][0]["state"]["waiting"] == {
        "reason": "CrashLoopBackOff",
        "message": "exited 3",
    }


def test_runnable_pods_skip_finished_and_deleted() -> None:
    pods = [
        {"metadata": {"name": "a"}, "status": {"phase": "Running"}},
        {"metadata": {"name": "b", "deletionTimestamp": "t"}},
        {"metadata": {"name": "c"}, "status": {"phase": "Succeeded"}},
        {"metadata": {"name": "d"}},
    ]
    assert [p["metadata"]["name"] for p in local_pods.runnable_pods(pods)] == ["a", "d"]


def test_token_kubeconfig_has_no_client_certificate() -> None:
    config = local_pods.token_kubeconfig("https://h:1", "Q0E=", "tok", "system:serviceaccount:ns:sa")
    assert config["users"][0]["user"] == {"token": "tok"}
    assert config["clusters"][0]["cluster"] == {"server": "https://h:1", "certificate-authority-data": "Q0E="}
