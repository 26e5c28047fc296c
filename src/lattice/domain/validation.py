"""Semantic validation of a LatticeCluster: every error, each with its field path.

:func:`validate_cluster` is the only way to obtain a :class:`ValidCluster`, the type the CAPI
compiler accepts; so an unvalidated spec cannot be compiled by mistake. A ``ValidCluster`` also
carries the resolved provider settings as one of four types (:data:`ProviderSettings`), so the
compiler never meets "type aws without an aws block".
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Iterator

from attrs import frozen

from lattice.domain import models
from lattice.domain.endpoint import host_error, is_dns_name, is_ip
from lattice.domain.errors import FieldError, PathSegment

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# Kubernetes minor versions Lattice supports for workload clusters (Cluster API v1.14's kubeadm
# providers; the local provider runs only the version built here, 1.36).
MIN_MINOR = 31
MAX_MINOR = 36
SEMVER = re.compile(
    r"^v?(?P<major>0|[1-9]\d*)\.(?P<minor>0|[1-9]\d*)\.(?P<patch>0|[1-9]\d*)"
    r"(?:-(?P<pre>[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+[0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*)?$"
)
AWS_REGION = re.compile(r"^[a-z]{2}(-[a-z]+)+-\d+$")
GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
# FIPS 186-4/5 approved public-key algorithms for SSH keys on machines.
FIPS_SSH_KEY_TYPES = ("ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ssh-rsa")

# The CAPI namespace is "capi-<name>" and must itself be a DNS-1123 label (<= 63).
MAX_CLUSTER_NAME = 63 - len(models.capi_namespace(""))

ProviderSettings = (
    models.DockerProvider
    | models.LocalProvider
    | models.AwsProvider
    | models.GcpProvider
    | models.AzureProvider
)
# Providers whose settings block may be omitted (every field has a default).
OPTIONAL_BLOCKS: dict[models.ProviderType, type[models.DockerProvider | models.LocalProvider]] = {
    models.ProviderType.DOCKER: models.DockerProvider,
    models.ProviderType.LOCAL: models.LocalProvider,
}


@frozen
class ValidCluster:
    """A LatticeCluster that passed :func:`validate_cluster`. Build it only through that."""

    cluster: models.LatticeCluster
    provider: ProviderSettings
    kubernetes_version: str  # normalised, with a leading "v" as CAPI expects

    @property
    def name(self) -> str:
        return self.cluster.name

    @property
    def spec(self) -> models.LatticeClusterSpec:
        return self.cluster.spec


def validate_cluster(cluster: models.LatticeCluster) -> ValidCluster | list[FieldError]:
    errors = list(_cluster_errors(cluster))
    if errors:
        return errors
    spec = cluster.spec
    provider = _provider_block(spec.provider)
    assert provider is not None  # guaranteed by _cluster_errors
    version = spec.provider.kubernetes.version
    return ValidCluster(
        cluster=cluster,
        provider=provider,
        kubernetes_version=version if version.startswith("v") else f"v{version}",
    )


def _blocks(provider: models.ProviderSpec) -> dict[models.ProviderType, ProviderSettings | None]:
    return {
        models.ProviderType.DOCKER: provider.docker,
        models.ProviderType.LOCAL: provider.local,
        models.ProviderType.AWS: provider.aws,
        models.ProviderType.GCP: provider.gcp,
        models.ProviderType.AZURE: provider.azure,
    }


def _provider_block(provider: models.ProviderSpec) -> ProviderSettings | None:
    block = _blocks(provider)[provider.type]
    if block is None and provider.type in OPTIONAL_BLOCKS:
        return OPTIONAL_BLOCKS[provider.type]()
    return block


def _cluster_errors(cluster: models.LatticeCluster) -> Iterator[FieldError]:
    yield from name_errors(cluster.metadata.name, ("metadata", "name"), MAX_CLUSTER_NAME)
    spec = cluster.spec
    yield from _provider_errors(spec.provider, ("spec", "provider"))
    yield from _nodes_errors(spec.nodes, ("spec", "nodes"))
    if spec.networking is not None:
        yield from _networking_errors(spec.networking, ("spec", "networking"))
    yield from _topology_errors(cluster, ("spec",))
    if spec.discovery is not None:
        yield from _discovery_errors(spec.discovery, ("spec", "discovery"))


def name_errors(name: str, path: tuple[PathSegment, ...], max_len: int = 63) -> Iterator[FieldError]:
    if not name:
        yield FieldError(path, "must not be empty")
    elif len(name) > max_len:
        yield FieldError(path, f"must be at most {max_len} characters, got {len(name)}")
    elif not DNS1123_LABEL.match(name):
        yield FieldError(
            path,
            f"{name!r} is not a DNS-1123 label: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
        )


def _provider_errors(provider: models.ProviderSpec, path: tuple[PathSegment, ...]) -> Iterator[FieldError]:
    version = provider.kubernetes.version
    match = SEMVER.match(version)
    vpath = (*path, "kubernetes", "version")
    if match is None:
        yield FieldError(vpath, f"{version!r} is not a semantic version such as 1.35.0")
    elif match["major"] != "1":
        yield FieldError(vpath, f"Kubernetes major version must be 1, got {match['major']}")
    elif not MIN_MINOR <= int(match["minor"]) <= MAX_MINOR:
        yield FieldError(vpath, f"{version!r} is outside the supported range 1.{MIN_MINOR} to 1.{MAX_MINOR}")
    for index, san in enumerate(provider.kubernetes.cert_sans):
        if not (is_ip(san) or is_dns_name(san.removeprefix("*."))):
            yield FieldError(
                (*path, "kubernetes", "certSANs", index),
                f"{san!r} is neither an IP address nor a DNS name",
            )
    yield from _provider_block_errors(provider, path)


def _provider_block_errors(
    provider: models.ProviderSpec, path: tuple[PathSegment, ...]
) -> Iterator[FieldError]:
    blocks = _blocks(provider)
    for kind, block in blocks.items():
        if kind is not provider.type and block is not None:
            yield FieldError(
                (*path, kind.value),
                f"settings for {kind.value} given but provider type is {provider.type.value}; "
                f"remove them or change type",
            )
    chosen = blocks[provider.type]
    if chosen is None:
        if provider.type not in OPTIONAL_BLOCKS:
            yield FieldError(
                (*path, provider.type.value),
                f"required when type is {provider.type.value}",
            )
        return
    bpath = (*path, provider.type.value)
    if isinstance(chosen, models.AwsProvider):
        yield from _aws_errors(chosen, bpath)
    elif isinstance(chosen, models.GcpProvider):
        yield from _gcp_errors(chosen, bpath)
    elif isinstance(chosen, models.AzureProvider):
        yield from _azure_errors(chosen, bpath)


def _non_empty(
    values: Iterable[tuple[str, str | None]], path: tuple[PathSegment, ...]
) -> Iterator[FieldError]:
    for name, value in values:
        if value is not None and not value.strip():
            yield FieldError((*path, name), "must not be empty")


def _credentials_errors(
    ref: models.CredentialsRef | None, path: tuple[PathSegment, ...]
) -> Iterator[FieldError]:
    if ref is None:
        return
    if not is_dns_name(ref.name):
        yield FieldError((*path, "credentialsRef", "name"), f"{ref.name!r} is not a valid object name")
    if ref.namespace is not None:
        yield from name_errors(ref.namespace, (*path, "credentialsRef", "namespace"))


def _aws_errors(aws: models.AwsProvider, path: tuple[PathSegment, ...]) -> Iterator[FieldError]:
    if not AWS_REGION.match(aws.region):
        yield FieldError((*path, "region"), f"{aws.region!r} is not an AWS region such as us-west-2")
    yield from _non_empty(
        [
            ("sshKeyName", aws.ssh_key_name),
            ("controlPlaneInstanceType", aws.control_plane_instance_type),
            ("workerInstanceType", aws.worker_instance_type),
            ("amiId", aws.ami_id),
            ("vpcId", aws.vpc_id),
        ],
        path,
    )
    if aws.subnet_ids and aws.vpc_id is None:
        yield FieldError((*path, "subnetIds"), "subnets of an existing network need vpcId")
    for index, subnet in enumerate(aws.subnet_ids):
        if not subnet.startswith("subnet-"):
            yield FieldError((*path, "subnetIds", index), f"{subnet!r} is not a subnet ID (subnet-...)")
    if aws.vpc_id is not None and aws.vpc_id.strip() and not aws.vpc_id.startswith("vpc-"):
        yield FieldError((*path, "vpcId"), f"{aws.vpc_id!r} is not a VPC ID (vpc-...)")
    yield from _credentials_errors(aws.credentials_ref, path)


def _gcp_errors(gcp: models.GcpProvider, path: tuple[PathSegment, ...]) -> Iterator[FieldError]:
    yield from _non_empty(
        [
            ("project", gcp.project),
            ("region", gcp.region),
            ("controlPlaneMachineType", gcp.control_plane_machine_type),
            ("workerMachineType", gcp.worker_machine_type),
            ("network", gcp.network),
            ("subnet", gcp.subnet),
            ("image", gcp.image),
        ],
        path,
    )
    if gcp.subnet is not None and gcp.network is None:
        yield FieldError((*path, "subnet"), "a subnet of an existing network needs network")
    yield from _credentials_errors(gcp.credentials_ref, path)


def _azure_errors(azure: models.AzureProvider, path: tuple[PathSegment, ...]) -> Iterator[FieldError]:
    yield from _non_empty(
        [
            ("location", azure.location),
            ("controlPlaneVmSize", azure.control_plane_vm_size),
            ("workerVmSize", azure.worker_vm_size),
            ("resourceGroup", azure.resource_group),
            ("vnetName", azure.vnet_name),
        ],
        path,
    )
    if not GUID.match(azure.subscription_id):
        yield FieldError((*path, "subscriptionId"), f"{azure.subscription_id!r} is not a GUID")
    key_type = azure.ssh_public_key.split(" ", 1)[0]
    if key_type not in FIPS_SSH_KEY_TYPES:
        yield FieldError(
            (*path, "sshPublicKey"),
            f"key type {key_type!r} is not FIPS-approved; use one of {', '.join(FIPS_SSH_KEY_TYPES)}",
        )
    yield from _credentials_errors(azure.credentials_ref, path)


def _nodes_errors(nodes: models.NodesSpec, path: tuple[PathSegment, ...]) -> Iterator[FieldError]:
    if nodes.control_plane < 1:
        yield FieldError((*path, "controlPlane"), f"must be at least 1, got {nodes.control_plane}")
    elif nodes.control_plane % 2 == 0:
        yield FieldError(
            (*path, "controlPlane"),
            f"must be odd so etcd keeps quorum (1, 3, 5, ...), got {nodes.control_plane}",
        )
    elif nodes.control_plane > 9:
        yield FieldError((*path, "controlPlane"), f"must be at most 9, got {nodes.control_plane}")
    if nodes.workers < 0:
        yield FieldError((*path, "workers"), f"must be 0 or more, got {nodes.workers}")
    elif nodes.workers > 1000:
        yield FieldError((*path, "workers"), f"must be at most 1000, got {nodes.workers}")


def _networking_errors(net: models.NetworkingSpec, path: tuple[PathSegment, ...]) -> Iterator[FieldError]:
    networks: list[tuple[tuple[PathSegment, ...], ipaddress.IPv4Network | ipaddress.IPv6Network]] = []
    if net.default is not None:
        cidr_path = (*path, "default", "cidr")
        parsed = _parse_cidr(net.default.cidr)
        if isinstance(parsed, str):
            yield FieldError(cidr_path, parsed)
    for key, blocks in (("pods", net.pods), ("services", net.services)):
        for index, block in enumerate(blocks):
            parsed = _parse_cidr(block)
            if isinstance(parsed, str):
                yield FieldError((*path, key, index), parsed)
            else:
                networks.append(((*path, key, index), parsed))
    for i, (path_a, a) in enumerate(networks):
        for path_b, b in networks[i + 1 :]:
            if a.version == b.version and a.overlaps(b):
                yield FieldError(path_b, f"{b} overlaps {a} ({'.'.join(map(str, path_a))})")


def _parse_cidr(value: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network | str:
    if "/" not in value:
        return f"{value!r} is not a CIDR: add a prefix length, e.g. {value}/32"
    try:
        return ipaddress.ip_network(value, strict=True)
    except ValueError as exc:
        return f"{value!r} is not a valid CIDR: {exc}"


def _topology_errors(cluster: models.LatticeCluster, path: tuple[PathSegment, ...]) -> Iterator[FieldError]:
    spec = cluster.spec
    if spec.cell_ref is not None:
        yield from name_errors(spec.cell_ref, (*path, "cellRef"))
        if spec.cell_ref == cluster.metadata.name:
            yield FieldError((*path, "cellRef"), "a cluster cannot be its own cell")
    elif spec.parent_config is None:
        yield FieldError(
            (*path, "cellRef"),
            "required unless the cluster is a root cell: set cellRef to the cell that provisions "
            "this cluster, or set parentConfig to make it a root (management) cell",
        )
    if spec.parent_config is not None:
        pc = spec.parent_config
        ppath = (*path, "parentConfig")
        host_problem = host_error(pc.host)
        if host_problem is not None:
            yield FieldError((*ppath, "host"), host_problem)
        for key, port in (("grpcPort", pc.grpc_port), ("bootstrapPort", pc.bootstrap_port)):
            if not 1 <= port <= 65535:
                yield FieldError((*ppath, key), f"must be a port between 1 and 65535, got {port}")
        if pc.grpc_port == pc.bootstrap_port:
            yield FieldError((*ppath, "bootstrapPort"), "must differ from grpcPort")
        if not 0 <= pc.proxy_port <= 65535:
            yield FieldError(
                (*ppath, "proxyPort"), f"must be 0 (no proxy) or a port up to 65535, got {pc.proxy_port}"
            )
        elif pc.proxy_port in (pc.grpc_port, pc.bootstrap_port):
            yield FieldError((*ppath, "proxyPort"), "must differ from grpcPort and bootstrapPort")


def _discovery_errors(discovery: models.DiscoverySpec, path: tuple[PathSegment, ...]) -> Iterator[FieldError]:
    if discovery.base_domain is None:
        if discovery.enabled:
            yield FieldError((*path, "baseDomain"), "required when discovery is enabled")
    elif not is_dns_name(discovery.base_domain):
        yield FieldError((*path, "baseDomain"), f"{discovery.base_domain!r} is not a DNS name")
    if not 1 <= discovery.gateway_port <= 65535:
        yield FieldError(
            (*path, "gatewayPort"), f"must be a port between 1 and 65535, got {discovery.gateway_port}"
        )


def _version_key(version: str) -> tuple[int, int, int, int] | None:
    match = SEMVER.match(version)
    if match is None:
        return None
    # A pre-release sorts before its release (1.36.0-rc.1 < 1.36.0).
    return (int(match["major"]), int(match["minor"]), int(match["patch"]), 0 if match["pre"] else 1)


def version_change_errors(previous: str, new: str, path: tuple[PathSegment, ...]) -> list[FieldError]:
    """Why moving from ``previous`` (the version last applied) to ``new`` is refused: a
    downgrade, or a skip of more than one minor version (kubeadm upgrades one minor at a time)."""
    old_key, new_key = _version_key(previous), _version_key(new)
    if old_key is None or new_key is None:
        return []
    if new_key < old_key:
        return [FieldError(path, f"downgrading from {previous} to {new} is not supported")]
    if new_key[0] == old_key[0] and new_key[1] > old_key[1] + 1:
        return [
            FieldError(
                path, f"from {previous} to {new} skips a minor version: upgrade one minor version at a time"
            )
        ]
    return []
