"""The objects kubeadm and a kubelet leave in a cluster, in the shapes Cluster API reads."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ruamel.yaml import YAML

from lattice.domain.kubeadm_node import (
    CONTROL_PLANE_COMPONENTS,
    bootstrap_rbac,
    ca_cert_hash,
    cluster_info,
    kubeadm_config,
    lease,
    mark_control_plane,
    mirror_pod,
    mirror_pod_status,
    node,
    node_labels,
    node_status,
)

NOW = "2025-01-02T03:04:05Z"
MICRO_NOW = "2025-01-02T03:04:05.123456Z"
CP_LABEL = "node-role.kubernetes.io/control-plane"
EXCLUDE_LB = "node.kubernetes.io/exclude-from-external-load-balancers"
BOOTSTRAPPERS = "system:bootstrappers:kubeadm:default-node-token"


def load(text: str) -> Any:
    return YAML(typ="safe", pure=True).load(text)


# -- kubeadm-config ------------------------------------------------------------------------------------


CLUSTER_CONFIGURATION = {
    "apiVersion": "kubeadm.k8s.io/v1beta4",
    "kind": "ClusterConfiguration",
    "clusterName": "w1",
    "kubernetesVersion": "v1.32.0",
    "controlPlaneEndpoint": "127.0.0.1:40123",
    "networking": {
        "podSubnet": "10.244.0.0/16",
        "serviceSubnet": "10.96.0.0/12",
        "dnsDomain": "cluster.local",
    },
    "apiServer": {"extraArgs": [{"name": "authorization-mode", "value": "Node,RBAC"}]},
}


def test_kubeadm_config() -> None:
    cm = kubeadm_config(CLUSTER_CONFIGURATION)
    assert {k: v for k, v in cm.items() if k != "data"} == {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kubeadm-config", "namespace": "kube-system"},
    }
    assert list(cm["data"]) == ["ClusterConfiguration"]
    assert load(cm["data"]["ClusterConfiguration"]) == CLUSTER_CONFIGURATION


def test_kubeadm_config_is_block_yaml() -> None:
    """Written as kubeadm writes it (block style), readable line by line."""
    text = kubeadm_config(CLUSTER_CONFIGURATION)["data"]["ClusterConfiguration"]
    assert "kind: ClusterConfiguration\n" in text
    assert "  podSubnet: 10.244.0.0/16\n" in text
    assert "{" not in text


def test_kubeadm_config_of_any_mapping() -> None:
    class Config(dict[str, Any]):
        pass

    cm = kubeadm_config(Config(kind="ClusterConfiguration", clusterName="x"))
    assert load(cm["data"]["ClusterConfiguration"]) == {"kind": "ClusterConfiguration", "clusterName": "x"}


def test_kubeadm_config_of_an_empty_configuration() -> None:
    assert load(kubeadm_config({})["data"]["ClusterConfiguration"]) == {}


# -- bootstrap-token RBAC ---------------------------------------------------------------------------------


def test_bootstrap_rbac() -> None:
    rbac = bootstrap_rbac()
    assert [(o["kind"], o["metadata"].get("namespace"), o["metadata"]["name"]) for o in rbac] == [
        ("ClusterRoleBinding", None, "kubeadm:kubelet-bootstrap"),
        ("ClusterRoleBinding", None, "kubeadm:node-autoapprove-bootstrap"),
        ("ClusterRoleBinding", None, "kubeadm:node-autoapprove-certificate-rotation"),
        ("Role", "kube-public", "kubeadm:bootstrap-signer-clusterinfo"),
        ("RoleBinding", "kube-public", "kubeadm:bootstrap-signer-clusterinfo"),
    ]
    assert all(o["apiVersion"] == "rbac.authorization.k8s.io/v1" for o in rbac)


def test_bootstrap_rbac_bindings() -> None:
    bindings = {o["metadata"]["name"]: o for o in bootstrap_rbac() if o["kind"].endswith("Binding")}

    def grant(name: str) -> tuple[str, str, list[tuple[str, str]]]:
        b = bindings[name]
        assert b["roleRef"]["apiGroup"] == "rbac.authorization.k8s.io"
        assert all(s["apiGroup"] == "rbac.authorization.k8s.io" for s in b["subjects"])
        return b["roleRef"]["kind"], b["roleRef"]["name"], [(s["kind"], s["name"]) for s in b["subjects"]]

    assert grant("kubeadm:kubelet-bootstrap") == (
        "ClusterRole",
        "system:node-bootstrapper",
        [("Group", BOOTSTRAPPERS)],
    )
    assert grant("kubeadm:node-autoapprove-bootstrap") == (
        "ClusterRole",
        "system:certificates.k8s.io:certificatesigningrequests:nodeclient",
        [("Group", BOOTSTRAPPERS)],
    )
    assert grant("kubeadm:node-autoapprove-certificate-rotation") == (
        "ClusterRole",
        "system:certificates.k8s.io:certificatesigningrequests:selfnodeclient",
        [("Group", "system:nodes")],
    )
    assert grant("kubeadm:bootstrap-signer-clusterinfo") == (
        "Role",
        "kubeadm:bootstrap-signer-clusterinfo",
        [("User", "system:anonymous")],
    )


def test_bootstrap_rbac_cluster_info_role() -> None:
    (role,) = [o for o in bootstrap_rbac() if o["kind"] == "Role"]
    assert role["rules"] == [
        {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["cluster-info"], "verbs": ["get"]}
    ]


def test_bootstrap_rbac_is_fresh_each_time() -> None:
    first = bootstrap_rbac()
    first[0]["subjects"].clear()
    assert bootstrap_rbac()[0]["subjects"]


# -- cluster-info -------------------------------------------------------------------------------------------


CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"


def test_cluster_info() -> None:
    cm = cluster_info("https://127.0.0.1:40123", CA_PEM)
    assert cm["metadata"] == {"name": "cluster-info", "namespace": "kube-public"}
    assert (cm["apiVersion"], cm["kind"], list(cm["data"])) == ("v1", "ConfigMap", ["kubeconfig"])
    assert load(cm["data"]["kubeconfig"]) == {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "",
                "cluster": {
                    "server": "https://127.0.0.1:40123",
                    "certificate-authority-data": base64.b64encode(CA_PEM).decode(),
                },
            }
        ],
        "contexts": [],
        "users": [],
    }


@given(server=st.from_regex(r"https://[a-z0-9.]{1,30}:[0-9]{1,5}", fullmatch=True), ca=st.binary())
def test_cluster_info_carries_server_and_ca(server: str, ca: bytes) -> None:
    (entry,) = load(cluster_info(server, ca)["data"]["kubeconfig"])["clusters"]
    assert entry["cluster"]["server"] == server
    assert base64.b64decode(entry["cluster"]["certificate-authority-data"]) == ca


# -- ca_cert_hash ----------------------------------------------------------------------------------


def test_ca_cert_hash_of_nothing() -> None:
    assert ca_cert_hash(b"") == "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


@given(spki=st.binary())
def test_ca_cert_hash(spki: bytes) -> None:
    digest = ca_cert_hash(spki)
    assert digest == "sha256:" + hashlib.sha256(spki).hexdigest()
    assert len(digest) == len("sha256:") + 64


# -- node_labels -----------------------------------------------------------------------------------


def test_node_labels_from_kubelet_args() -> None:
    args = [
        {"name": "cloud-provider", "value": "external"},
        {"name": "node-labels", "value": "pool=md-0,tier=web"},
        {"name": "eviction-hard", "value": "nodefs.available<0%"},
    ]
    assert node_labels(args) == {"pool": "md-0", "tier": "web"}


def test_node_labels_ignore_empty_pieces_and_strip() -> None:
    args = [{"name": "node-labels", "value": ",, a=1 , =orphan,b= 2 ,,c=,d"}]
    assert node_labels(args) == {"a": "1", "b": "2", "c": "", "d": ""}


def test_node_labels_value_may_hold_equals() -> None:
    args = [{"name": "node-labels", "value": "example.com/expr=a=b"}]
    assert node_labels(args) == {"example.com/expr": "a=b"}


def test_node_labels_of_several_args_later_wins() -> None:
    args = [
        {"name": "node-labels", "value": "a=1,b=1"},
        {"name": "node-labels", "value": "b=2"},
    ]
    assert node_labels(args) == {"a": "1", "b": "2"}


@pytest.mark.parametrize(
    "args",
    [
        [],
        [{"name": "node-labels"}],
        [{"name": "node-labels", "value": ""}],
        [{"name": "v", "value": "a=b"}],
        [{}],
    ],
)
def test_node_labels_none(args: list[dict[str, Any]]) -> None:
    assert node_labels(args) == {}


@given(
    labels=st.dictionaries(
        st.from_regex(r"[a-z0-9]([a-z0-9./-]{0,20}[a-z0-9])?", fullmatch=True),
        st.from_regex(r"[A-Za-z0-9_.-]{0,20}", fullmatch=True),
        max_size=6,
    ),
)
def test_node_labels_round_trip(labels: dict[str, str]) -> None:
    value = ",".join(f"{k}={v}" for k, v in labels.items())
    assert node_labels([{"name": "node-labels", "value": value}]) == labels


# -- Node ------------------------------------------------------------------------------------------


def test_node_of_a_worker() -> None:
    assert node("w1-md-0-abc", provider_id="local://w1/w1-md-0-abc", labels={"pool": "md-0"}) == {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": "w1-md-0-abc",
            "labels": {
                "kubernetes.io/hostname": "w1-md-0-abc",
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "pool": "md-0",
            },
            "annotations": {
                "kubeadm.alpha.kubernetes.io/cri-socket": "unix:///var/run/containerd/containerd.sock"
            },
        },
        "spec": {"providerID": "local://w1/w1-md-0-abc"},
    }


def test_mark_control_plane_is_kubeadms_label_and_taint() -> None:
    assert mark_control_plane("w1-cp-x") == {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": "w1-cp-x", "labels": {CP_LABEL: "", EXCLUDE_LB: ""}},
        "spec": {"taints": [{"key": CP_LABEL, "effect": "NoSchedule"}]},
    }


def test_node_labels_given_override_the_defaults() -> None:
    n = node("n", provider_id="p", labels={"kubernetes.io/arch": "arm64"})
    assert n["metadata"]["labels"]["kubernetes.io/arch"] == "arm64"
    assert n["metadata"]["labels"]["kubernetes.io/hostname"] == "n"


def test_node_status() -> None:
    status = node_status("w1-cp-x", address="127.0.0.1", version="v1.32.0", kubelet_port=10250, now=NOW)
    assert (status["apiVersion"], status["kind"], status["metadata"]) == ("v1", "Node", {"name": "w1-cp-x"})
    body = status["status"]
    assert [(c["type"], c["status"], c["reason"]) for c in body["conditions"]] == [
        ("MemoryPressure", "False", "KubeletHasSufficientMemory"),
        ("DiskPressure", "False", "KubeletHasNoDiskPressure"),
        ("PIDPressure", "False", "KubeletHasSufficientPID"),
        ("Ready", "True", "KubeletReady"),
    ]
    for condition in body["conditions"]:
        assert condition["lastHeartbeatTime"] == NOW
        assert condition["lastTransitionTime"] == NOW
        assert condition["message"]
    assert body["addresses"] == [
        {"type": "InternalIP", "address": "127.0.0.1"},
        {"type": "Hostname", "address": "w1-cp-x"},
    ]
    assert body["daemonEndpoints"] == {"kubeletEndpoint": {"Port": 10250}}
    info = body["nodeInfo"]
    assert info["kubeletVersion"] == info["kubeProxyVersion"] == "v1.32.0"
    assert (info["operatingSystem"], info["architecture"]) == ("linux", "amd64")
    assert set(info) == {
        "kubeletVersion",
        "kubeProxyVersion",
        "operatingSystem",
        "architecture",
        "containerRuntimeVersion",
        "osImage",
        "kernelVersion",
        "machineID",
        "systemUUID",
        "bootID",
    }
    assert all(isinstance(v, str) for v in info.values())


# -- Lease -----------------------------------------------------------------------------------------


def test_lease() -> None:
    assert lease("w1-cp-x", now=MICRO_NOW) == {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {"name": "w1-cp-x", "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": "w1-cp-x", "leaseDurationSeconds": 40, "renewTime": MICRO_NOW},
    }


@given(now=st.text(), duration=st.integers(1, 3600))
def test_lease_passes_renew_time_and_duration_through(now: str, duration: int) -> None:
    spec = lease("n", now=now, duration_seconds=duration)["spec"]
    assert spec["renewTime"] is now
    assert spec["leaseDurationSeconds"] == duration


# -- mirror pods -----------------------------------------------------------------------------------


def test_mirror_pod() -> None:
    command = ("kube-apiserver", "--secure-port=40123")
    assert mirror_pod("kube-apiserver", "w1-cp-x", node_uid="u-node", command=command) == {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": "kube-apiserver-w1-cp-x",
            "namespace": "kube-system",
            "labels": {"component": "kube-apiserver", "tier": "control-plane"},
            "annotations": {
                "kubernetes.io/config.mirror": "lattice-local-kube-apiserver",
                "kubernetes.io/config.source": "file",
            },
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": "w1-cp-x", "uid": "u-node", "controller": True}
            ],
        },
        "spec": {
            "nodeName": "w1-cp-x",
            "priorityClassName": "system-node-critical",
            "hostNetwork": True,
            "tolerations": [{"operator": "Exists", "effect": "NoExecute"}],
            "containers": [
                {
                    "name": "kube-apiserver",
                    "image": "registry.k8s.io/kube-apiserver",
                    "command": ["kube-apiserver", "--secure-port=40123"],
                }
            ],
        },
    }


@pytest.mark.parametrize("component", CONTROL_PLANE_COMPONENTS)
def test_mirror_pod_of_every_component(component: str) -> None:
    """KCP looks up ``kube-system/<component>-<node>`` and reads the ``component`` label."""
    pod = mirror_pod(component, "cp-0", node_uid="u", command=[component])
    meta = pod["metadata"]
    assert (meta["namespace"], meta["name"]) == ("kube-system", f"{component}-cp-0")
    assert meta["labels"]["component"] == component
    assert "kubernetes.io/config.mirror" in meta["annotations"]
    (owner,) = meta["ownerReferences"]
    assert owner["controller"] is True
    assert (owner["kind"], owner["name"], owner["uid"]) == ("Node", "cp-0", "u")
    assert pod["spec"]["nodeName"] == "cp-0"


def test_control_plane_components() -> None:
    assert CONTROL_PLANE_COMPONENTS == ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")


def test_mirror_pod_copies_the_command() -> None:
    command = ["etcd", "--data-dir=/var/lib/etcd"]
    pod = mirror_pod("etcd", "n", node_uid="u", command=command)
    command.append("--changed")
    assert pod["spec"]["containers"][0]["command"] == ["etcd", "--data-dir=/var/lib/etcd"]


def conditions(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status["status"]["conditions"]}


def test_mirror_pod_status_running() -> None:
    status = mirror_pod_status("etcd", "w1-cp-x", running=True, now=NOW)
    assert (status["apiVersion"], status["kind"]) == ("v1", "Pod")
    assert status["metadata"] == {"name": "etcd-w1-cp-x", "namespace": "kube-system"}
    assert status["status"]["phase"] == "Running"
    assert conditions(status) == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "True",
        "Ready": "True",
    }
    assert all(c["lastTransitionTime"] == NOW for c in status["status"]["conditions"])
    assert (status["status"]["hostIP"], status["status"]["podIP"]) == ("127.0.0.1", "127.0.0.1")


def test_mirror_pod_status_exited() -> None:
    status = mirror_pod_status("kube-scheduler", "w1-cp-x", running=False, now=NOW)
    assert status["metadata"]["name"] == "kube-scheduler-w1-cp-x"
    assert status["status"]["phase"] == "Failed"
    assert conditions(status) == {
        "PodScheduled": "True",
        "Initialized": "True",
        "ContainersReady": "False",
        "Ready": "False",
    }


@pytest.mark.parametrize("component", CONTROL_PLANE_COMPONENTS)
def test_mirror_pod_status_names_its_mirror_pod(component: str) -> None:
    pod = mirror_pod(component, "cp-0", node_uid="u", command=[])
    status = mirror_pod_status(component, "cp-0", running=True, now=NOW)
    assert status["metadata"] == {"name": pod["metadata"]["name"], "namespace": pod["metadata"]["namespace"]}
