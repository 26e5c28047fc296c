"""How the kubelet stand-in runs a Lattice pod from the built image (pure part)."""

from __future__ import annotations

from typing import Any

import pytest

from lattice.domain import deploy, install_plan
from lattice.domain import local_pods as lp
from lattice.domain.operator_command import OperatorOptions

CONFIG = lp.parse_image_config(
    {
        "config": {
            "User": "65532:65532",
            "Entrypoint": ["/usr/local/bin/lattice"],
            "Env": ["PATH=/usr/local/bin:/usr/bin", "LATTICE_BIN_DIR=/opt/lattice/bin"],
            "WorkingDir": "/",
        }
    }
)


def pod(container: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p-0", "namespace": "lattice-system", "uid": "u"},
        "spec": {"containers": [{"name": "c", "image": "ghcr.io/x/lattice:1", **container}], **spec},
    }


def test_the_runtime_defaults_to_the_image_when_one_is_built() -> None:
    assert lp.pod_runtime(None, "/images/x") is lp.PodRuntime.IMAGE
    assert lp.pod_runtime("", None) is lp.PodRuntime.SOURCE
    assert lp.pod_runtime("source", "/images/x") is lp.PodRuntime.SOURCE
    assert lp.pod_runtime("image", "/images/x") is lp.PodRuntime.IMAGE
    with pytest.raises(ValueError, match="LATTICE_POD_RUNTIME='vm': one of source, image"):
        lp.pod_runtime("vm", None)
    with pytest.raises(ValueError, match="needs LATTICE_IMAGE_DIR"):
        lp.pod_runtime("image", None)


def test_an_image_config_is_read_with_every_problem_named() -> None:
    assert CONFIG.entrypoint == ("/usr/local/bin/lattice",)
    assert dict(CONFIG.env)["LATTICE_BIN_DIR"] == "/opt/lattice/bin"
    defaults = lp.parse_image_config({"config": {}})
    assert (defaults.user, defaults.workdir, defaults.cmd) == ("0", "/", ())
    with pytest.raises(ValueError, match="config: an object is required"):
        lp.parse_image_config({})
    bad = {"config": {"Env": ["NOEQUALS", 3], "User": 7, "WorkingDir": "rel", "Entrypoint": "x", "Cmd": [1]}}
    with pytest.raises(ValueError, match="image config: ") as caught:
        lp.parse_image_config(bad)
    for field in ("config.Env", "config.User", "config.WorkingDir", "config.Entrypoint", "config.Cmd"):
        assert field in str(caught.value)
    with pytest.raises(ValueError, match="'NOEQUALS' is not NAME=value"):
        lp.parse_image_config({"config": {"Env": ["NOEQUALS"]}})


def test_the_user_comes_from_the_container_the_pod_then_the_image() -> None:
    assert lp.pod_user(pod({}), CONFIG) == (65532, 65532, ())
    ctx = {"securityContext": {"runAsUser": 1000, "runAsGroup": 1001, "fsGroup": 2000}}
    assert lp.pod_user(pod({}, **ctx), CONFIG) == (1000, 1001, (2000,))
    assert lp.pod_user(pod({"securityContext": {"runAsUser": 7}}, **ctx), CONFIG) == (7, 1001, (2000,))
    root = lp.parse_image_config({"config": {"User": "0"}})
    assert lp.pod_user(pod({}), root) == (0, 0, ())
    with pytest.raises(ValueError, match="runAsNonRoot"):
        lp.pod_user(pod({}, securityContext={"runAsNonRoot": True}), root)
    named = lp.parse_image_config({"config": {"User": "nobody"}})
    with pytest.raises(ValueError, match="numeric user id"):
        lp.pod_user(pod({}), named)


def test_the_command_line_is_the_runtimes() -> None:
    operator = pod(
        {"args": ["operator", "--cluster-name", "$(POD_NAME)"], "env": [{"name": "POD_NAME", "value": "x"}]}
    )
    assert lp.image_argv(operator, CONFIG, kubeconfig="/k") == [
        "/usr/local/bin/lattice",
        "operator",
        "--cluster-name",
        "x",
        "--kubeconfig",
        "/k",
        "--health-port",
        "0",
    ]
    agent = pod({"command": ["lattice"], "args": ["agent"]})
    assert lp.image_argv(agent, CONFIG, kubeconfig="/k") == ["lattice", "agent", "--kubeconfig", "/k"]
    with_cmd = lp.ImageConfig(entrypoint=("e",), cmd=("c",), env=(), user="0", workdir="/")
    assert lp.image_argv(pod({}), with_cmd, kubeconfig="/k") == ["e", "c", "--kubeconfig", "/k"]
    assert lp.image_argv(pod({"command": ["x"]}), with_cmd, kubeconfig="/k") == ["x", "--kubeconfig", "/k"]


def _targets(sandbox: lp.Sandbox) -> dict[str, lp.Mount]:
    return {m.target: m for m in sandbox.mounts}


def test_an_agent_runs_as_its_user_with_its_volumes_at_the_manifests_paths() -> None:
    agent = pod(
        {
            "command": ["lattice"],
            "args": ["agent"],
            "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False},
            "volumeMounts": [
                {"name": "tls", "mountPath": "/etc/lattice/tls", "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        },
        securityContext={"runAsNonRoot": True, "runAsUser": 65532, "runAsGroup": 65532, "fsGroup": 65532},
    )
    sandbox = lp.image_sandbox(
        agent,
        CONFIG,
        kubeconfig="/m/pods/p/kubeconfig",
        volumes={"tls": "/m/pods/p/volumes/tls", "tmp": "/m/pods/p/volumes/tmp"},
        service_account_dir="/m/pods/p/serviceaccount",
        host_exec="{}",
    )
    assert (sandbox.uid, sandbox.gid, sandbox.groups) == (65532, 65532, (65532,))
    assert sandbox.read_only_root
    assert sandbox.no_new_privileges
    mounts = _targets(sandbox)
    assert mounts["/etc/lattice/tls"] == lp.Mount("bind", "/etc/lattice/tls", "/m/pods/p/volumes/tls", True)
    assert mounts["/tmp"].kind == "bind"  # the pod's emptyDir, not a fresh tmpfs
    assert mounts[lp.SERVICE_ACCOUNT_DIR].source == "/m/pods/p/serviceaccount"
    assert mounts["/m/pods/p/kubeconfig"].read_only
    assert {f"/dev/{d}" for d in lp.DEVICES} <= set(mounts)
    assert lp.HOST_ROOT not in mounts
    env = dict(sandbox.env)
    assert env["LATTICE_BIN_DIR"] == "/opt/lattice/bin"
    assert env["HOSTNAME"] == "p-0"
    assert lp.HOST_EXEC_ENV not in env
    depths = [len(m.target.rstrip("/").split("/")) for m in sandbox.mounts]
    assert depths == sorted(depths)  # /tmp before what is mounted under it


def test_a_local_infra_operator_runs_privileged_with_the_host_and_its_machines() -> None:
    operator = pod(
        {"args": ["operator", "--local-infra", "--machines-dir", "/state/machines"]},
        securityContext={"runAsNonRoot": True},
    )
    assert lp.runs_local_infra(operator)
    sandbox = lp.image_sandbox(
        operator,
        CONFIG,
        kubeconfig="/k",
        volumes={},
        service_account_dir="/sa",
        host_exec='{"root": "/host"}',
    )
    assert (sandbox.uid, sandbox.gid) == (0, 0)
    assert not sandbox.no_new_privileges
    mounts = _targets(sandbox)
    assert mounts[lp.HOST_ROOT] == lp.Mount("rbind", lp.HOST_ROOT, "/")
    assert mounts["/state/machines"] == lp.Mount("bind", "/state/machines", "/state/machines")
    assert mounts["/tmp"].kind == "tmpfs"
    assert dict(sandbox.env)[lp.HOST_EXEC_ENV] == '{"root": "/host"}'
    other = pod({"args": ["operator", "--local-infra", "--machines-dir=/s/m"]})
    assert "/s/m" in _targets(
        lp.image_sandbox(other, CONFIG, kubeconfig="/k", volumes={}, service_account_dir="/sa")
    )


def test_a_volume_the_kubelet_cannot_provide_is_refused() -> None:
    odd = pod({"volumeMounts": [{"name": "cfg", "mountPath": "/etc/cfg"}]})
    with pytest.raises(ValueError, match="volume 'cfg'"):
        lp.image_sandbox(odd, CONFIG, kubeconfig="/k", volumes={}, service_account_dir="/sa")


def test_a_local_infra_childs_operator_keeps_its_state_on_its_volume() -> None:
    """Its Cluster API managers write certificates and logs: the image's root is read-only."""
    wanted = install_plan.child_operator("c", {}, None, "lattice:1", local_machines_dir="/m")
    assert wanted.state_volume
    assert wanted.options == OperatorOptions(
        state_dir=deploy.STATE_DIR, machines_dir="/m", local_infra=True, capi_managers=True
    )
    assert not install_plan.child_operator("c", {}, None, "lattice:1").state_volume
