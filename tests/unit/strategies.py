"""Hypothesis strategies that build valid LatticeCluster documents (wire-shaped dicts)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from lattice.domain.validation import MAX_MINOR, MIN_MINOR

names = st.from_regex(r"[a-z]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
versions = st.tuples(st.integers(MIN_MINOR, MAX_MINOR), st.integers(0, 20)).map(lambda t: f"1.{t[0]}.{t[1]}")
octet = st.integers(0, 255)
ipv4 = st.tuples(octet, octet, octet, octet).map(lambda t: ".".join(map(str, t)))
dns = st.lists(names, min_size=1, max_size=3).map(".".join)

aws_block = st.fixed_dictionaries(
    {
        "region": st.sampled_from(["us-west-2", "eu-central-1", "ap-southeast-2"]),
        "sshKeyName": names,
        "controlPlaneInstanceType": st.sampled_from(["m6i.large", "c7i.xlarge"]),
        "workerInstanceType": st.sampled_from(["m6i.xlarge", "r7i.2xlarge"]),
    },
    optional={
        "amiId": st.just("ami-0123456789abcdef0"),
        "credentialsRef": st.fixed_dictionaries({"name": names}),
    },
)
gcp_block = st.fixed_dictionaries(
    {
        "project": names,
        "region": st.sampled_from(["europe-west4", "us-central1"]),
        "controlPlaneMachineType": st.just("n2-standard-4"),
        "workerMachineType": st.just("n2-standard-8"),
    },
    optional={"image": st.just("projects/acme/global/images/k8s")},
)
azure_block = st.fixed_dictionaries(
    {
        "location": st.sampled_from(["westeurope", "eastus2"]),
        "subscriptionId": st.uuids().map(str),
        "controlPlaneVmSize": st.just("Standard_D4s_v5"),
        "workerVmSize": st.just("Standard_D8s_v5"),
        "sshPublicKey": st.sampled_from(
            ["ecdsa-sha2-nistp256 AAAAE2Vj key@host", "ssh-rsa AAAAB3NzaC1yc2E key@host"]
        ),
    },
    optional={"resourceGroup": names, "vnetName": names},
)


@st.composite
def provider(draw: st.DrawFn) -> dict[str, Any]:
    kind = draw(st.sampled_from(["docker", "local", "aws", "gcp", "azure"]))
    out: dict[str, Any] = {
        "type": kind,
        "kubernetes": {"version": draw(versions)},
    }
    sans = draw(st.lists(st.one_of(ipv4, dns), max_size=3))
    if sans:
        out["kubernetes"]["certSANs"] = sans
    block = {
        "aws": aws_block,
        "gcp": gcp_block,
        "azure": azure_block,
        "local": st.fixed_dictionaries({}, optional={"bootTimeoutSeconds": st.integers(10, 3600)}),
    }.get(kind)
    if block is not None:
        out[kind] = draw(block)
    return out


@st.composite
def cluster_docs(draw: st.DrawFn) -> dict[str, Any]:
    name = draw(names)
    spec: dict[str, Any] = {
        "provider": draw(provider()),
        "nodes": {
            "controlPlane": draw(st.sampled_from([1, 3, 5])),
            "workers": draw(st.integers(0, 50)),
        },
    }
    if draw(st.booleans()):
        spec["cellRef"] = draw(names.filter(lambda n: n != name))
    else:
        spec["parentConfig"] = {"host": draw(st.one_of(ipv4, dns))}
    if draw(st.booleans()):
        spec["networking"] = {"default": {"cidr": draw(ipv4) + "/32"}}
    if draw(st.booleans()):
        spec["discovery"] = {"enabled": True, "baseDomain": draw(dns)}
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": name},
        "spec": spec,
    }
