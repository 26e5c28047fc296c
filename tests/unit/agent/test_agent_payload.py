"""The agent bootstrap payload: a golden YAML snapshot and the properties it must keep."""

from __future__ import annotations

import base64

from ruamel.yaml import YAML

from lattice.domain import agent_payload

PARAMS = agent_payload.AgentPayloadParams(
    cluster_name="workload-1",
    grpc_endpoint="cell.example.com:50051",
    image="ghcr.io/lattice/lattice:0.1.0",
    certificate_pem="-----BEGIN CERTIFICATE-----\nMIIBcert\n-----END CERTIFICATE-----\n",
    ca_bundle_pem="-----BEGIN CERTIFICATE-----\nMIIBca\n-----END CERTIFICATE-----\n",
)


def test_snapshot(yaml_snapshot):
    assert agent_payload.render_agent_manifests(PARAMS) == yaml_snapshot


def _docs(params=PARAMS):
    return list(YAML(typ="safe").load_all(agent_payload.render_agent_manifests(params)))


def test_objects_in_apply_order():
    kinds = [(d["kind"], d["metadata"]["name"]) for d in _docs()]
    assert kinds == [
        ("Namespace", "lattice-system"),
        ("ServiceAccount", "lattice-agent"),
        ("ClusterRole", "lattice-agent"),
        ("ClusterRoleBinding", "lattice-agent"),
        ("Secret", "lattice-agent-tls"),
        ("Deployment", "lattice-agent"),
    ]


def test_secret_holds_the_certificate_and_ca_but_never_a_key():
    secret = _docs()[4]
    assert set(secret["data"]) == {"tls.crt", "ca.crt"}
    assert base64.b64decode(secret["data"]["tls.crt"]).decode() == PARAMS.certificate_pem
    assert base64.b64decode(secret["data"]["ca.crt"]).decode() == PARAMS.ca_bundle_pem
    assert "PRIVATE KEY" not in agent_payload.render_agent_manifests(PARAMS)


def test_deployment_runs_the_outbound_agent_and_listens_nowhere():
    deployment = _docs()[5]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["lattice"]
    assert container["args"][:5] == [
        "agent",
        "--parent",
        "cell.example.com:50051",
        "--cluster-name",
        "workload-1",
    ]
    assert "ports" not in container
    assert "livenessProbe" not in container
    assert "readinessProbe" not in container
    assert pod["hostNetwork"] is True
    sources = pod["volumes"][0]["projected"]["sources"]
    assert [s["secret"]["name"] for s in sources] == ["lattice-agent-tls", "lattice-agent-key"]


def test_optional_flags():
    params = agent_payload.AgentPayloadParams(
        cluster_name="c",
        grpc_endpoint="10.0.0.1:50051",
        image="img",
        certificate_pem="c",
        ca_bundle_pem="a",
        tls_server_name="cell.internal",
        require_fips=True,
    )
    args = agent_payload.agent_args(params)
    assert args[-3:] == ["--tls-server-name", "cell.internal", "--require-fips"]


def test_rendering_is_deterministic():
    assert agent_payload.render_agent_manifests(PARAMS) == agent_payload.render_agent_manifests(PARAMS)


def test_extra_args_come_last():
    params = agent_payload.AgentPayloadParams(
        cluster_name="c",
        grpc_endpoint="10.0.0.1:50051",
        image="img",
        certificate_pem="c",
        ca_bundle_pem="a",
        extra_args=("--discovery-base-domain", "example.com"),
    )
    assert agent_payload.agent_args(params)[-2:] == ["--discovery-base-domain", "example.com"]


def test_discovery_agent_args_follow_the_clusters_spec():
    assert agent_payload.discovery_agent_args(None) == ()
    assert agent_payload.discovery_agent_args({}) == ()
    assert agent_payload.discovery_agent_args({"enabled": False, "baseDomain": "example.com"}) == ()
    assert agent_payload.discovery_agent_args({"enabled": True}) == ()
    assert agent_payload.discovery_agent_args({"enabled": True, "baseDomain": "example.com"}) == (
        "--discovery-base-domain",
        "example.com",
    )
    assert agent_payload.discovery_agent_args(
        {"enabled": True, "baseDomain": "example.com", "gatewayPort": 8443}
    ) == ("--discovery-base-domain", "example.com", "--gateway-port", "8443")
