"""The CAPI compiler: a validated LatticeCluster (plus its context) → Cluster API objects.

Pure and deterministic: the same input always yields the same objects, in the same order, with
the same names. Targets Cluster API v1.14 (core, kubeadm bootstrap and control plane on
``v1beta2`` with ``{apiGroup, kind, name}`` references) and the infrastructure providers' served
versions: CAPD ``v1beta2``, CAPA v2.11 ``v1beta2``, CAPG v1.12 ``v1beta1``, CAPZ v1.26
``v1beta1`` (see docs/capi.md). v1beta2 schemas reject empty ``{}`` and ``[]``; nothing here
emits one.

Every object lives in the cluster's own namespace ``capi-<name>`` (first object of the list)
and carries ``cluster.x-k8s.io/cluster-name`` and ``lattice.dev/*`` labels. No object gets an
ownerReference to the LatticeCluster: an owner outside clusterctl's move graph makes
``clusterctl move`` silently drop the subtree (cluster-api #8387).
"""

from __future__ import annotations

import base64
import shlex
from collections.abc import Mapping
from typing import Any

from attrs import frozen

from lattice.domain import addons, models
from lattice.domain.endpoint import Endpoint, parse_host_ports
from lattice.domain.errors import FieldError
from lattice.domain.validation import ValidCluster

Manifest = dict[str, Any]

CAPI_VERSION = "v1.14.2"
CLUSTER_API = "cluster.x-k8s.io"
CONTROLPLANE_API = "controlplane.cluster.x-k8s.io"
BOOTSTRAP_API = "bootstrap.cluster.x-k8s.io"
INFRA_API = "infrastructure.cluster.x-k8s.io"
LOCAL_INFRA_API = "infrastructure.lattice.dev"

# Served version of each infrastructure provider's kinds at the pinned releases.
INFRA_VERSIONS: Mapping[models.ProviderType, str] = {
    models.ProviderType.DOCKER: "v1beta2",
    models.ProviderType.LOCAL: "v1alpha1",
    models.ProviderType.AWS: "v1beta2",
    models.ProviderType.GCP: "v1beta1",
    models.ProviderType.AZURE: "v1beta1",
}
INFRA_KIND_PREFIX: Mapping[models.ProviderType, str] = {
    models.ProviderType.DOCKER: "Docker",
    models.ProviderType.LOCAL: "Local",
    models.ProviderType.AWS: "AWS",
    models.ProviderType.GCP: "GCP",
    models.ProviderType.AZURE: "Azure",
}

CLOUDS = frozenset({models.ProviderType.AWS, models.ProviderType.GCP, models.ProviderType.AZURE})


def infra_group(provider: models.ProviderType) -> str:
    return LOCAL_INFRA_API if provider is models.ProviderType.LOCAL else INFRA_API


LABEL_CLUSTER_NAME = "cluster.x-k8s.io/cluster-name"
LABEL_LATTICE_CLUSTER = "lattice.dev/cluster"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
LABEL_ROLE = "lattice.dev/role"

REGISTER_PATH = "/api/clusters/register"
BOOTSTRAP_DIR = "/etc/lattice"
REGISTRATION_ATTEMPTS = 12
REGISTRATION_MAX_DELAY_S = 60


PARENT_ENDPOINT_FORM = "HOST[:BOOTSTRAP_PORT[:GRPC_PORT]]"


@frozen
class ParentEndpoint:
    """Where a child registers (HTTPS webhook) and streams (gRPC) to: its cell.

    Written ``HOST:BOOTSTRAP_PORT:GRPC_PORT`` (``str``), an IPv6 host in brackets
    (``[::1]:8443:50051``), and read back by :meth:`parse`; see :mod:`lattice.domain.endpoint`.
    """

    host: str
    bootstrap_port: int = models.DEFAULT_BOOTSTRAP_PORT
    grpc_port: int = models.DEFAULT_GRPC_PORT

    @property
    def bootstrap(self) -> Endpoint:
        """The registration webhook."""
        return Endpoint(self.host, self.bootstrap_port)

    @property
    def grpc(self) -> Endpoint:
        """The agent stream: what an agent's ``--parent`` is."""
        return Endpoint(self.host, self.grpc_port)

    @property
    def register_url(self) -> str:
        return self.bootstrap.url("https", REGISTER_PATH)

    def __str__(self) -> str:
        return f"{self.bootstrap}:{self.grpc_port}"

    @classmethod
    def of(cls, parent: models.ParentConfig) -> ParentEndpoint:
        return cls(host=parent.host, bootstrap_port=parent.bootstrap_port, grpc_port=parent.grpc_port)

    @classmethod
    def parse(cls, text: str, field: str) -> ParentEndpoint | FieldError:
        """``HOST[:BOOTSTRAP_PORT[:GRPC_PORT]]`` (IPv6 as ``[ADDR]...``); the default ports
        where not given. ``field`` names the input in the error."""
        parsed = parse_host_ports(
            text,
            field,
            PARENT_ENDPOINT_FORM,
            required=0,
            defaults=(models.DEFAULT_BOOTSTRAP_PORT, models.DEFAULT_GRPC_PORT),
        )
        if isinstance(parsed, FieldError):
            return parsed
        host, (bootstrap_port, grpc_port) = parsed
        return cls(host, bootstrap_port, grpc_port)


@frozen
class CompileContext:
    """What the compiler needs beyond the spec.

    ``parent`` is the cell the new cluster registers with; ``None`` for a root cluster, whose
    agent the installer delivers through a ClusterResourceSet instead (spec: installation flow).
    The bootstrap token and the cell's CA bundle are never inlined: the kubeadm ``files``
    reference the Secret named by :func:`registration_secret_name`, created by the operator.
    """

    parent: ParentEndpoint | None


REGISTRATION_TOKEN_KEY = "token"  # noqa: S105 - the name of a Secret key
REGISTRATION_CA_KEY = "ca.crt"


def registration_secret_name(cluster_name: str) -> str:
    """Secret (in the CAPI namespace) with keys ``token`` and ``ca.crt`` for the child's kubeadm."""
    return f"{cluster_name}-lattice-registration"


def registration_secret(cluster_name: str, token: str, ca_bundle_pem: str) -> dict[str, Any]:
    """The Secret that the kubeadm ``files`` of a child with a cell read (see
    :func:`_kubeadm_config_spec`): its bootstrap token and the cell's CA bundle, under the keys
    those files name. The operator creates it once per child (``Registrations.ensure``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": registration_secret_name(cluster_name),
            "namespace": models.capi_namespace(cluster_name),
            "labels": {LABEL_CLUSTER_NAME: cluster_name, LABEL_MANAGED_BY: "lattice"},
        },
        "type": "Opaque",
        "data": {
            REGISTRATION_TOKEN_KEY: base64.b64encode(token.encode()).decode(),
            REGISTRATION_CA_KEY: base64.b64encode(ca_bundle_pem.encode()).decode(),
        },
    }


def control_plane_name(cluster_name: str) -> str:
    return f"{cluster_name}-control-plane"


def machine_deployment_name(cluster_name: str) -> str:
    return f"{cluster_name}-md-0"


def compile_cluster(valid: ValidCluster, context: CompileContext) -> tuple[Manifest, ...]:
    """All CAPI objects for one cluster, namespace first, in apply order."""
    name = valid.name
    namespace = models.capi_namespace(name)
    provider_type = valid.spec.provider.type
    group = infra_group(provider_type)
    infra_version = f"{group}/{INFRA_VERSIONS[provider_type]}"
    prefix = INFRA_KIND_PREFIX[provider_type]
    labels = _labels(name)

    def meta(obj_name: str, role: str) -> dict[str, Any]:
        return {
            "name": obj_name,
            "namespace": namespace,
            "labels": {**labels, LABEL_ROLE: role},
        }

    namespace_obj: Manifest = {
        "apiVersion": "v1",
        "kind": "Namespace",
        "metadata": {"name": namespace, "labels": labels},
    }
    cluster: Manifest = {
        "apiVersion": f"{CLUSTER_API}/v1beta2",
        "kind": "Cluster",
        "metadata": meta(name, "cluster"),
        "spec": {
            "clusterNetwork": _cluster_network(valid.spec.networking),
            "controlPlaneRef": {
                "apiGroup": CONTROLPLANE_API,
                "kind": "KubeadmControlPlane",
                "name": control_plane_name(name),
            },
            "infrastructureRef": {"apiGroup": group, "kind": f"{prefix}Cluster", "name": name},
        },
    }
    infra_cluster: Manifest = {
        "apiVersion": infra_version,
        "kind": f"{prefix}Cluster",
        "metadata": meta(name, "infrastructure"),
    }
    infra_spec = _infra_cluster_spec(valid, namespace)
    if infra_spec:
        infra_cluster["spec"] = infra_spec
    cp_template: Manifest = {
        "apiVersion": infra_version,
        "kind": f"{prefix}MachineTemplate",
        "metadata": meta(control_plane_name(name), "control-plane"),
        "spec": {"template": {"spec": _machine_spec(valid, control_plane=True)}},
    }
    kcp: Manifest = {
        "apiVersion": f"{CONTROLPLANE_API}/v1beta2",
        "kind": "KubeadmControlPlane",
        "metadata": meta(control_plane_name(name), "control-plane"),
        "spec": {
            "replicas": valid.spec.nodes.control_plane,
            "version": valid.kubernetes_version,
            "machineTemplate": {
                # Copied by KCP to each Machine, KubeadmConfig and infrastructure machine, so
                # the operator finds what the controllers report about them.
                "metadata": {"labels": _labels(name)},
                "spec": {
                    "infrastructureRef": {
                        "apiGroup": group,
                        "kind": f"{prefix}MachineTemplate",
                        "name": control_plane_name(name),
                    }
                },
            },
            "kubeadmConfigSpec": _kubeadm_config_spec(valid, context),
        },
    }
    md_name = machine_deployment_name(name)
    md_labels = {LABEL_CLUSTER_NAME: name, "cluster.x-k8s.io/deployment-name": md_name}
    worker_template: Manifest = {
        "apiVersion": infra_version,
        "kind": f"{prefix}MachineTemplate",
        "metadata": meta(md_name, "worker"),
        "spec": {"template": {"spec": _machine_spec(valid, control_plane=False)}},
    }
    config_template: Manifest = {
        "apiVersion": f"{BOOTSTRAP_API}/v1beta2",
        "kind": "KubeadmConfigTemplate",
        "metadata": meta(md_name, "worker"),
        "spec": {
            "template": {
                "spec": {
                    "joinConfiguration": {
                        "nodeRegistration": {"kubeletExtraArgs": _kubelet_args(valid, name)}
                    }
                }
            }
        },
    }
    machine_deployment: Manifest = {
        "apiVersion": f"{CLUSTER_API}/v1beta2",
        "kind": "MachineDeployment",
        "metadata": meta(md_name, "worker"),
        "spec": {
            "clusterName": name,
            "replicas": valid.spec.nodes.workers,
            "selector": {"matchLabels": md_labels},
            "template": {
                "metadata": {"labels": {**md_labels, **_labels(name)}},
                "spec": {
                    "clusterName": name,
                    "version": valid.kubernetes_version,
                    "bootstrap": {
                        "configRef": {
                            "apiGroup": BOOTSTRAP_API,
                            "kind": "KubeadmConfigTemplate",
                            "name": md_name,
                        }
                    },
                    "infrastructureRef": {
                        "apiGroup": group,
                        "kind": f"{prefix}MachineTemplate",
                        "name": md_name,
                    },
                },
            },
        },
    }
    return (
        namespace_obj,
        cluster,
        infra_cluster,
        cp_template,
        kcp,
        worker_template,
        config_template,
        machine_deployment,
    )


def compile_workload_manifests(valid: ValidCluster) -> tuple[Manifest, ...]:
    """Objects applied inside the new cluster by its agent (ApplyManifestsCommand), not by CAPI:
    the Cilium LB-IPAM pool of ``spec.networking.default`` and its L2 announcement policy."""
    return addons.network_objects(valid.name, valid.spec.networking)


# --------------------------------------------------------------------------- pieces


def _labels(name: str) -> dict[str, str]:
    return {
        LABEL_CLUSTER_NAME: name,
        LABEL_LATTICE_CLUSTER: name,
        LABEL_MANAGED_BY: "lattice",
    }


def _cluster_network(networking: models.NetworkingSpec | None) -> dict[str, Any]:
    pods = list(networking.pods) if networking and networking.pods else [models.DEFAULT_POD_CIDR]
    services = (
        list(networking.services) if networking and networking.services else [models.DEFAULT_SERVICE_CIDR]
    )
    return {"pods": {"cidrBlocks": pods}, "services": {"cidrBlocks": services}}


def _is_cloud(valid: ValidCluster) -> bool:
    return valid.spec.provider.type in CLOUDS


def _kubelet_args(valid: ValidCluster, name: str) -> list[dict[str, str]]:
    args = [{"name": "node-labels", "value": f"{LABEL_LATTICE_CLUSTER}={name}"}]
    if _is_cloud(valid):
        args.insert(0, {"name": "cloud-provider", "value": "external"})
    else:
        # CAPD nodes share the host's disks; kind's defaults keep kubelet from evicting pods.
        args.insert(0, {"name": "eviction-hard", "value": "nodefs.available<0%,imagefs.available<0%"})
    return args


def _kubeadm_config_spec(valid: ValidCluster, context: CompileContext) -> dict[str, Any]:
    name = valid.name
    cluster_configuration: dict[str, Any] = {"encryptionAlgorithm": "ECDSA-P256"}
    sans = valid.spec.provider.kubernetes.cert_sans
    if sans:
        cluster_configuration["apiServer"] = {"certSANs": list(sans)}
    spec: dict[str, Any] = {
        "clusterConfiguration": cluster_configuration,
        # Cilium replaces kube-proxy (lattice.domain.addons.cilium_values).
        "initConfiguration": {
            "nodeRegistration": {"kubeletExtraArgs": _kubelet_args(valid, name)},
            "skipPhases": ["addon/kube-proxy"],
        },
        "joinConfiguration": {"nodeRegistration": {"kubeletExtraArgs": _kubelet_args(valid, name)}},
    }
    if context.parent is not None:
        secret = registration_secret_name(name)
        spec["files"] = [
            {
                "path": f"{BOOTSTRAP_DIR}/bootstrap-token",
                "owner": "root:root",
                "permissions": "0600",
                "contentFrom": {"secret": {"name": secret, "key": REGISTRATION_TOKEN_KEY}},
            },
            {
                "path": f"{BOOTSTRAP_DIR}/ca.crt",
                "owner": "root:root",
                "permissions": "0644",
                "contentFrom": {"secret": {"name": secret, "key": REGISTRATION_CA_KEY}},
            },
        ]
        spec["postKubeadmCommands"] = [registration_script(name, context.parent)]
    return spec


def registration_script(cluster_name: str, parent: ParentEndpoint) -> str:
    """The POSIX shell run by kubeadm after init: register with the cell, install the agent.

    Outbound only. It generates the agent's ECDSA P-256 key on the node (the key never leaves
    it), sends a CSR with the single-use bootstrap token over HTTPS verified against the cell's
    CA bundle, retries with exponential backoff, then applies the returned agent payload
    (``Accept: application/yaml``) and stores the key in the ``lattice-agent-key`` Secret.
    ``LATTICE_BOOTSTRAP_DIR`` and ``KUBECONFIG`` may be overridden (the local provider does).
    """
    q = shlex.quote
    return "\n".join(
        [
            "set -eu",
            f'dir="${{LATTICE_BOOTSTRAP_DIR:-{BOOTSTRAP_DIR}}}"',
            'export KUBECONFIG="${KUBECONFIG:-/etc/kubernetes/admin.conf}"',
            f"cluster={q(cluster_name)}",
            f"url={q(parent.register_url)}",
            "umask 077",
            'if [ ! -s "$dir/agent.key" ]; then',
            "  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -sha256 \\",
            '    -keyout "$dir/agent.key" -out "$dir/agent.csr" -subj "/CN=$cluster" 2>/dev/null',
            "fi",
            'csr=$(awk \'{printf "%s\\\\n", $0}\' "$dir/agent.csr")',
            'printf \'{"clusterName":"%s","csr":"%s"}\' "$cluster" "$csr" > "$dir/register.json"',
            "delay=2",
            "attempt=1",
            "until curl --fail --silent --show-error --proto =https --tlsv1.2 --max-time 30 \\",
            '    --cacert "$dir/ca.crt" -H "Authorization: Bearer $(cat "$dir/bootstrap-token")" \\',
            "    -H 'Content-Type: application/json' -H 'Accept: application/yaml' \\",
            '    --data-binary @"$dir/register.json" -o "$dir/agent.yaml" "$url"; do',
            f'  if [ "$attempt" -ge {REGISTRATION_ATTEMPTS} ]; then',
            '    echo "lattice: registration with $url failed after $attempt attempts" >&2',
            "    exit 1",
            "  fi",
            '  echo "lattice: registration attempt $attempt failed; retrying in ${delay}s" >&2',
            '  sleep "$delay"',
            "  attempt=$((attempt + 1))",
            f'  delay=$((delay * 2)); if [ "$delay" -gt {REGISTRATION_MAX_DELAY_S} ]; then '
            f"delay={REGISTRATION_MAX_DELAY_S}; fi",
            "done",
            'kubectl apply --server-side --field-manager=lattice-bootstrap -f "$dir/agent.yaml"',
            "kubectl -n lattice-system create secret generic lattice-agent-key \\",
            '  --from-file=tls.key="$dir/agent.key" --dry-run=client -o yaml \\',
            "  | kubectl apply --server-side --field-manager=lattice-bootstrap -f -",
            'echo "lattice: $cluster registered with its cell; agent installed"',
        ]
    )


def _infra_cluster_spec(valid: ValidCluster, namespace: str) -> dict[str, Any]:
    provider = valid.provider
    if isinstance(provider, models.AwsProvider):
        spec: dict[str, Any] = {"region": provider.region, "sshKeyName": provider.ssh_key_name}
        if provider.vpc_id is not None:
            network: dict[str, Any] = {"vpc": {"id": provider.vpc_id}}
            if provider.subnet_ids:
                network["subnets"] = [{"id": subnet} for subnet in provider.subnet_ids]
            spec["network"] = network
        if provider.credentials_ref is not None:
            spec["identityRef"] = {
                "kind": "AWSClusterStaticIdentity",
                "name": provider.credentials_ref.name,
            }
        return spec
    if isinstance(provider, models.GcpProvider):
        spec = {"project": provider.project, "region": provider.region}
        if provider.network is not None:
            spec["network"] = {"name": provider.network}
        if provider.credentials_ref is not None:
            spec["credentialsRef"] = {
                "name": provider.credentials_ref.name,
                "namespace": provider.credentials_ref.namespace or namespace,
            }
        return spec
    if isinstance(provider, models.AzureProvider):
        spec = {
            "location": provider.location,
            "subscriptionID": provider.subscription_id,
            "resourceGroup": provider.resource_group or valid.name,
        }
        if provider.vnet_name is not None:
            spec["networkSpec"] = {
                "vnet": {"name": provider.vnet_name},
                "subnets": [
                    {"name": f"{valid.name}-control-plane", "role": "control-plane"},
                    {"name": f"{valid.name}-node", "role": "node"},
                ],
            }
        if provider.credentials_ref is not None:
            spec["identityRef"] = {
                "apiVersion": f"{INFRA_API}/v1beta1",
                "kind": "AzureClusterIdentity",
                "name": provider.credentials_ref.name,
                "namespace": provider.credentials_ref.namespace or namespace,
            }
        return spec
    # Docker and local: the providers' defaults need no settings; no empty spec.
    return {}


def _machine_spec(valid: ValidCluster, *, control_plane: bool) -> dict[str, Any]:
    provider = valid.provider
    if isinstance(provider, models.AwsProvider):
        spec: dict[str, Any] = {
            "instanceType": (
                provider.control_plane_instance_type if control_plane else provider.worker_instance_type
            ),
            "sshKeyName": provider.ssh_key_name,
            "iamInstanceProfile": (
                "control-plane.cluster-api-provider-aws.sigs.k8s.io"
                if control_plane
                else "nodes.cluster-api-provider-aws.sigs.k8s.io"
            ),
        }
        if provider.ami_id is not None:
            spec["ami"] = {"id": provider.ami_id}
        return spec
    if isinstance(provider, models.GcpProvider):
        spec = {
            "instanceType": (
                provider.control_plane_machine_type if control_plane else provider.worker_machine_type
            ),
        }
        if provider.image is not None:
            spec["image"] = provider.image
        if provider.subnet is not None:
            spec["subnet"] = provider.subnet
        return spec
    if isinstance(provider, models.AzureProvider):
        return {
            "vmSize": provider.control_plane_vm_size if control_plane else provider.worker_vm_size,
            "osDisk": {"osType": "Linux", "diskSizeGB": 128},
            # CAPZ wants the OpenSSH public key base64-encoded.
            "sshPublicKey": base64.b64encode(provider.ssh_public_key.encode()).decode(),
        }
    if isinstance(provider, models.LocalProvider):
        return {"bootTimeoutSeconds": provider.boot_timeout_seconds}
    image = provider.image or f"kindest/node:{valid.kubernetes_version}"
    return {"customImage": image}
