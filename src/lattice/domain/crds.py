"""CustomResourceDefinitions generated from the same attrs models the code uses.

The OpenAPI v3 schema is structural (every field typed), carries each field's description (so
``kubectl explain`` helps) and its constraints (enums, bounds, patterns), and adds CEL
``x-kubernetes-validations`` for cross-field and immutability rules. Validation in
:mod:`lattice.domain.validation` says the same things with more detail; the CRD is the first line
of defence for anyone writing to the API directly.
"""

from __future__ import annotations

from lattice.domain import crd_schema, lattice_service_crd, local_provider, models, validation
from lattice.domain.crd_schema import SchemaDict

# CEL rules, keyed by the attrs class whose schema node they sit on.
_OLD = "semver(oldSelf.version, true)"
_NEW = "semver(self.version, true)"
_BOTH = "!isSemver(self.version, true) || !isSemver(oldSelf.version, true) || "
_RULES: dict[type, list[dict[str, str]]] = {
    models.KubernetesSpec: [
        {
            "rule": f"!isSemver(self.version, true) || ({_NEW}.major() == 1 && "
            f"{_NEW}.minor() >= {validation.MIN_MINOR} && {_NEW}.minor() <= {validation.MAX_MINOR})",
            "messageExpression": f"'version ' + self.version + ' is outside the supported range "
            f"1.{validation.MIN_MINOR} to 1.{validation.MAX_MINOR}'",
            "fieldPath": ".version",
        },
        {
            "rule": f"{_BOTH}{_NEW}.compareTo({_OLD}) >= 0",
            "messageExpression": "'downgrading from ' + oldSelf.version + ' to ' + self.version + "
            "' is not supported'",
            "fieldPath": ".version",
        },
        {
            "rule": f"{_BOTH}{_NEW}.major() != {_OLD}.major() || {_NEW}.minor() <= {_OLD}.minor() + 1",
            "messageExpression": "'from ' + oldSelf.version + ' to ' + self.version + "
            "' skips a minor version: upgrade one minor version at a time'",
            "fieldPath": ".version",
        },
    ],
    models.ProviderSpec: [
        {"rule": "self.type == oldSelf.type", "message": "provider type is immutable"},
        {
            "rule": "self.type != 'aws' || has(self.aws)",
            "message": "provider.aws is required when type is aws",
        },
        {
            "rule": "self.type != 'gcp' || has(self.gcp)",
            "message": "provider.gcp is required when type is gcp",
        },
        {
            "rule": "self.type != 'azure' || has(self.azure)",
            "message": "provider.azure is required when type is azure",
        },
    ],
    models.NodesSpec: [
        {
            "rule": "self.controlPlane % 2 == 1",
            "message": "controlPlane must be odd (1, 3, 5, ...) so etcd keeps quorum",
        }
    ],
    models.LatticeClusterSpec: [
        {
            "rule": "has(self.cellRef) || has(self.parentConfig)",
            "message": "set cellRef (the cell that provisions this cluster) or parentConfig (a root cell)",
        },
        {
            "rule": "has(self.cellRef) == has(oldSelf.cellRef) && "
            "(!has(self.cellRef) || self.cellRef == oldSelf.cellRef)",
            "message": "cellRef is immutable: a cluster cannot change its parent",
        },
    ],
    models.DiscoverySpec: [
        {
            "rule": "!self.enabled || has(self.baseDomain)",
            "message": "baseDomain is required when discovery is enabled",
        }
    ],
}

_SCHEMA_RULES = crd_schema.SchemaRules(objects=_RULES)

_CLUSTER_ROOT_RULES = [
    {
        "rule": "!has(self.spec.cellRef) || self.spec.cellRef != self.metadata.name",
        "message": "a cluster cannot be its own cell",
    }
]


def make_crd(
    *,
    group: str,
    version: str,
    kind: str,
    plural: str,
    scope: str,
    spec_cls: type,
    status_cls: type | None,
    description: str,
    labels: dict[str, str],
    short_names: list[str] | None = None,
    categories: list[str] | None = None,
    printer_columns: list[SchemaDict] | None = None,
    root_rules: list[dict[str, str]] | None = None,
    spec_required: bool = True,
) -> SchemaDict:
    """A CRD whose schema is generated from attrs classes (:func:`crd_schema.schema_for`)."""
    properties: SchemaDict = {
        "apiVersion": {"type": "string"},
        "kind": {"type": "string"},
        "metadata": {"type": "object"},
        "spec": {**crd_schema.schema_for(spec_cls, _SCHEMA_RULES), "description": "Desired state."},
    }
    if status_cls is not None:
        status = crd_schema.schema_for(status_cls, _SCHEMA_RULES)
        status.pop("required", None)
        properties["status"] = {**status, "description": "Observed state."}
    root: SchemaDict = {"type": "object", "description": description, "properties": properties}
    if spec_required:
        root["required"] = ["spec"]
    if root_rules:
        root["x-kubernetes-validations"] = root_rules
    names: SchemaDict = {
        "kind": kind,
        "listKind": f"{kind}List",
        "plural": plural,
        "singular": kind.lower(),
    }
    if short_names:
        names["shortNames"] = short_names
    if categories:
        names["categories"] = categories
    served: SchemaDict = {"name": version, "served": True, "storage": True}
    if status_cls is not None:
        served["subresources"] = {"status": {}}
    if printer_columns:
        served["additionalPrinterColumns"] = printer_columns
    served["schema"] = {"openAPIV3Schema": root}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{group}", "labels": labels},
        "spec": {"group": group, "scope": scope, "names": names, "versions": [served]},
    }


def lattice_cluster_crd() -> SchemaDict:
    crd = make_crd(
        group=models.GROUP,
        version=models.VERSION,
        kind=models.KIND,
        plural=models.PLURAL,
        scope="Cluster",
        spec_cls=models.LatticeClusterSpec,
        status_cls=models.LatticeClusterStatus,
        description="A Kubernetes cluster that Lattice provisions with Cluster API and then "
        "makes self-managing by pivoting its CAPI objects into itself.",
        labels={"app.kubernetes.io/part-of": "lattice"},
        short_names=["lc"],
        categories=["lattice", "all-clusters"],
        printer_columns=_printer_columns(),
        root_rules=_CLUSTER_ROOT_RULES,
    )
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    schema["properties"]["spec"]["description"] = "Desired state of the cluster."
    schema["properties"]["status"]["description"] = "Observed state, written by Lattice."
    return crd


def _local_crd(
    kind: str, spec_cls: type, status_cls: type | None, description: str, columns: list[SchemaDict]
) -> SchemaDict:
    return make_crd(
        group=local_provider.GROUP,
        version=local_provider.VERSION,
        kind=kind,
        plural=f"{kind.lower()}s",
        scope="Namespaced",
        spec_cls=spec_cls,
        status_cls=status_cls,
        description=description,
        labels=local_provider.PROVIDER_LABELS,
        categories=["cluster-api", "lattice"],
        printer_columns=[
            *columns,
            {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
        ],
        spec_required=False,
    )


def local_provider_crds() -> list[SchemaDict]:
    """LocalCluster, LocalMachineTemplate, LocalMachine: the local infrastructure provider."""
    lp = local_provider
    provisioned = {"name": "Provisioned", "type": "boolean", "jsonPath": ".status.initialization.provisioned"}
    endpoint = {"name": "Endpoint", "type": "string", "jsonPath": ".spec.controlPlaneEndpoint.host"}
    return [
        _local_crd(
            "LocalCluster",
            lp.LocalClusterSpec,
            lp.LocalClusterStatus,
            "Infrastructure of a cluster whose control plane runs as local processes.",
            [provisioned, endpoint],
        ),
        _local_crd(
            "LocalMachineTemplate", lp.LocalMachineTemplateSpec, None, "Template of LocalMachines.", []
        ),
        _local_crd(
            "LocalMachine",
            lp.LocalMachineSpec,
            lp.LocalMachineStatus,
            "A machine of the local provider.",
            [provisioned],
        ),
    ]


def _printer_columns() -> list[SchemaDict]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Provider", "type": "string", "jsonPath": ".spec.provider.type"},
        {"name": "Version", "type": "string", "jsonPath": ".spec.provider.kubernetes.version"},
        {"name": "Control-Plane", "type": "integer", "jsonPath": ".spec.nodes.controlPlane"},
        {"name": "Workers", "type": "integer", "jsonPath": ".spec.nodes.workers"},
        {"name": "Cell", "type": "string", "jsonPath": ".spec.cellRef"},
        {"name": "Nodes", "type": "string", "jsonPath": ".status.agent.nodes", "priority": 1},
        {
            "name": "Message",
            "type": "string",
            "jsonPath": ".status.message",
            "priority": 1,
        },
        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
    ]


def all_crds() -> list[SchemaDict]:
    """Every Lattice CRD, in install order."""
    return [lattice_cluster_crd(), *local_provider_crds(), lattice_service_crd.lattice_service_crd()]
