"""The LatticeCluster resource as frozen attrs values.

These classes mirror the Kubernetes wire shape of ``lattice.dev/v1alpha1`` ``LatticeCluster``
one-to-one (snake_case here, camelCase on the wire; see :mod:`lattice.domain.serde`). Every
field carries its OpenAPI description and constraints in ``metadata`` so the CRD
(:mod:`lattice.domain.crds`) is generated from the same source and ``kubectl explain`` helps.

Wire values are not yet *valid*: :func:`lattice.domain.validation.validate_cluster` turns a
:class:`LatticeCluster` into a :class:`lattice.domain.validation.ValidCluster`, the only type the
compiler accepts.

Not guaranteed here: cross-field rules (odd control planes, provider block matching the provider
type, ...) — those live in validation so that every error is collected, not just the first.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import Any

import attrs
from attrs import frozen

GROUP = "lattice.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LatticeCluster"
PLURAL = "latticeclusters"

DEFAULT_GRPC_PORT = 50051
DEFAULT_BOOTSTRAP_PORT = 8443
DEFAULT_PROXY_PORT = 8444  # the Kubernetes API proxy (docs/api-proxy.md)
DEFAULT_GATEWAY_PORT = 443
DEFAULT_POD_CIDR = "192.168.0.0/16"
DEFAULT_SERVICE_CIDR = "10.128.0.0/12"


def describe(description: str, **schema: Any) -> Any:
    """An attrs field whose metadata carries its CRD description and schema constraints."""
    default = schema.pop("default", attrs.NOTHING)
    factory = schema.pop("factory", None)
    meta = {"description": description, "schema": schema}
    if factory is not None:
        return attrs.field(factory=factory, metadata=meta)
    return attrs.field(default=default, metadata=meta)


class ProviderType(enum.StrEnum):
    """Infrastructure a cluster runs on; each maps to one Cluster API infrastructure provider."""

    DOCKER = "docker"
    LOCAL = "local"
    AWS = "aws"
    GCP = "gcp"
    AZURE = "azure"


class ServiceType(enum.StrEnum):
    LOAD_BALANCER = "LoadBalancer"
    NODE_PORT = "NodePort"
    CLUSTER_IP = "ClusterIP"


class Phase(enum.StrEnum):
    """Where a LatticeCluster is in its life. See :mod:`lattice.domain.lifecycle`."""

    PENDING = "Pending"
    PROVISIONING = "Provisioning"
    BOOTSTRAPPING = "Bootstrapping"
    PIVOTING = "Pivoting"
    READY = "Ready"
    DELETING = "Deleting"
    FAILED = "Failed"


class ConditionStatus(enum.StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class PivotStep(enum.StrEnum):
    """Persisted pivot progress, so a restarted operator resumes instead of starting over."""

    EXPORTING = "Exporting"
    TRANSFERRING = "Transferring"
    IMPORTING = "Importing"
    DELETING_SOURCE = "DeletingSource"
    COMPLETE = "Complete"


class UnpivotStep(enum.StrEnum):
    """Persisted progress of handing a self-managing child's CAPI objects back to its cell."""

    REQUESTED = "Requested"
    """The cell asked the child's agent for its objects (UnpivotCommand)."""
    IMPORTED = "Imported"
    """The objects are back on the cell; the child has not yet let its LatticeCluster go."""
    RELEASED = "Released"
    """The child let go (or did not answer in time); the cell deletes the infrastructure."""


# --------------------------------------------------------------------------- spec


@frozen
class KubernetesSpec:
    version: str = describe(
        "Kubernetes version of the control plane and nodes, semantic version such as 1.35.0 "
        "(a leading v is accepted).",
        pattern=r"^v?[0-9]+\.[0-9]+\.[0-9]+([-+][0-9A-Za-z.+-]+)?$",
        maxLength=64,
    )
    cert_sans: tuple[str, ...] = describe(
        "Extra Subject Alternative Names (DNS names or IP addresses) for the API server certificate.",
        default=(),
        maxItems=64,
    )


@frozen
class CredentialsRef:
    name: str = describe(
        "Name of the provider credentials object: an AWSClusterStaticIdentity (aws), a Secret "
        "holding a service-account key (gcp) or an AzureClusterIdentity (azure).",
        minLength=1,
        maxLength=253,
    )
    namespace: str | None = describe(
        "Namespace of the credentials object (gcp, azure); defaults to the cluster's CAPI namespace.",
        default=None,
        maxLength=63,
    )


@frozen
class DockerProvider:
    image: str | None = describe(
        "Node image for Docker machines; defaults to kindest/node:<kubernetes version>.",
        default=None,
        minLength=1,
    )


@frozen
class LocalProvider:
    """Lattice's local infrastructure provider: each cluster's control plane runs as real
    processes on this machine (etcd, kube-apiserver, kube-controller-manager). A stand-in for
    cloud machines where there are none; see docs/local-provider.md."""

    boot_timeout_seconds: int = describe(
        "How long a local machine may take to boot (its control plane to become ready).",
        default=120,
        minimum=10,
        maximum=3600,
    )


@frozen
class AwsProvider:
    region: str = describe("AWS region, e.g. us-west-2.", minLength=1)
    ssh_key_name: str = describe("Name of an EC2 key pair installed on every machine.", minLength=1)
    control_plane_instance_type: str = describe(
        "EC2 instance type of control-plane machines, e.g. m6i.large.", minLength=2
    )
    worker_instance_type: str = describe(
        "EC2 instance type of worker machines, e.g. m6i.xlarge.", minLength=2
    )
    ami_id: str | None = describe(
        "AMI for every machine; when unset CAPA looks up its published image for the version.",
        default=None,
        minLength=1,
    )
    vpc_id: str | None = describe(
        "Existing VPC to use (bring your own network); when unset CAPA creates one.",
        default=None,
        minLength=1,
    )
    subnet_ids: tuple[str, ...] = describe(
        "Existing subnets in vpcId for the machines and load balancer.", default=()
    )
    credentials_ref: CredentialsRef | None = describe(
        "AWSClusterStaticIdentity holding the credentials; when unset CAPA's controller identity is used.",
        default=None,
    )


@frozen
class GcpProvider:
    project: str = describe("GCP project ID.", minLength=1)
    region: str = describe("GCP region, e.g. europe-west4.", minLength=1)
    control_plane_machine_type: str = describe(
        "Compute Engine machine type of control-plane machines, e.g. n2-standard-4.", minLength=1
    )
    worker_machine_type: str = describe("Compute Engine machine type of worker machines.", minLength=1)
    network: str | None = describe(
        "Existing VPC network name; when unset CAPG creates one.", default=None, minLength=1
    )
    subnet: str | None = describe("Existing subnetwork for the machines.", default=None, minLength=1)
    image: str | None = describe(
        "Machine image (full self link); when unset CAPG's default image is used.",
        default=None,
        minLength=1,
    )
    credentials_ref: CredentialsRef | None = describe(
        "Secret holding a service-account key (key credentials); when unset the controller's "
        "workload identity is used.",
        default=None,
    )


@frozen
class AzureProvider:
    location: str = describe("Azure location, e.g. westeurope.", minLength=1)
    subscription_id: str = describe("Azure subscription ID (a GUID).", minLength=1)
    control_plane_vm_size: str = describe(
        "VM size of control-plane machines, e.g. Standard_D4s_v5.", minLength=1
    )
    worker_vm_size: str = describe("VM size of worker machines.", minLength=1)
    ssh_public_key: str = describe(
        "OpenSSH public key installed on every machine (ecdsa-sha2-nistp256/384 or ssh-rsa: "
        "FIPS-approved algorithms only).",
        minLength=1,
    )
    resource_group: str | None = describe(
        "Resource group to create the cluster in; defaults to the cluster name.",
        default=None,
        minLength=1,
    )
    vnet_name: str | None = describe(
        "Existing virtual network name; when unset CAPZ creates one.", default=None, minLength=1
    )
    credentials_ref: CredentialsRef | None = describe(
        "AzureClusterIdentity holding the credentials.", default=None
    )


@frozen
class ProviderSpec:
    type: ProviderType = describe("Infrastructure provider. Immutable: a cluster cannot move between clouds.")
    kubernetes: KubernetesSpec = describe("Kubernetes version and API server certificate names.")
    docker: DockerProvider | None = describe(
        "Settings for type docker (CAPD; development and tests).", default=None
    )
    local: LocalProvider | None = describe(
        "Settings for type local (Lattice's local provider: control planes as local processes).",
        default=None,
    )
    aws: AwsProvider | None = describe("Settings for type aws (CAPA). Required for aws.", default=None)
    gcp: GcpProvider | None = describe("Settings for type gcp (CAPG). Required for gcp.", default=None)
    azure: AzureProvider | None = describe(
        "Settings for type azure (CAPZ). Required for azure.", default=None
    )


@frozen
class NodesSpec:
    control_plane: int = describe(
        "Number of control-plane machines: odd (1, 3, 5, ...) so etcd keeps quorum.",
        minimum=1,
        maximum=9,
    )
    workers: int = describe("Number of worker machines.", minimum=0, maximum=1000)


@frozen
class AddressPool:
    cidr: str = describe(
        "CIDR of the Cilium LB-IPAM pool that LoadBalancer services get addresses from, "
        "e.g. 172.18.255.1/32.",
        minLength=1,
    )


@frozen
class NetworkingSpec:
    default: AddressPool | None = describe("The default Cilium LB-IPAM address pool.", default=None)
    pods: tuple[str, ...] = describe(f"Pod CIDR blocks; default {DEFAULT_POD_CIDR}.", default=(), maxItems=2)
    services: tuple[str, ...] = describe(
        f"Service CIDR blocks; default {DEFAULT_SERVICE_CIDR}.", default=(), maxItems=2
    )


@frozen
class ServiceSpec:
    type: ServiceType = describe(
        "How the cell's endpoints are exposed inside its own cluster.",
        default=ServiceType.LOAD_BALANCER,
    )


@frozen
class ParentConfig:
    host: str = describe(
        "Host name or IP address children use to reach this cell (registration webhook and "
        "agent gRPC stream). Presence of parentConfig makes the cluster a cell.",
        minLength=1,
        maxLength=253,
    )
    grpc_port: int = describe(
        "Port of the agent gRPC stream (mutual TLS).",
        default=DEFAULT_GRPC_PORT,
        minimum=1,
        maximum=65535,
    )
    bootstrap_port: int = describe(
        "Port of the HTTPS registration webhook (POST /api/clusters/register).",
        default=DEFAULT_BOOTSTRAP_PORT,
        minimum=1,
        maximum=65535,
    )
    proxy_port: int = describe(
        "Port of the Kubernetes API proxy (HTTPS) through which the cell serves its descendants' "
        "API servers (docs/api-proxy.md); 0 turns the proxy off.",
        default=DEFAULT_PROXY_PORT,
        minimum=0,
        maximum=65535,
    )
    service: ServiceSpec | None = describe("Service exposing the cell's ports.", default=None)


@frozen
class DiscoverySpec:
    enabled: bool = describe("Announce this cluster's services to its parent.", default=False)
    base_domain: str | None = describe(
        "DNS zone for cross-cluster names: <service>.<env>.<cluster>.<baseDomain>. Required when enabled.",
        default=None,
        maxLength=253,
    )
    gateway_port: int = describe(
        "Port of the cross-cluster ingress gateway.",
        default=DEFAULT_GATEWAY_PORT,
        minimum=1,
        maximum=65535,
    )


@frozen
class LatticeClusterSpec:
    provider: ProviderSpec = describe("Where and with which Kubernetes version the cluster runs.")
    nodes: NodesSpec = describe("Machine topology.")
    networking: NetworkingSpec | None = describe(
        "Pod/service CIDRs and the load-balancer address pool.", default=None
    )
    cell_ref: str | None = describe(
        "Name of the parent cell that provisions this cluster and that its agent connects to. "
        "Unset only for a root (management) cluster, which must then be a cell.",
        default=None,
        maxLength=63,
    )
    parent_config: ParentConfig | None = describe(
        "Makes this cluster a cell: it accepts registrations and agent streams from children "
        "and provisions clusters whose cellRef names it.",
        default=None,
    )
    discovery: DiscoverySpec | None = describe("Cross-cluster service discovery.", default=None)


# --------------------------------------------------------------------------- status


@frozen
class Condition:
    """A ``metav1.Condition``."""

    type: str = describe("Type of condition in CamelCase.", minLength=1, maxLength=316)
    status: ConditionStatus = describe("Status of the condition: True, False or Unknown.")
    reason: str = describe("Programmatic reason in CamelCase.", minLength=1, maxLength=1024)
    message: str = describe("Human-readable message.", maxLength=32768)
    last_transition_time: str = describe("Last time the status changed (RFC 3339).", format="date-time")
    observed_generation: int | None = describe(
        "Generation the condition was set for.", default=None, minimum=0
    )


@frozen
class PivotStatus:
    step: PivotStep = describe("Last pivot step reached.")
    attempt: int = describe("Pivot attempt number, from 1.", minimum=1)
    objects: int | None = describe("Number of exported CAPI objects.", default=None, minimum=0)
    last_error: str | None = describe("Error of the last failed attempt.", default=None)


@frozen
class UnpivotStatus:
    step: UnpivotStep = describe("Last unpivot step reached.")
    objects: int | None = describe("Number of CAPI objects the child sent back.", default=None, minimum=0)
    last_error: str | None = describe("Why the last request failed (refused, unreachable).", default=None)


@frozen
class AgentStatus:
    connected: bool = describe("Whether the agent's stream to this cell is up.")
    state: str | None = describe("Last state the agent reported.", default=None)
    version: str | None = describe("Agent version.", default=None)
    last_heartbeat_time: str | None = describe(
        "Time of the last heartbeat (RFC 3339).", default=None, format="date-time"
    )
    nodes: str | None = describe(
        "Ready/total nodes as the agent last reported them (a self-managing child's own count).",
        default=None,
    )
    reported: tuple[str, ...] = describe(
        "What the cluster reports about its own LatticeCluster, the source of truth after the "
        "pivot (phase, generation and version applied, a rollout in progress).",
        default=(),
        maxItems=8,
    )
    certificate_not_after: str | None = describe(
        "When the agent's client certificate expires (RFC 3339): the one it last connected with, "
        "or the one the cell last issued it by renewal. Agents renew at 60-80% of the lifetime.",
        default=None,
        format="date-time",
    )


@frozen
class LatticeClusterStatus:
    phase: Phase = describe("Lifecycle phase.", default=Phase.PENDING)
    message: str | None = describe("Human-readable summary of the phase.", default=None)
    observed_generation: int | None = describe(
        "Generation of the spec last reconciled successfully.", default=None, minimum=0
    )
    conditions: tuple[Condition, ...] = describe("Current conditions.", default=())
    capi_namespace: str | None = describe("Namespace of the cluster's Cluster API objects.", default=None)
    pivot: PivotStatus | None = describe("Pivot progress.", default=None)
    unpivot: UnpivotStatus | None = describe(
        "Progress of taking a self-managing cluster's CAPI objects back before deleting it.",
        default=None,
    )
    agent: AgentStatus | None = describe("The cluster's agent, as seen by its cell.", default=None)
    version: str | None = describe(
        "Kubernetes version of the spec last applied to Cluster API (downgrades and minor skips "
        "from it are refused).",
        default=None,
    )


# --------------------------------------------------------------------------- object


@frozen
class ObjectMeta:
    """The parts of ``metav1.ObjectMeta`` Lattice reads; everything else is ignored."""

    name: str
    generation: int = 0
    uid: str | None = None
    resource_version: str | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    finalizers: tuple[str, ...] = ()
    deletion_timestamp: str | None = None


@frozen
class LatticeCluster:
    metadata: ObjectMeta
    spec: LatticeClusterSpec
    status: LatticeClusterStatus = attrs.field(factory=LatticeClusterStatus)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def is_cell(self) -> bool:
        return self.spec.parent_config is not None


def capi_namespace(cluster_name: str) -> str:
    """The namespace that holds one cluster's CAPI objects (one per cluster: clean moves)."""
    return f"capi-{cluster_name}"
