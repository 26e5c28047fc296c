"""The LatticeService CustomResourceDefinition, generated from :mod:`lattice.domain.services`.

Object-valued fields use :func:`lattice.domain.crds.schema_for`; the two Score-style maps
(``spec.service.ports`` and ``spec.resources``) become ``additionalProperties`` objects, which
``schema_for`` does not model. CEL rules are kept cheap on purpose: map keys have no length bound
in a structural schema, so rules that run string functions over keys could exceed the API
server's cost budget. Key syntax is therefore checked by :func:`services.validate_service` (and
reported in status), not by the CRD.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping
from typing import Any, Union, get_args, get_origin, get_type_hints

import attrs

from lattice.domain import crds, models, services
from lattice.domain.serde import wire_name

SchemaDict = dict[str, Any]

_RULES: dict[type, list[dict[str, str]]] = {
    services.ServiceExposure: [
        {
            "rule": "self.ports.all(a, self.ports.filter(b, self.ports[b].port == self.ports[a].port)"
            ".size() == 1)",
            "message": "port numbers must be unique",
        }
    ],
}

_MAP_RULES: dict[tuple[type, str], list[dict[str, str]]] = {
    (services.LatticeServiceSpec, "resources"): [
        {
            "rule": "!('*' in self) || self['*'].direction == 'inbound'",
            "message": "'*' means any caller and is only valid with direction inbound",
        }
    ],
}

_ROOT_RULES = [
    {
        "rule": "!has(self.spec.resources) || !(self.metadata.name in self.spec.resources) || "
        "self.spec.resources[self.metadata.name].direction == 'inbound'",
        "message": "a service cannot depend on itself",
    }
]


def _map_value(tp: Any) -> type | None:
    if get_origin(tp) in (Mapping, dict):
        args = get_args(tp)
        if len(args) == 2 and isinstance(args[1], type) and attrs.has(args[1]):
            return args[1]
    return None


def _has_maps(cls: type) -> bool:
    hints = get_type_hints(cls)
    for field in attrs.fields(cls):
        inner = _strip_optional(hints[field.name])
        if _map_value(inner) is not None:
            return True
        if isinstance(inner, type) and attrs.has(inner) and _has_maps(inner):
            return True
    return False


def _strip_optional(tp: Any) -> Any:
    if get_origin(tp) in (Union, types.UnionType):
        return next(arg for arg in get_args(tp) if arg is not type(None))
    return tp


def object_schema(cls: type) -> SchemaDict:
    """Like :func:`crds.schema_for`, but also for classes with map-of-object fields."""
    if not _has_maps(cls):
        schema = crds.schema_for(cls)
    else:
        hints = get_type_hints(cls)
        properties: dict[str, SchemaDict] = {}
        required: list[str] = []
        for field in attrs.fields(cls):
            name = wire_name(field.name)
            prop = _field_schema(cls, field.name, _strip_optional(hints[field.name]))
            meta = field.metadata
            if "description" in meta:
                prop["description"] = meta["description"]
            prop.update(meta.get("schema", {}))
            if isinstance(field.default, (str, int, bool)) and not isinstance(field.default, enum.Enum):
                prop["default"] = field.default
            properties[name] = prop
            if field.default is attrs.NOTHING:
                required.append(name)
        schema = {"type": "object", "properties": properties}
        if required:
            schema["required"] = required
    rules = _RULES.get(cls)
    if rules:
        schema["x-kubernetes-validations"] = [dict(rule) for rule in rules]
    return schema


def _field_schema(owner: type, name: str, tp: Any) -> SchemaDict:
    value = _map_value(tp)
    if value is not None:
        out: SchemaDict = {"type": "object", "additionalProperties": object_schema(value)}
        rules = _MAP_RULES.get((owner, name))
        if rules:
            out["x-kubernetes-validations"] = [dict(rule) for rule in rules]
        return out
    if isinstance(tp, type) and attrs.has(tp):
        return object_schema(tp)
    if tp is str:
        return {"type": "string"}
    raise TypeError(f"no schema mapping for {tp!r}")  # pragma: no cover - programming error


def lattice_service_crd() -> SchemaDict:
    spec = object_schema(services.LatticeServiceSpec)
    status = object_schema(services.LatticeServiceStatus)
    status.pop("required", None)
    root: SchemaDict = {
        "type": "object",
        "description": "A workload (Score-style) whose dependencies and allowed callers Lattice "
        "resolves within its cluster and, through the parent cell's service catalog, across "
        "clusters.",
        "required": ["spec"],
        "properties": {
            "apiVersion": {"type": "string"},
            "kind": {"type": "string"},
            "metadata": {"type": "object"},
            "spec": {**spec, "description": "Desired state of the service."},
            "status": {**status, "description": "Observed state, written by Lattice."},
        },
        "x-kubernetes-validations": [dict(rule) for rule in _ROOT_RULES],
    }
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": f"{services.PLURAL}.{models.GROUP}",
            "labels": {"app.kubernetes.io/part-of": "lattice"},
        },
        "spec": {
            "group": models.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": services.KIND,
                "listKind": f"{services.KIND}List",
                "plural": services.PLURAL,
                "singular": services.SINGULAR,
                "shortNames": list(services.SHORT_NAMES),
                "categories": ["lattice"],
            },
            "versions": [
                {
                    "name": models.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Environment", "type": "string", "jsonPath": ".spec.environment"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {
                            "name": "Message",
                            "type": "string",
                            "jsonPath": ".status.message",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {"openAPIV3Schema": root},
                }
            ],
        },
    }
