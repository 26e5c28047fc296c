"""Manifests that install the Lattice operator into a cluster (``lattice deploy-manifests``).

Least privilege: the ClusterRole names each resource and verb the operator uses; the Lease
lives in a namespaced Role. The Deployment runs as non-root with a read-only root filesystem.

The Helm chart ``charts/lattice`` renders the same objects: :class:`OperatorInstall` holds what
varies between installations and gives both its manifests and the chart's values for it
(``tests/integration/test_helm_chart.py`` checks they agree).
"""

from __future__ import annotations

from typing import Any

import attrs
from attrs import frozen

from lattice import __version__
from lattice.domain import capi, models
from lattice.domain.cluster_reconcile import FIELD_MANAGER
from lattice.domain.operator_command import OperatorOptions, operator_argv

NAMESPACE = "lattice-system"
IMAGE_REPOSITORY = "ghcr.io/lattice-dev/lattice"
DEFAULT_IMAGE = f"{IMAGE_REPOSITORY}:{__version__}"
CHART_RELEASE = "lattice"  # the release name `lattice install --via helm` renders the chart with
STATE_DIR = "/var/lib/lattice"  # a cell's CA and pivot work files
SERVICE_ACCOUNT = "lattice-operator"
LABELS = {"app.kubernetes.io/name": "lattice-operator", "app.kubernetes.io/part-of": "lattice"}

Manifest = dict[str, Any]


POD_IP_FIELD = {"fieldPath": "status.podIP"}


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def cluster_role_rules() -> list[dict[str, Any]]:
    crud = ["get", "list", "watch", "create", "patch", "update", "delete"]
    return [
        _rule([models.GROUP], [models.PLURAL], ["get", "list", "watch", "patch", "update"]),
        _rule([models.GROUP], [f"{models.PLURAL}/status"], ["get", "patch", "update"]),
        _rule([models.GROUP], [f"{models.PLURAL}/finalizers"], ["update"]),
        _rule([capi.CLUSTER_API], ["clusters", "machinedeployments", "machines"], crud),
        _rule([capi.CONTROLPLANE_API], ["kubeadmcontrolplanes"], crud),
        _rule([capi.BOOTSTRAP_API], ["kubeadmconfigtemplates"], crud),
        # read only: what CABPK and the local provider report per machine (capi_reports)
        _rule([capi.CLUSTER_API], ["machinesets"], ["get", "list", "watch"]),
        _rule([capi.BOOTSTRAP_API], ["kubeadmconfigs"], ["get", "list", "watch"]),
        _rule([capi.LOCAL_INFRA_API], ["localmachines"], ["get", "list", "watch"]),
        *(
            _rule(
                [group],
                sorted(
                    f"{capi.INFRA_KIND_PREFIX[provider].lower()}{suffix}"
                    for provider in capi.INFRA_KIND_PREFIX
                    if capi.infra_group(provider) == group
                    for suffix in ("clusters", "machinetemplates")
                ),
                crud,
            )
            for group in (capi.INFRA_API, capi.LOCAL_INFRA_API)
        ),
        _rule([""], ["namespaces"], ["get", "list", "watch", "create", "patch", "delete"]),
        # the token store replaces its Secret (a write conditional on its resourceVersion)
        _rule([""], ["secrets"], ["get", "create", "patch", "update", "delete"]),
        # agent certificate revocations (lattice.adapters.revocations)
        _rule([""], ["configmaps"], ["get", "create", "patch"]),
        _rule([""], ["events"], ["create", "patch"]),
        # a cell exposes its webhook and gRPC ports (lattice.domain.addons.cell_service)
        _rule([""], ["services"], ["get", "create", "patch"]),
        # the Kubernetes API proxy authenticates and authorizes its callers (docs/api-proxy.md)
        _rule(["authentication.k8s.io"], ["tokenreviews"], ["create"]),
        _rule(["authorization.k8s.io"], ["subjectaccessreviews"], ["create"]),
    ]


def operator_manifests(
    image: str,
    *,
    cluster_name: str | None = None,
    replicas: int = 2,
    options: OperatorOptions | None = None,
    state_volume: bool = False,
) -> list[Manifest]:
    """``options``: the operator's flags beyond ``--health-host`` and ``--cluster-name``, which
    the Deployment sets itself (see :class:`OperatorInstall`)."""
    # Probes come from the kubelet over the pod network, so the probe server binds all interfaces.
    probes = "0.0.0.0"  # noqa: S104
    args = operator_argv(
        attrs.evolve(options or OperatorOptions(), health_host=probes, cluster_name=cluster_name or None)
    )
    meta = {"namespace": NAMESPACE, "labels": LABELS}
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE, "labels": LABELS}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": SERVICE_ACCOUNT, **meta}},
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": FIELD_MANAGER, "labels": LABELS},
            "rules": cluster_role_rules(),
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": FIELD_MANAGER, "labels": LABELS},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": FIELD_MANAGER,
            },
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "Role",
            "metadata": {"name": "lattice-leader-election", **meta},
            "rules": [_rule(["coordination.k8s.io"], ["leases"], ["get", "create", "update"])],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": {"name": "lattice-leader-election", **meta},
            "roleRef": {
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "lattice-leader-election",
            },
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "lattice-operator", **meta},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": {"app.kubernetes.io/name": "lattice-operator"}},
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {
                        "serviceAccountName": SERVICE_ACCOUNT,
                        "securityContext": {
                            "runAsNonRoot": True,
                            "seccompProfile": {"type": "RuntimeDefault"},
                        },
                        "containers": [
                            {
                                "name": "operator",
                                "image": image,
                                "args": args,
                                # a cell behind its LoadBalancer Service binds the pod's address
                                "env": [{"name": "POD_IP", "valueFrom": {"fieldRef": POD_IP_FIELD}}],
                                "ports": [{"name": "probes", "containerPort": 8081}],
                                "livenessProbe": {"httpGet": {"path": "/healthz", "port": "probes"}},
                                "readinessProbe": {"httpGet": {"path": "/readyz", "port": "probes"}},
                                "resources": {
                                    "requests": {"cpu": "100m", "memory": "128Mi"},
                                    "limits": {"memory": "512Mi"},
                                },
                                "securityContext": {
                                    "allowPrivilegeEscalation": False,
                                    "readOnlyRootFilesystem": True,
                                    "capabilities": {"drop": ["ALL"]},
                                },
                                **(
                                    {"volumeMounts": [{"name": "state", "mountPath": STATE_DIR}]}
                                    if state_volume
                                    else {}
                                ),
                            }
                        ],
                        **({"volumes": [{"name": "state", "emptyDir": {}}]} if state_volume else {}),
                    },
                },
            },
        },
    ]


def split_image(image: str) -> tuple[str, str, str]:
    """``repository[:tag][@digest]`` as (repository, tag, digest), each part empty when absent.

    A reference with neither tag nor digest is refused: the chart would tag it with its
    appVersion, and an image that is not pinned is not reproducible anyway."""
    name, _, digest = image.partition("@")
    last = name.rsplit("/", 1)[-1]  # a registry's port (host:5000/...) is not a tag
    repository, tag = (name.rsplit(":", 1)) if ":" in last else (name, "")
    if not repository or not (tag or digest):
        raise ValueError(f"image {image!r}: name a tag or a digest (repository:tag or repository@sha256:...)")
    return repository, tag, digest


# The flags an OperatorInstall's Deployment sets itself (--health-host, --cluster-name), or that
# the chart would render before --cluster-name (--kubeconfig, --health-port from metrics.port).
_DEPLOYMENT_SETS = ("kubeconfig", "health_host", "health_port", "cluster_name")


@frozen
class OperatorInstall:
    """What varies between installations of the operator. :meth:`manifests` renders it with
    :func:`operator_manifests`, :meth:`chart_values` gives the values with which the chart
    ``charts/lattice`` renders the same objects."""

    image: str = DEFAULT_IMAGE
    cluster_name: str | None = None
    replicas: int = 2
    options: OperatorOptions = attrs.field(default=OperatorOptions())
    """The operator's other flags (a child's cell and local-provider flags). Those the Deployment
    sets itself, and those the chart places before ``--cluster-name``, are refused here."""
    state_volume: bool = False

    @options.validator
    def _check_options(self, _: object, options: OperatorOptions) -> None:
        taken = [name for name in _DEPLOYMENT_SETS if getattr(options, name) is not None]
        if taken:
            raise ValueError(f"OperatorInstall.options: {', '.join(taken)} are set by the install itself")

    def manifests(self) -> list[Manifest]:
        return operator_manifests(
            self.image,
            cluster_name=self.cluster_name,
            replicas=self.replicas,
            options=self.options,
            state_volume=self.state_volume,
        )

    def chart_values(self) -> dict[str, Any]:
        """Values for ``charts/lattice`` (every other value keeps its default)."""
        repository, tag, digest = split_image(self.image)
        return {
            "image": {"repository": repository, "tag": tag, "digest": digest},
            "clusterName": self.cluster_name or "",
            "replicas": self.replicas,
            # the chart places extraArgs right after --cluster-name, where operator_argv puts them
            "extraArgs": operator_argv(self.options)[1:],
            "stateVolume": self.state_volume,
        }


def capi_managers_rbac() -> list[Manifest]:
    """What a child's operator needs to run the Cluster API managers against its own cluster
    (``--capi-managers``, the local stand-in for their Deployments): everything, since the
    managers run with the operator's identity here. Real installations run each manager with
    its own ServiceAccount and the ClusterRole its provider ships."""
    name = "lattice-capi-managers"
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": name, "labels": LABELS},
            "rules": [
                _rule(["*"], ["*"], ["*"]),
                {"nonResourceURLs": ["*"], "verbs": ["*"]},
            ],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": {"name": name, "labels": LABELS},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": NAMESPACE}],
        },
    ]
