"""CustomResourceDefinitions generated from the same attrs models the code uses.

The OpenAPI v3 schema is structural (every field typed), carries each field's description (so
``kubectl explain`` helps) and its constraints (enums, bounds, patterns), and adds CEL
``x-kubernetes-validations`` for cross-field and immutability rules. Validation in
:mod:`lattice.domain.validation` says the same things with more detail; the CRD is the first line
of defence for anyone writing to the API directly.
"""

from __future__ import annotations

import enum
import types
from typing import Any, Union, get_args, get_origin, get_type_hints

import attrs

from lattice.domain import models
from lattice.domain.serde import wire_name

SchemaDict = dict[str, Any]

# CEL rules, keyed by the attrs class whose schema node they sit on.
_RULES: dict[type, list[dict[str, str]]] = {
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

_CLUSTER_ROOT_RULES = [
    {
        "rule": "!has(self.spec.cellRef) || self.spec.cellRef != self.metadata.name",
        "message": "a cluster cannot be its own cell",
    }
]


def schema_for(cls: type) -> SchemaDict:
    """OpenAPI v3 schema of an attrs class, with descriptions, constraints and CEL rules."""
    hints = get_type_hints(cls)
    properties: dict[str, SchemaDict] = {}
    required: list[str] = []
    for field in attrs.fields(cls):
        name = wire_name(field.name)
        prop = _schema_for_type(hints[field.name])
        meta = field.metadata
        if "description" in meta:
            prop["description"] = meta["description"]
        for key, value in meta.get("schema", {}).items():
            target = (
                prop["items"]
                if key in ("minLength", "maxLength", "pattern") and prop.get("type") == "array"
                else prop
            )
            target[key] = value
        default = field.default
        if isinstance(default, enum.Enum):
            prop["default"] = default.value
        elif isinstance(default, (int, bool, str)) and not isinstance(default, enum.Enum):
            prop["default"] = default
        properties[name] = prop
        if default is attrs.NOTHING:
            required.append(name)
    schema: SchemaDict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    rules = _RULES.get(cls)
    if rules:
        schema["x-kubernetes-validations"] = [dict(rule) for rule in rules]
    return schema


def _schema_for_type(tp: Any) -> SchemaDict:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [arg for arg in get_args(tp) if arg is not type(None)]
        return _schema_for_type(inner[0])
    if origin is tuple:
        return {"type": "array", "items": _schema_for_type(get_args(tp)[0])}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [member.value for member in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int32"}
    if tp is str:
        return {"type": "string"}
    if isinstance(tp, type) and attrs.has(tp):
        return schema_for(tp)
    raise TypeError(f"no schema mapping for {tp!r}")  # pragma: no cover - programming error


def lattice_cluster_crd() -> SchemaDict:
    spec = schema_for(models.LatticeClusterSpec)
    status = schema_for(models.LatticeClusterStatus)
    status.pop("required", None)
    root: SchemaDict = {
        "type": "object",
        "description": "A Kubernetes cluster that Lattice provisions with Cluster API and then "
        "makes self-managing by pivoting its CAPI objects into itself.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {**spec, "description": "Desired state of the cluster."},
            "status": {**status, "description": "Observed state, written by Lattice."},
        },
        "x-kubernetes-validations": _CLUSTER_ROOT_RULES,
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{models.PLURAL}.{models.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "lattice"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Cluster",
            "names": {
                "kind": models.KIND,
                "listKind": f"{models.KIND}List",
                "plural": models.PLURAL,
                "singular": "latticecluster",
                "shortNames": ["lc"],
                "categories": ["lattice", "all-clusters"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": _printer_columns(),
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }


def _printer_columns() -> list[SchemaDict]:
    return [
        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
        {"name": "Provider", "type": "string", "jsonPath": ".spec.provider.type"},
        {"name": "Version", "type": "string", "jsonPath": ".spec.provider.kubernetes.version"},
        {"name": "Control-Plane", "type": "integer", "jsonPath": ".spec.nodes.controlPlane"},
        {"name": "Workers", "type": "integer", "jsonPath": ".spec.nodes.workers"},
        {"name": "Cell", "type": "string", "jsonPath": ".spec.cellRef"},
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
    return [lattice_cluster_crd()]
