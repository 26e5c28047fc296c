"""OpenAPI v3 schemas for CRDs, generated from the attrs classes the code uses: one builder for
every Lattice CRD (:mod:`lattice.domain.crds`, :mod:`lattice.domain.lattice_service_crd`).

A field's type gives its schema: ``X | None`` is ``X``; ``tuple[X, ...]`` an array of ``X``; an
Enum a string enum; ``bool``, ``int`` (int32) and ``str`` themselves; an attrs class an object
(recursively); ``Mapping[str, C]`` of an attrs class ``C`` an object with ``additionalProperties``
(a Score-style map). The field's metadata adds its ``description`` and ``schema`` constraints
(``minLength``/``maxLength``/``pattern`` on an array go to its items); a default is kept. CEL
``x-kubernetes-validations`` come from :class:`SchemaRules`: per class, and per map field.
"""

from __future__ import annotations

import enum
import types
from collections.abc import Mapping, Sequence
from typing import Any, Union, get_args, get_origin, get_type_hints

import attrs
from attrs import field, frozen

from lattice.domain.serde import wire_name

SchemaDict = dict[str, Any]
Rule = Mapping[str, str]

_ITEM_KEYS = ("minLength", "maxLength", "pattern")


@frozen
class SchemaRules:
    """CEL rules: ``objects`` on the schema node of a class, ``maps`` on a map-valued field
    (keyed by the class that declares it and the field's name)."""

    objects: Mapping[type, Sequence[Rule]] = field(factory=dict)
    maps: Mapping[tuple[type, str], Sequence[Rule]] = field(factory=dict)


NO_RULES = SchemaRules()


def schema_for(cls: type, rules: SchemaRules = NO_RULES) -> SchemaDict:
    """The OpenAPI v3 schema of the attrs class ``cls``."""
    hints = get_type_hints(cls)
    properties: dict[str, SchemaDict] = {}
    required: list[str] = []
    for attribute in attrs.fields(cls):
        prop = _schema_for_type(hints[attribute.name], rules, (cls, attribute.name))
        meta = attribute.metadata
        if "description" in meta:
            prop["description"] = meta["description"]
        for key, value in meta.get("schema", {}).items():
            target = prop["items"] if key in _ITEM_KEYS and prop.get("type") == "array" else prop
            target[key] = value
        default = attribute.default
        if default is attrs.NOTHING:  # required (NOTHING is itself an Enum member: check first)
            required.append(wire_name(attribute.name))
        elif isinstance(default, enum.Enum):
            prop["default"] = default.value
        elif isinstance(default, (int, bool, str)):
            prop["default"] = default
        properties[wire_name(attribute.name)] = prop
    schema: SchemaDict = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    own = rules.objects.get(cls)
    if own:
        schema["x-kubernetes-validations"] = [dict(rule) for rule in own]
    return schema


def _schema_for_type(tp: Any, rules: SchemaRules, owner: tuple[type, str]) -> SchemaDict:
    origin = get_origin(tp)
    if origin in (Union, types.UnionType):
        inner = [arg for arg in get_args(tp) if arg is not type(None)]
        return _schema_for_type(inner[0], rules, owner)
    if origin in (Mapping, dict):
        value = get_args(tp)[1]
        out: SchemaDict = {"type": "object", "additionalProperties": _schema_for_type(value, rules, owner)}
        map_rules = rules.maps.get(owner)
        if map_rules:
            out["x-kubernetes-validations"] = [dict(rule) for rule in map_rules]
        return out
    if origin is tuple:
        return {"type": "array", "items": _schema_for_type(get_args(tp)[0], rules, owner)}
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return {"type": "string", "enum": [member.value for member in tp]}
    if tp is bool:
        return {"type": "boolean"}
    if tp is int:
        return {"type": "integer", "format": "int32"}
    if tp is str:
        return {"type": "string"}
    if isinstance(tp, type) and attrs.has(tp):
        return schema_for(tp, rules)
    raise TypeError(f"no schema mapping for {tp!r}")  # pragma: no cover - programming error
