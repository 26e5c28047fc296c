"""The real Cluster API managers (core, CABPK, KCP, built from sigs.k8s.io/cluster-api) on a
real control plane, driving what ``lattice compile`` produces for a local cluster.

Nothing here writes what a CAPI controller owns. The test plays only the infrastructure
provider's part of the contract (``LocalCluster.spec.controlPlaneEndpoint`` and
``status.initialization.provisioned``, which the local provider owns); everything else
(defaulting, validation, conversion, the Cluster's status, the certificates, the kubeconfig,
the first control-plane Machine, its KubeadmConfig and the rendered bootstrap data) is the
real controllers' work.
"""

from __future__ import annotations

import base64
import json
import re
import socket
import time
from collections import Counter
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS
from lattice.adapters.capi_managers import CapiManagers
from lattice.adapters.controlplane import ControlPlane, ControlPlaneError
from lattice.domain import capi, models
from lattice.domain.capi_managers import MANAGERS
from lattice.testing.fixtures import ControlPlaneFactory
from tests.compiled import compiled_local

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

NAME = "real"
NAMESPACE = models.capi_namespace(NAME)
KCP = f"{NAME}-control-plane"
REGISTRATION_SECRET = f"{NAME}-lattice-registration"

T = TypeVar("T")


def compiled(control_plane: int = 1, workers: int = 2) -> tuple[dict[str, Any], ...]:
    return compiled_local(NAME, control_plane=control_plane, workers=workers)


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 90.0) -> T:
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.5)


def get(cp: ControlPlane, kind: str, name: str, namespace: str = NAMESPACE) -> dict[str, Any] | None:
    result = cp.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
    return json.loads(result.stdout) if result.returncode == 0 else None


def listed(cp: ControlPlane, kind: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = json.loads(cp.kubectl("get", kind, "-n", namespace, "-o", "json").stdout)[
        "items"
    ]
    return items


# controller-runtime's informers log this once per list of their kind (klog, reflector.go).
CACHES_POPULATED = re.compile(r'"Caches populated" .*?type="([^"]+)"')
# Metadata-only informers all log this type, one line per kind they list.
METADATA_ONLY = "*v1.PartialObjectMetadata"


def relisted(cp: ControlPlane) -> dict[str, list[str]]:
    """Per manager, the kinds its informers had to list more than once (a watch of theirs was
    ended, and the API server could not resume it)."""
    found: dict[str, list[str]] = {}
    for manager in MANAGERS:
        log = (cp.logs_dir / f"{manager.binary}.log").read_text(errors="replace")
        counts = Counter(kind for kind in CACHES_POPULATED.findall(log) if kind != METADATA_ONLY)
        if again := sorted(kind for kind, n in counts.items() if n > 1):
            found[manager.binary] = again
    return found


def condition(obj: dict[str, Any] | None, kind: str) -> dict[str, Any] | None:
    for c in ((obj or {}).get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def test_real_managers_drive_a_compiled_local_cluster(managed: tuple[ControlPlane, CapiManagers]) -> None:
    cp, managers = managed
    assert len(managers.pids()) == 3

    # The real validating webhook refuses what CAPI refuses: an even stacked-etcd control plane.
    objects = compiled()
    even = next(o for o in objects if o["kind"] == "KubeadmControlPlane")
    even = {**even, "spec": {**even["spec"], "replicas": 2}}
    refused = cp.apply([objects[0], even], check=False)
    assert refused.returncode != 0
    assert "spec.replicas: Forbidden: cannot be an even number when etcd is stacked" in refused.stderr

    cp.apply(objects)

    # The real defaulting webhook filled in what the controllers dereference.
    kcp = wait_for("the KubeadmControlPlane", lambda: get(cp, "kubeadmcontrolplane", KCP))
    assert kcp["spec"]["rollout"]["strategy"]["type"] == "RollingUpdate"

    # The real conversion webhook answers a v1beta1 read (stored as v1beta2).
    old = json.loads(
        cp.kubectl("get", f"clusters.v1beta1.{capi.CLUSTER_API}", NAME, "-n", NAMESPACE, "-o", "json").stdout
    )
    assert old["apiVersion"] == f"{capi.CLUSTER_API}/v1beta1"
    assert old["spec"]["infrastructureRef"]["apiVersion"] == "infrastructure.lattice.dev/v1alpha1"

    # The infrastructure provider's part (the local provider owns LocalCluster): an endpoint,
    # then provisioned. Everything after this is the real controllers' work.
    cp.kubectl(
        "patch", "localcluster", NAME, "-n", NAMESPACE, "--type=merge",
        "-p", json.dumps({"spec": {"controlPlaneEndpoint": {"host": "127.0.0.1", "port": 6443}}}),
    )  # fmt: skip
    cp.kubectl(
        "patch", "localcluster", NAME, "-n", NAMESPACE, "--subresource=status", "--type=merge",
        "-p", json.dumps({"status": {"initialization": {"provisioned": True}}}),
    )  # fmt: skip

    def infrastructure_provisioned() -> dict[str, Any] | None:
        cluster = get(cp, "cluster", NAME)
        init = ((cluster or {}).get("status") or {}).get("initialization") or {}
        return cluster if init.get("infrastructureProvisioned") else None

    cluster = wait_for("the core controller to see the infrastructure", infrastructure_provisioned)
    assert cluster["spec"]["controlPlaneEndpoint"] == {"host": "127.0.0.1", "port": 6443}
    assert (condition(cluster, "InfrastructureReady") or {}).get("status") == "True"
    assert "cluster.cluster.x-k8s.io" in cluster["metadata"]["finalizers"]

    # KCP generates the cluster's certificates and admin kubeconfig, owned by the KCP.
    for suffix in ("ca", "etcd", "sa", "proxy", "kubeconfig"):
        secret = wait_for(f"Secret {NAME}-{suffix}", lambda s=suffix: get(cp, "secret", f"{NAME}-{s}"))
        assert secret["type"] == "cluster.x-k8s.io/secret"
        assert secret["metadata"]["labels"]["cluster.x-k8s.io/cluster-name"] == NAME
    kubeconfig = base64.b64decode(get(cp, "secret", f"{NAME}-kubeconfig")["data"]["value"]).decode()  # type: ignore[index]
    assert "server: https://127.0.0.1:6443" in kubeconfig

    # KCP creates the first control-plane Machine with its KubeadmConfig and LocalMachine,
    # all named alike and owned as CAPI owns them.
    machine = wait_for(
        "the first control-plane Machine",
        lambda: next(
            (
                m
                for m in listed(cp, "machines")
                if "cluster.x-k8s.io/control-plane" in m["metadata"]["labels"]
            ),
            None,
        ),
    )
    name = machine["metadata"]["name"]
    assert machine["metadata"]["ownerReferences"][0]["kind"] == "KubeadmControlPlane"
    assert machine["spec"]["infrastructureRef"]["kind"] == "LocalMachine"
    local_machine = wait_for("the LocalMachine KCP cloned", lambda: get(cp, "localmachine", name))
    assert local_machine["spec"]["bootTimeoutSeconds"] == 120

    # The compiled files name a registration Secret that does not exist yet: CABPK cannot
    # render, and says so in its own condition.
    def render_failure() -> dict[str, Any] | None:
        found = condition(get(cp, "kubeadmconfig", name), "DataSecretAvailable")
        failed = found is not None and found.get("status") == "False"
        return found if failed and REGISTRATION_SECRET in (found or {}).get("message", "") else None

    failure = wait_for("CABPK to report the missing Secret", render_failure)
    print(f"\nCABPK: {failure['reason']}: {failure['message']}")

    cp.apply(
        [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": REGISTRATION_SECRET, "namespace": NAMESPACE},
                "stringData": {"token": "t0ken", "ca.crt": "CA PEM"},
            }
        ]
    )
    config = wait_for(
        "the rendered bootstrap data",
        lambda: (c := get(cp, "kubeadmconfig", name)) and c.get("status", {}).get("dataSecretName") and c,
    )
    secret = get(cp, "secret", config["status"]["dataSecretName"])
    assert secret is not None
    assert base64.b64decode(secret["data"]["format"]) == b"cloud-config"
    data = base64.b64decode(secret["data"]["value"]).decode()
    assert data.startswith("## template: jinja\n#cloud-config")
    assert "kubeadm init --config /run/kubeadm/kubeadm.yaml" in data
    assert "path: /etc/lattice/bootstrap-token" in data
    assert "t0ken" in data  # contentFrom.secret inlined by CABPK
    kcp_commands = kcp["spec"]["kubeadmConfigSpec"]["postKubeadmCommands"]
    assert kcp_commands
    assert kcp_commands[0].splitlines()[0] in data
    machine = wait_for(
        "the Machine to take the bootstrap data",
        lambda: (m := get(cp, "machine", name)) and m["spec"]["bootstrap"].get("dataSecretName") and m,
    )
    assert machine["status"]["phase"] in ("Pending", "Provisioning")

    # Each informer of the three managers listed its kind once: nothing ended their watches
    # after their caches had synced (CapiManagers.start registers the CRDs' conversion, which
    # replaces the kinds' storage, before it starts them).
    assert relisted(cp) == {}

    # Stopping the managers leaves the control plane writable (webhooks unregistered), and the
    # even control plane is then accepted: it was the webhook, not the schema, that refused it.
    managers.stop()
    assert cp.kubectl("get", "validatingwebhookconfigurations", "-o", "name").stdout.strip() == ""
    cp.apply([{**even, "metadata": {**even["metadata"], "name": "after-stop"}}])


def test_start_without_the_capi_crds_names_them(control_plane_factory: ControlPlaneFactory) -> None:
    # No CAPI CRDs: start refuses before it changes anything or starts a manager.
    cp = control_plane_factory.one()
    managers = CapiManagers(cp)
    with pytest.raises(
        ControlPlaneError, match=r"CRDs the managers serve are not installed.*clusters\.cluster\.x-k8s\.io"
    ):
        managers.start(timeout=60)
    assert managers.pids() == []
    assert "cluster.x-k8s.io" not in cp.kubectl("get", "crd", "-o", "name").stdout


def test_a_manager_that_exits_fails_start_with_its_log(control_plane_factory: ControlPlaneFactory) -> None:
    # Every port start hands out is one something else already listens on: the real managers
    # cannot bind their webhook servers and exit; start says which, with its log.
    cp = control_plane_factory.one()
    cp.install_capi_crds(LOCAL_CAPI_PROVIDERS)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        managers = CapiManagers(cp, free_port=lambda: int(taken.getsockname()[1]))
        with pytest.raises(ControlPlaneError, match=r"exited with code"):
            managers.start(timeout=60)
    # The failed start took back what it did: no manager runs, and no CRD converts through the
    # webhook nothing serves (the API server would fail every read of those kinds at another
    # version), with no stop() called.
    assert managers.pids() == []
    crd = json.loads(cp.kubectl("get", "crd", "clusters.cluster.x-k8s.io", "-o", "json").stdout)
    assert crd["spec"]["conversion"]["strategy"] == "None"
    assert cp.kubectl("get", "validatingwebhookconfigurations", "-o", "name").stdout.strip() == ""


def test_start_with_the_api_server_down_says_so(control_plane_factory: ControlPlaneFactory) -> None:
    # Nothing can be read or registered: start fails with the reason before any manager runs.
    cp = control_plane_factory.one()
    cp.stop_apiserver()
    managers = CapiManagers(cp)
    with pytest.raises(ControlPlaneError, match=r"registering the managers' conversion webhooks: .*reach"):
        managers.start(timeout=10)
    assert managers.pids() == []
