"""Wire conversion for LatticeCluster: camelCase Kubernetes dicts ⇄ frozen attrs values.

One private cattrs ``Converter`` (never the global one), built by :func:`make_converter`.
Structuring is strict — a string is not an int, ``"true"`` is not a bool — and unknown spec keys
are rejected, so a typo such as ``contolPlane`` is reported instead of silently dropped. Errors
are collected for the whole object and returned as :class:`FieldError` values with wire paths.

Status is read leniently about unknown keys (a newer operator may have written more), but still
strictly about types.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, get_args, get_origin

import attrs
import cattrs
from cattrs.errors import (
    ClassValidationError,
    ForbiddenExtraKeysError,
    IterableValidationError,
)
from cattrs.gen import make_dict_structure_fn, make_dict_unstructure_fn, override

from lattice.domain import models
from lattice.domain.errors import FieldError, PathSegment

T = TypeVar("T")

# snake_case names whose wire spelling is not plain camelCase.
_SPECIAL_NAMES = {"cert_sans": "certSANs", "provider_id": "providerID"}

# Classes whose unknown keys are ignored rather than rejected. Not Condition: a
# metav1.Condition has exactly its six fields, and the CRD schemas refuse any other (the fuzz
# suite's CRD agreement test found the operator accepting a condition the apiserver refused).
_LENIENT: frozenset[type] = frozenset(
    {
        models.ObjectMeta,
        models.LatticeClusterStatus,
        models.PivotStatus,
        models.UnpivotStatus,
        models.AgentStatus,
    }
)


def wire_name(name: str) -> str:
    """``control_plane`` → ``controlPlane``; ``cert_sans`` → ``certSANs``."""
    if name in _SPECIAL_NAMES:
        return _SPECIAL_NAMES[name]
    head, *rest = name.split("_")
    return head + "".join(part[:1].upper() + part[1:] for part in rest)


class WireTypeError(ValueError):
    """A value of the wrong JSON type; the message is meant for a person."""


def _type_name(value: object) -> str:
    if value is None:
        return "null"
    return {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        dict: "object",
    }.get(type(value), type(value).__name__)


def _structure_str(value: object, _: type) -> str:
    if not isinstance(value, str):
        raise WireTypeError(f"must be a string, got {_type_name(value)}")
    return value


def _structure_int(value: object, _: type) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise WireTypeError(f"must be an integer, got {_type_name(value)}")
    return value


def _structure_bool(value: object, _: type) -> bool:
    if not isinstance(value, bool):
        raise WireTypeError(f"must be true or false, got {_type_name(value)}")
    return value


def _structure_enum(value: object, cls: type[enum.StrEnum]) -> enum.StrEnum:
    allowed = [member.value for member in cls]
    if not isinstance(value, str) or value not in allowed:
        raise WireTypeError(f"must be one of {', '.join(allowed)}; got {value!r}")
    return cls(value)


def _structure_str_map(value: object, _: type) -> Mapping[str, str]:
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in value.items()
    ):
        raise WireTypeError("must be a map of strings to strings")
    return dict(value)


def _is_attrs_class(cls: object) -> bool:
    return isinstance(cls, type) and attrs.has(cls)


def _renames(cls: type) -> dict[str, Any]:
    return {a.name: override(rename=wire_name(a.name)) for a in attrs.fields(cls)}


def _is_homogeneous_tuple(cls: Any) -> bool:
    origin: Any = get_origin(cls)
    return origin is tuple and len(get_args(cls)) == 2


def _is_tuple(cls: Any) -> bool:
    origin: Any = get_origin(cls)
    return origin is tuple


def _compact_unstructure(converter: cattrs.Converter, cls: type) -> Callable[[Any], Any]:
    attrs.resolve_types(cls)
    fn: Callable[[Any], dict[str, Any]] = make_dict_unstructure_fn(cls, converter, **_renames(cls))

    def unstructure(obj: Any) -> Any:
        out = fn(obj)
        # Never emit an empty object or list: Kubernetes schemas with minProperties/minItems
        # reject them, and they mean nothing anyway.
        return {k: v for k, v in out.items() if v not in ({}, [], None)}

    return unstructure


def make_converter() -> cattrs.Converter:
    """A converter for every class in :mod:`lattice.domain.models` (and any attrs class)."""
    converter = cattrs.Converter(detailed_validation=True, forbid_extra_keys=True)
    # Singledispatch picks the most specific class: StrEnum before str, bool before int.
    converter.register_structure_hook(str, _structure_str)
    converter.register_structure_hook(int, _structure_int)
    converter.register_structure_hook(bool, _structure_bool)
    converter.register_structure_hook(enum.StrEnum, _structure_enum)
    converter.register_structure_hook_func(lambda cls: cls == Mapping[str, str], _structure_str_map)
    converter.register_unstructure_hook(enum.StrEnum, lambda member: member.value)

    def _tuple_hook(value: object, cls: Any) -> tuple[Any, ...]:
        if not isinstance(value, list):
            raise WireTypeError(f"must be a list, got {_type_name(value)}")
        (item_type, _ellipsis) = get_args(cls)
        items: list[Any] = []
        errors: list[Exception] = []
        for index, item in enumerate(value):
            try:
                items.append(converter.structure(item, item_type))
            except Exception as exc:
                exc.__notes__ = [*getattr(exc, "__notes__", []), f"@ index {index}"]
                errors.append(_IndexedError(index, exc))
        if errors:
            raise IterableValidationError("While structuring a list", errors, cls)
        return tuple(items)

    converter.register_structure_hook_func(_is_homogeneous_tuple, _tuple_hook)
    converter.register_unstructure_hook_func(
        _is_tuple, lambda value: [converter.unstructure(v) for v in value]
    )

    def structure_factory(cls: type) -> Callable[[Any, type], Any]:
        attrs.resolve_types(cls)
        fn: Callable[[Any, type], Any] = make_dict_structure_fn(
            cls,
            converter,
            _cattrs_forbid_extra_keys=cls not in _LENIENT,
            _cattrs_detailed_validation=True,
            **_renames(cls),
        )

        def structure(value: Any, target: type) -> Any:
            if not isinstance(value, dict):
                raise WireTypeError(f"must be an object, got {_type_name(value)}")
            return fn(value, target)

        return structure

    converter.register_structure_hook_factory(_is_attrs_class, structure_factory)
    converter.register_unstructure_hook_factory(
        _is_attrs_class, functools.partial(_compact_unstructure, converter)
    )
    return converter


class _IndexedError(Exception):
    def __init__(self, index: int, error: Exception) -> None:
        super().__init__(str(error))
        self.index = index
        self.error = error


_CONVERTER = make_converter()


def structure(data: object, cls: type[T], path: tuple[PathSegment, ...] = ()) -> T | list[FieldError]:
    """Structure ``data`` into ``cls``; on failure return every error with its wire path."""
    try:
        return _CONVERTER.structure(data, cls)
    except Exception as exc:
        return collect_errors(exc, path, cls)


def unstructure(value: object) -> Any:
    return _CONVERTER.unstructure(value)


def collect_errors(exc: BaseException, path: tuple[PathSegment, ...], cls: Any) -> list[FieldError]:
    """Flatten a cattrs exception tree into :class:`FieldError` values with wire paths."""
    if isinstance(exc, ClassValidationError):
        errors: list[FieldError] = []
        with_notes, without_notes = exc.group_exceptions()
        for sub, note in with_notes:
            field_type = note.type
            if isinstance(sub, KeyError):
                errors.append(FieldError((*path, wire_name(note.name)), "required field is missing"))
            else:
                errors.extend(collect_errors(sub, (*path, wire_name(note.name)), field_type))
        for sub in without_notes:
            errors.extend(collect_errors(sub, path, cls))
        return errors
    if isinstance(exc, IterableValidationError):
        out: list[FieldError] = []
        item_type = get_args(cls)[0] if get_args(cls) else Any
        for sub in exc.exceptions:
            if isinstance(sub, _IndexedError):
                out.extend(collect_errors(sub.error, (*path, sub.index), item_type))
            else:  # pragma: no cover - our tuple hook always wraps items
                out.extend(collect_errors(sub, path, item_type))
        return out
    if isinstance(exc, ForbiddenExtraKeysError):
        known = sorted(wire_name(a.name) for a in attrs.fields(exc.cl))
        return [
            FieldError((*path, key), f"unknown field; known fields here are {', '.join(known)}")
            for key in sorted(exc.extra_fields)
        ]
    if isinstance(exc, WireTypeError):
        return [FieldError(path, str(exc))]
    if isinstance(exc, BaseExceptionGroup):  # not cattrs's own: flattened, nothing lost
        return [e for sub in exc.exceptions for e in collect_errors(sub, path, cls)]
    return [FieldError(path, f"invalid value ({type(exc).__name__}: {exc})")]


# --------------------------------------------------------------------------- LatticeCluster


def cluster_from_dict(doc: object) -> models.LatticeCluster | list[FieldError]:
    """Read a LatticeCluster document (as from the API server or a YAML file)."""
    if not isinstance(doc, dict):
        return [FieldError((), f"a LatticeCluster must be an object, got {_type_name(doc)}")]
    errors: list[FieldError] = []
    if doc.get("apiVersion") != models.API_VERSION:
        errors.append(
            FieldError(("apiVersion",), f"must be {models.API_VERSION}, got {doc.get('apiVersion')!r}")
        )
    if doc.get("kind") != models.KIND:
        errors.append(FieldError(("kind",), f"must be {models.KIND}, got {doc.get('kind')!r}"))
    unknown = sorted(set(doc) - {"apiVersion", "kind", "metadata", "spec", "status"})
    errors.extend(FieldError((key,), "unknown top-level field") for key in unknown)

    metadata = _part(doc, "metadata", models.ObjectMeta, errors)
    spec = _part(doc, "spec", models.LatticeClusterSpec, errors)
    status: models.LatticeClusterStatus | None = models.LatticeClusterStatus()
    if doc.get("status") is not None:
        status = _part(doc, "status", models.LatticeClusterStatus, errors)
    if errors or metadata is None or spec is None or status is None:
        return errors
    return models.LatticeCluster(metadata=metadata, spec=spec, status=status)


def _part(doc: Mapping[str, Any], key: str, cls: type[T], errors: list[FieldError]) -> T | None:
    if key not in doc or doc[key] is None:
        errors.append(FieldError((key,), "required field is missing"))
        return None
    result = structure(doc[key], cls, (key,))
    if isinstance(result, list):
        errors.extend(result)
        return None
    return result


def cluster_to_dict(cluster: models.LatticeCluster, *, with_status: bool = True) -> dict[str, Any]:
    meta = unstructure(cluster.metadata)
    out: dict[str, Any] = {
        "apiVersion": models.API_VERSION,
        "kind": models.KIND,
        "metadata": meta,
        "spec": unstructure(cluster.spec),
    }
    if with_status:
        out["status"] = unstructure(cluster.status)
    return out


def status_to_dict(status: models.LatticeClusterStatus) -> dict[str, Any]:
    result: dict[str, Any] = unstructure(status)
    return result
