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


def flux_pod(**container: Any) -> dict[str, Any]:
    """source-controller's pod as Flux's own Deployment (config/manager) and flux2's patch
    make it."""
    base: dict[str, Any] = {
        "name": "manager",
        "image": "ghcr.io/fluxcd/source-controller:v1.9.3",
        "ports": [
            {"containerPort": 9090, "name": "http"},
            {"containerPort": 8080, "name": "http-prom"},
            {"containerPort": 9440, "name": "healthz"},
        ],
        "env": [
            {"name": "RUNTIME_NAMESPACE", "valueFrom": {"fieldRef": {"fieldPath": "metadata.namespace"}}},
            {"name": "TUF_ROOT", "value": "/tmp/.sigstore"},
            {
                "name": "GOMEMLIMIT",
                "valueFrom": {"resourceFieldRef": {"containerName": "manager", "resource": "limits.memory"}},
            },
        ],
        "args": [
            "--watch-all-namespaces",
            "--storage-path=/data",
            "--storage-adv-addr=source-controller.$(RUNTIME_NAMESPACE).svc.cluster.local.",
            "--literal=$$(RUNTIME_NAMESPACE)",
        ],
        "readinessProbe": {"httpGet": {"port": "http", "path": "/"}},
        "resources": {"limits": {"memory": "1Gi"}},
        "volumeMounts": [{"name": "data", "mountPath": "/data"}, {"name": "tmp", "mountPath": "/tmp"}],
    }
    base.update(container)
    return {
        "metadata": {"name": "source-controller-1", "namespace": "flux-system", "uid": "u-2"},
        "spec": {"containers": [base]},
    }


def test_a_flux_controller_runs_from_its_binary_with_free_ports_and_kubelet_semantics() -> None:
    pod = flux_pod()
    assert local_pods.refusal(pod) is None
    program = local_pods.known_program(pod)
    assert program is not None
    assert program.binary == "source-controller"
    mounts = {"/data": "/m/data", "/tmp": "/m/tmp"}
    env, unresolved = local_pods.container_env(pod, mounts)
    assert unresolved == []
    assert env == {
        "RUNTIME_NAMESPACE": "flux-system",
        "TUF_ROOT": "/m/tmp/.sigstore",
        "GOMEMLIMIT": str(1 << 30),
    }
    assert local_pods.named_ports(pod) == ["http", "http-prom", "healthz"]
    ports = {"http": 4001, "http-prom": 4002, "healthz": 4003}
    argv = local_pods.known_program_argv(
        pod, binary="/b/source-controller", mounts=mounts, env=env, ports=ports
    )
    assert argv == [
        "/b/source-controller",
        "--watch-all-namespaces",
        "--storage-path=/m/data",
        "--storage-adv-addr=source-controller.flux-system.svc.cluster.local.",
        "--literal=$(RUNTIME_NAMESPACE)",
        "--health-addr=127.0.0.1:4003",
        "--storage-addr=127.0.0.1:4001",
        "--metrics-addr=127.0.0.1:4002",
    ]
    assert local_pods.readiness_probe(pod, ports) == (4001, "/")
    assert local_pods.readiness_probe(pod, {}) is None
    assert local_pods.readiness_probe(operator_pod(), ports) is None


def test_a_known_image_with_its_own_command_or_odd_env_is_handled_plainly() -> None:
    assert (
        local_pods.refusal(flux_pod(command=["sh"])) == "a known program's image runs with its own entrypoint"
    )
    odd = flux_pod(
        env=[
            {"name": "A", "valueFrom": {"secretKeyRef": {"name": "s", "key": "k"}}},
            {"name": "B", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}},
        ],
        resources={"limits": {"memory": "1.5Gi"}},
    )
    assert local_pods.container_env(odd, {}) == ({}, ["A", "B"])
    assert local_pods.known_program(operator_pod()) is None
    assert local_pods.named_ports(operator_pod()) == []
    assert local_pods.known_program_argv(
        operator_pod(args=["x"]), binary="b", mounts={}, env={}, ports={}
    ) == ["b", "x"]
    assert local_pods.readiness_probe(flux_pod(readinessProbe={"exec": {}}), {"http": 1}) is None


def test_expand_and_memory_quantities() -> None:
    assert local_pods.expand("$(A)-$(B)-$$-$(", {"A": "a"}) == "a-$(B)-$-$("
    for quantity, value in [("64Mi", 64 << 20), ("1G", 10**9), ("512", 512), ("2k", 2000)]:
        env, _ = local_pods.container_env(
            flux_pod(
                env=[{"name": "M", "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}}}],
                resources={"limits": {"memory": quantity}},
            ),
            {},
        )
        assert env == {"M": str(value)}


def test_readiness_comes_from_the_probe_when_there_is_one() -> None:
    pod = flux_pod()
    waiting = local_pods.pod_status(pod, running=True, restarts=0, started_at="t", now="t", probe_ready=False)
    assert {c["type"]: c["status"] for c in waiting["status"]["conditions"]}["Ready"] == "False"
    assert waiting["status"]["containerStatuses"][0]["ready"] is False
    ready = local_pods.pod_status(pod, running=True, restarts=0, started_at="t", now="t", probe_ready=True)
    assert {c["type"]: c["status"] for c in ready["status"]["conditions"]}["Ready"] == "True"


def test_a_known_program_sees_its_service_account_volume_at_the_standard_path() -> None:
    argv = local_pods.with_service_account_volume(["/b/source-controller", "--x"], "/pods/p/serviceaccount")
    assert argv[:5] == ["unshare", "--mount", "--propagation", "private", "--"]
    assert argv[-3:] == ["/pods/p/serviceaccount", "/b/source-controller", "--x"]
    assert "/secrets/kubernetes.io/serviceaccount" in argv[7]
    assert local_pods.SERVICE_ACCOUNT_DIR == "/var/run/secrets/kubernetes.io/serviceaccount"
    assert local_pods.service_account_files("flux-system", "t", b"ca") == {
        "token": b"t",
        "ca.crt": b"ca",
        "namespace": b"flux-system",
    }


def test_cilium_operator_runs_as_the_lattice_load_balancer_stand_in() -> None:
    pod = {
        "metadata": {"name": "cilium-operator-1", "namespace": "kube-system", "uid": "u-3"},
        "spec": {
            "nodeName": "n1",
            "containers": [
                {
                    "name": "cilium-operator",
                    "image": "quay.io/cilium/operator-generic:v1.20.2",
                    "command": ["cilium-operator-generic"],
                    "args": ["--config-dir=/tmp/cilium/config-map"],
                    "ports": [
                        {"name": "health", "containerPort": 9234},
                        {"name": "prometheus", "containerPort": 9963},
                    ],
                    "env": [
                        {"name": "K8S_NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
                    ],
                    "readinessProbe": {
                        "httpGet": {"host": "127.0.0.1", "path": "/healthz", "port": "health"}
                    },
                }
            ],
        },
    }
    assert local_pods.refusal(pod) is None
    assert local_pods.named_ports(pod) == ["health"]
    assert local_pods.container_env(pod, {}) == ({"K8S_NODE_NAME": "n1"}, [])
    argv = local_pods.stand_in_argv(pod, python="py", kubeconfig="/k", ports={"health": 4100})
    assert argv == [
        "py",
        "-m",
        "lattice.app.cli",
        "local-lb",
        "--kubeconfig",
        "/k",
        "--health-addr=127.0.0.1:4100",
    ]
    assert local_pods.readiness_probe(pod, {"health": 4100}) == (4100, "/healthz")
    with pytest.raises(ValueError, match="stand-in"):
        local_pods.stand_in_argv(flux_pod(), python="py", kubeconfig="/k", ports={})


def test_lattice_pods_get_their_pod_ip_expanded() -> None:
    pod = operator_pod(args=["operator", "--bind-host", "$(POD_IP)"])
    argv = local_pods.pod_argv(pod, python="py", kubeconfig="/k", mounts={})
    assert argv[3:6] == ["operator", "--bind-host", local_pods.POD_IP]
