"""The pure rules for running the real CAPI managers outside a cluster."""

from __future__ import annotations

import pytest

from lattice.domain import capi_managers as cm

SERVICE = {"service": {"name": "webhook-service", "namespace": "system", "path": "/validate-x"}}


def _config(kind: str = "ValidatingWebhookConfiguration", **webhook: object) -> dict[str, object]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": "validating-webhook-configuration"},
        "webhooks": [{"name": "v.x", "clientConfig": SERVICE, "failurePolicy": "Fail", **webhook}],
    }


def test_argv_has_ports_certs_and_no_leader_election() -> None:
    argv = cm.manager_argv(
        "/bin/m", kubeconfig="/k", cert_dir="/c", host="127.0.0.1", ports=cm.Ports(1, 2, 3), extra=["--x"]
    )
    assert argv == [
        "/bin/m",
        "--kubeconfig=/k",
        "--webhook-port=1",
        "--webhook-cert-dir=/c",
        "--health-addr=127.0.0.1:2",
        "--diagnostics-address=127.0.0.1:3",
        "--insecure-diagnostics=true",
        "--leader-elect=false",
        "--v=2",
        "--x",
    ]


def test_only_kcp_has_flags_of_its_own_its_etcd_timeouts() -> None:
    flags = {m.binary: m.flags for m in cm.MANAGERS}
    assert flags == {
        "capi-controller-manager": (),
        "capi-kubeadm-bootstrap-controller-manager": (),
        "capi-kubeadm-control-plane-controller-manager": (
            "--etcd-dial-timeout-duration=1s",
            "--etcd-call-timeout-duration=1s",
        ),
    }


def test_managers_are_named_as_clusterctl_names_them() -> None:
    assert [m.prefix for m in cm.MANAGERS] == [
        "capi-",
        "capi-kubeadm-bootstrap-",
        "capi-kubeadm-control-plane-",
    ]
    assert {m.binary for m in cm.MANAGERS} == {m.prefix + "controller-manager" for m in cm.MANAGERS}


def test_webhooks_point_at_the_local_process() -> None:
    out = cm.webhook_configurations(
        [None, _config(), _config("MutatingWebhookConfiguration")],
        prefix="capi-",
        base_url="https://127.0.0.1:9443",
        ca_bundle="Q0E=",
    )
    assert [o["metadata"]["name"] for o in out] == ["capi-validating-webhook-configuration"] * 2
    assert [o["kind"] for o in out] == ["ValidatingWebhookConfiguration", "MutatingWebhookConfiguration"]
    hook = out[0]["webhooks"][0]
    assert hook["clientConfig"] == {"url": "https://127.0.0.1:9443/validate-x", "caBundle": "Q0E="}
    assert hook["failurePolicy"] == "Fail"  # kept as upstream has it


def test_malformed_manifests_are_refused_with_every_reason() -> None:
    bad = [
        {"kind": "Service", "metadata": {"name": "s"}},
        {**_config(), "metadata": {}},
        _config(clientConfig={"url": "https://elsewhere"}),
    ]
    with pytest.raises(cm.ManagerError) as info:
        cm.webhook_configurations(bad, prefix="p-", base_url="https://h:1", ca_bundle="")
    message = str(info.value)
    assert "unexpected kind 'Service'" in message
    assert "without metadata.name" in message
    assert "webhooks[0] has no clientConfig.service.path" in message
    with pytest.raises(cm.ManagerError, match="no webhook configuration"):
        cm.webhook_configurations([], prefix="p-", base_url="https://h:1", ca_bundle="")


def test_conversion_plurals_from_the_kustomization() -> None:
    kustomization = {
        "resources": ["bases/cluster.x-k8s.io_clusters.yaml"],
        "patches": [
            {"path": "patches/webhook_in_clusters.yaml"},
            {"path": "patches/cainjection_in_clusters.yaml"},
            {"path": "patches/webhook_in_machinesets.yaml"},
        ],
    }
    assert cm.conversion_plurals(kustomization) == ["clusters", "machinesets"]
    assert cm.conversion_plurals({"patchesStrategicMerge": ["patches/webhook_in_kubeadmconfigs.yaml"]}) == [
        "kubeadmconfigs"
    ]
    assert cm.conversion_plurals({}) == []


def test_conversion_patch_and_its_undoing() -> None:
    patch = cm.conversion_patch("clusters.cluster.x-k8s.io", url="https://h:1/convert", ca_bundle="Q0E=")
    conversion = patch["spec"]["conversion"]
    assert conversion["strategy"] == "Webhook"
    assert conversion["webhook"] == {
        "conversionReviewVersions": ["v1"],
        "clientConfig": {"url": "https://h:1/convert", "caBundle": "Q0E="},
    }
    assert cm.without_conversion("clusters.cluster.x-k8s.io")["spec"] == {"conversion": {"strategy": "None"}}
