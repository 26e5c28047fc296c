from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import models, serde, validation
from tests.unit.strategies import cluster_docs


def _validate(doc: dict[str, Any]) -> validation.ValidCluster | dict[str, str]:
    cluster = serde.cluster_from_dict(doc)
    assert isinstance(cluster, models.LatticeCluster), cluster
    result = validation.validate_cluster(cluster)
    if isinstance(result, list):
        return {e.field: e.reason for e in result}
    return result


def _base() -> dict[str, Any]:
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": "w1"},
        "spec": {
            "cellRef": "mgmt",
            "provider": {"type": "docker", "kubernetes": {"version": "1.35.0"}},
            "nodes": {"controlPlane": 1, "workers": 2},
        },
    }


AWS = {
    "region": "us-west-2",
    "sshKeyName": "k",
    "controlPlaneInstanceType": "m6i.large",
    "workerInstanceType": "m6i.large",
}
GCP = {
    "project": "p",
    "region": "europe-west4",
    "controlPlaneMachineType": "n2-standard-4",
    "workerMachineType": "n2-standard-4",
}
AZURE = {
    "location": "westeurope",
    "subscriptionId": "00000000-1111-2222-3333-444444444444",
    "controlPlaneVmSize": "Standard_D4s_v5",
    "workerVmSize": "Standard_D4s_v5",
    "sshPublicKey": "ecdsa-sha2-nistp256 AAAA x@y",
}


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def mutate(doc: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = doc
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return mutate


def _provider(kind: str, **block: Any) -> Callable[[dict[str, Any]], None]:
    defaults = {"aws": AWS, "gcp": GCP, "azure": AZURE}[kind]
    return _set(
        "spec.provider",
        {"type": kind, "kubernetes": {"version": "1.35.0"}, kind: {**defaults, **block}},
    )


CASES: list[tuple[str, Callable[[dict[str, Any]], None], str, str]] = [
    ("name-upper", _set("metadata.name", "Prod"), "metadata.name", "is not a DNS-1123 label"),
    ("name-empty", _set("metadata.name", ""), "metadata.name", "must not be empty"),
    ("name-long", _set("metadata.name", "a" * 59), "metadata.name", "at most 58 characters"),
    (
        "version",
        _set("spec.provider.kubernetes.version", "1.35"),
        "spec.provider.kubernetes.version",
        "is not a semantic version",
    ),
    (
        "major",
        _set("spec.provider.kubernetes.version", "2.0.0"),
        "spec.provider.kubernetes.version",
        "major version must be 1",
    ),
    (
        "san",
        _set("spec.provider.kubernetes.certSANs", ["ok.example", "not a name"]),
        "spec.provider.kubernetes.certSANs[1]",
        "neither an IP address nor a DNS name",
    ),
    ("cp-even", _set("spec.nodes.controlPlane", 2), "spec.nodes.controlPlane", "must be odd"),
    ("cp-zero", _set("spec.nodes.controlPlane", 0), "spec.nodes.controlPlane", "at least 1"),
    ("cp-big", _set("spec.nodes.controlPlane", 11), "spec.nodes.controlPlane", "at most 9"),
    ("workers-neg", _set("spec.nodes.workers", -1), "spec.nodes.workers", "0 or more"),
    ("workers-big", _set("spec.nodes.workers", 1001), "spec.nodes.workers", "at most 1000"),
    (
        "cidr-no-prefix",
        _set("spec.networking", {"default": {"cidr": "10.0.0.1"}}),
        "spec.networking.default.cidr",
        "add a prefix length",
    ),
    (
        "cidr-host-bits",
        _set("spec.networking", {"default": {"cidr": "10.0.0.1/24"}}),
        "spec.networking.default.cidr",
        "host bits set",
    ),
    ("pods-bad", _set("spec.networking", {"pods": ["x/8"]}), "spec.networking.pods[0]", "not a valid CIDR"),
    (
        "overlap",
        _set("spec.networking", {"pods": ["10.0.0.0/8"], "services": ["10.96.0.0/12"]}),
        "spec.networking.services[0]",
        "overlaps",
    ),
    ("self-cell", _set("spec.cellRef", "w1"), "spec.cellRef", "cannot be its own cell"),
    ("cellref-bad", _set("spec.cellRef", "Mgmt"), "spec.cellRef", "DNS-1123"),
    ("orphan", lambda d: d["spec"].pop("cellRef"), "spec.cellRef", "required unless"),
    (
        "parent-host",
        _set("spec.parentConfig", {"host": "bad host"}),
        "spec.parentConfig.host",
        "neither an IP address nor a DNS name",
    ),
    (
        "parent-port",
        _set("spec.parentConfig", {"host": "h", "grpcPort": 70000}),
        "spec.parentConfig.grpcPort",
        "between 1 and 65535",
    ),
    (
        "parent-same-port",
        _set("spec.parentConfig", {"host": "h", "grpcPort": 1, "bootstrapPort": 1}),
        "spec.parentConfig.bootstrapPort",
        "must differ from grpcPort",
    ),
    (
        "proxy-port-range",
        _set("spec.parentConfig", {"host": "h", "proxyPort": 70000}),
        "spec.parentConfig.proxyPort",
        "0 (no proxy) or a port up to 65535",
    ),
    (
        "proxy-same-port",
        _set("spec.parentConfig", {"host": "h", "grpcPort": 1, "proxyPort": 1}),
        "spec.parentConfig.proxyPort",
        "must differ from grpcPort and bootstrapPort",
    ),
    (
        "discovery-domain",
        _set("spec.discovery", {"enabled": True}),
        "spec.discovery.baseDomain",
        "required when discovery is enabled",
    ),
    (
        "discovery-bad-domain",
        _set("spec.discovery", {"baseDomain": "Not_DNS"}),
        "spec.discovery.baseDomain",
        "is not a DNS name",
    ),
    (
        "discovery-port",
        _set("spec.discovery", {"gatewayPort": 0}),
        "spec.discovery.gatewayPort",
        "between 1 and 65535",
    ),
    ("aws-missing", _set("spec.provider.type", "aws"), "spec.provider.aws", "required when type is aws"),
    ("extra-block", _set("spec.provider.gcp", GCP), "spec.provider.gcp", "provider type is docker"),
    ("aws-region", _provider("aws", region="mars-1"), "spec.provider.aws.region", "not an AWS region"),
    ("aws-empty", _provider("aws", sshKeyName=" "), "spec.provider.aws.sshKeyName", "must not be empty"),
    (
        "aws-subnet-no-vpc",
        _provider("aws", subnetIds=["subnet-1"]),
        "spec.provider.aws.subnetIds",
        "need vpcId",
    ),
    (
        "aws-subnet-id",
        _provider("aws", vpcId="vpc-1", subnetIds=["sn-1"]),
        "spec.provider.aws.subnetIds[0]",
        "is not a subnet ID",
    ),
    ("aws-vpc-id", _provider("aws", vpcId="net-1"), "spec.provider.aws.vpcId", "is not a VPC ID"),
    (
        "aws-creds",
        _provider("aws", credentialsRef={"name": "Bad_Name"}),
        "spec.provider.aws.credentialsRef.name",
        "not a valid object name",
    ),
    ("gcp-subnet", _provider("gcp", subnet="s"), "spec.provider.gcp.subnet", "needs network"),
    ("gcp-empty", _provider("gcp", project=""), "spec.provider.gcp.project", "must not be empty"),
    (
        "gcp-creds-ns",
        _provider("gcp", credentialsRef={"name": "c", "namespace": "NS"}),
        "spec.provider.gcp.credentialsRef.namespace",
        "DNS-1123",
    ),
    (
        "azure-sub",
        _provider("azure", subscriptionId="nope"),
        "spec.provider.azure.subscriptionId",
        "is not a GUID",
    ),
    (
        "azure-ed25519",
        _provider("azure", sshPublicKey="ssh-ed25519 AAAA x@y"),
        "spec.provider.azure.sshPublicKey",
        "not FIPS-approved",
    ),
    ("azure-empty", _provider("azure", location=" "), "spec.provider.azure.location", "must not be empty"),
]


@pytest.mark.parametrize(("mutate", "field", "reason"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_each_invalid_field_is_named_with_an_actionable_reason(
    mutate: Callable[[dict[str, Any]], None], field: str, reason: str
) -> None:
    doc = _base()
    mutate(doc)
    result = _validate(doc)
    assert isinstance(result, dict), "expected validation errors"
    assert field in result, result
    assert reason in result[field]


def test_all_errors_are_collected_not_just_the_first() -> None:
    doc = _base()
    for _, mutate, _, _ in CASES[:12]:
        mutate(doc)
    result = _validate(doc)
    assert isinstance(result, dict)
    assert len(result) >= 6


@given(cluster_docs())
def test_generated_valid_specs_always_validate(doc: dict[str, Any]) -> None:
    result = _validate(doc)
    assert isinstance(result, validation.ValidCluster), result
    assert result.kubernetes_version.startswith("v")


@given(cluster_docs(), st.sampled_from(CASES[:25]))
def test_every_invalid_field_yields_an_error_naming_it(
    doc: dict[str, Any], case: tuple[str, Callable[[dict[str, Any]], None], str, str]
) -> None:
    doc = copy.deepcopy(doc)
    _, mutate, field, _ = case
    # Provider-shape cases assume a docker cluster with a cellRef; give them one.
    doc["spec"]["provider"] = {"type": "docker", "kubernetes": {"version": "1.35.0"}}
    doc["spec"]["cellRef"] = "some-cell"
    doc["spec"].pop("parentConfig", None)
    doc["metadata"]["name"] = "w1"
    mutate(doc)
    result = _validate(doc)
    assert isinstance(result, dict)
    assert field in result


@pytest.mark.parametrize("kind", ["aws", "gcp", "azure", "docker"])
def test_valid_cluster_carries_the_resolved_provider(kind: str) -> None:
    doc = _base()
    if kind != "docker":
        _provider(kind)(doc)
    result = _validate(doc)
    assert isinstance(result, validation.ValidCluster)
    expected = {
        "aws": models.AwsProvider,
        "gcp": models.GcpProvider,
        "azure": models.AzureProvider,
        "docker": models.DockerProvider,
    }[kind]
    assert isinstance(result.provider, expected)
    assert result.name == "w1"
    assert result.spec is result.cluster.spec


def test_version_with_v_prefix_is_kept() -> None:
    doc = _base()
    _set("spec.provider.kubernetes.version", "v1.34.2")(doc)
    result = _validate(doc)
    assert isinstance(result, validation.ValidCluster)
    assert result.kubernetes_version == "v1.34.2"


@pytest.mark.parametrize(
    ("previous", "new", "fragment"),
    [
        ("1.35.2", "1.35.1", "downgrading from 1.35.2 to 1.35.1"),
        ("1.35.0", "v1.34.9", "downgrading from 1.35.0 to v1.34.9"),
        ("1.36.0", "1.36.0-rc.1", "downgrading"),
        ("1.33.4", "1.35.0", "skips a minor version"),
    ],
)
def test_version_changes_that_are_refused(previous: str, new: str, fragment: str) -> None:
    errors = validation.version_change_errors(previous, new, ("spec", "provider", "kubernetes", "version"))
    assert len(errors) == 1
    assert errors[0].field == "spec.provider.kubernetes.version"
    assert fragment in errors[0].reason


@pytest.mark.parametrize(
    ("previous", "new"),
    [
        ("1.35.0", "1.35.0"),
        ("1.35.0", "v1.35.1"),
        ("1.35.9", "1.36.0"),
        ("1.36.0-rc.1", "1.36.0"),
        ("x", "1.1.1"),
    ],
)
def test_version_changes_that_are_allowed(previous: str, new: str) -> None:
    assert validation.version_change_errors(previous, new, ("version",)) == []


@pytest.mark.parametrize("version", ["1.30.9", "1.37.0"])
def test_versions_outside_the_supported_range_are_refused(version: str) -> None:
    doc = _base()
    doc["spec"]["provider"]["kubernetes"]["version"] = version
    assert _validate(doc) == {
        "spec.provider.kubernetes.version": f"{version!r} is outside the supported range 1.31 to 1.36"
    }
