"""The local infrastructure provider's resources (``infrastructure.lattice.dev/v1alpha1``).

This is the honest stand-in for cloud machines on a host with no cloud and no Docker: a
``LocalCluster``'s control plane runs as real processes (etcd, kube-apiserver,
kube-controller-manager) on this machine. The CRDs carry the labels ``clusterctl init`` would add
(``clusterctl.cluster.x-k8s.io``, the provider name, and the v1beta2 contract version) so that
Cluster API's contract lookup and ``clusterctl move`` treat them like any provider's kinds.
What the provider stands in for is listed in docs/local-provider.md.
"""

from __future__ import annotations

from attrs import frozen

from lattice.domain.models import Condition, describe

GROUP = "infrastructure.lattice.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
PROVIDER_LABELS = {
    "clusterctl.cluster.x-k8s.io": "",
    "cluster.x-k8s.io/provider": "infrastructure-local",
    "cluster.x-k8s.io/v1beta2": VERSION,
    "app.kubernetes.io/part-of": "lattice",
}


@frozen
class APIEndpoint:
    host: str = describe("Host of the cluster's API server.", minLength=1)
    port: int = describe("Port of the cluster's API server.", minimum=1, maximum=65535)


@frozen
class LocalClusterSpec:
    control_plane_endpoint: APIEndpoint | None = describe(
        "Where the cluster's API server listens; set by the provider when it boots.", default=None
    )


@frozen
class Initialization:
    provisioned: bool = describe("The infrastructure is ready.", default=False)


@frozen
class LocalClusterStatus:
    initialization: Initialization | None = describe("Provisioning progress.", default=None)
    data_dir: str | None = describe("Directory holding the control plane's data and logs.", default=None)


@frozen
class LocalMachineSpec:
    boot_timeout_seconds: int = describe(
        "How long the machine may take to boot.", default=120, minimum=10, maximum=3600
    )
    provider_id: str | None = describe("local://<cluster>/<machine>, set when booted.", default=None)


@frozen
class LocalMachineTemplateResource:
    spec: LocalMachineSpec = describe("Spec of the machines created from this template.")


@frozen
class LocalMachineTemplateSpec:
    template: LocalMachineTemplateResource = describe("Template for LocalMachines.")


@frozen
class MachineAddress:
    type: str = describe("Hostname, ExternalIP, InternalIP, ExternalDNS or InternalDNS.")
    address: str = describe("The address.")


@frozen
class LocalMachineStatus:
    initialization: Initialization | None = describe("Provisioning progress.", default=None)
    addresses: tuple[MachineAddress, ...] = describe("Addresses of the machine's node.", default=())
    conditions: tuple[Condition, ...] = describe(
        "Ready is False with reason BootFailed when the machine could not boot from its bootstrap data.",
        default=(),
    )
