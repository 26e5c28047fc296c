"""The LatticeService resource (``lattice.dev/v1alpha1``, namespaced): what discovery needs.

A minimal, Score-style workload description: an environment, the ports the service exposes and
its ``resources``, where ``type: service`` entries declare

- dependencies: ``direction: outbound`` (this service calls the named service),
- allowed callers: ``direction: inbound`` (the named service may call this one; ``"*"`` means
  any caller),
- both at once: ``direction: both`` (a Lattice addition, needed because ``resources`` is a map
  and two services that call each other would otherwise need the same key twice).

Cross-cluster traffic needs *bilateral agreement*: the caller declares the dependency and the
callee allows the caller (spec 003, "Bilateral Agreement Enforcement").

Wire conversion uses a private converter built on :func:`lattice.domain.serde.make_converter`,
extended with map-of-object fields whose errors carry the map key in their path
(``spec.resources.api.direction``). :func:`validate_service` collects every semantic error and
is the only way to obtain a :class:`ValidService`.

Not guaranteed here: that a dependency exists (that is the :mod:`lattice.domain.discovery.graph`
and the discovery protocol's job), or that a name is unique across namespaces of one
environment (the graph reports such conflicts).
"""

from __future__ import annotations

import enum
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar, get_args, get_origin

import attrs
import cattrs
from attrs import frozen
from cattrs.errors import AttributeValidationNote, ClassValidationError
from cattrs.gen import make_dict_structure_fn

from lattice.domain import models, serde
from lattice.domain.errors import FieldError, PathSegment
from lattice.domain.models import describe

T = TypeVar("T")

KIND = "LatticeService"
PLURAL = "latticeservices"
SINGULAR = "latticeservice"
SHORT_NAMES = ("ls",)
ANY_CALLER = "*"

DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
# IANA service names (Kubernetes port names): at most 15 characters, at least one letter.
PORT_NAME = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
MAX_PORT_NAME = 15
MAX_PORTS = 32
MAX_RESOURCES = 128


class PortProtocol(enum.StrEnum):
    """Application protocol of a port (the ServicePort.protocol of the discovery protocol)."""

    HTTP = "HTTP"
    HTTPS = "HTTPS"
    GRPC = "GRPC"
    TCP = "TCP"


class ResourceType(enum.StrEnum):
    """Kinds of Score resources Lattice understands; only services so far."""

    SERVICE = "service"


class Direction(enum.StrEnum):
    """Which way traffic flows between this service and a ``type: service`` resource."""

    OUTBOUND = "outbound"
    INBOUND = "inbound"
    BOTH = "both"

    @property
    def calls(self) -> bool:
        return self in (Direction.OUTBOUND, Direction.BOTH)

    @property
    def allows(self) -> bool:
        return self in (Direction.INBOUND, Direction.BOTH)


class ServicePhase(enum.StrEnum):
    PENDING = "Pending"
    READY = "Ready"
    FAILED = "Failed"


# --------------------------------------------------------------------------- spec


@frozen
class PortSpec:
    port: int = describe("Port the service listens on.", minimum=1, maximum=65535)
    target_port: int | None = describe(
        "Container port traffic is sent to; defaults to port.", default=None, minimum=1, maximum=65535
    )
    protocol: PortProtocol = describe(
        "Application protocol: HTTP, HTTPS, GRPC or TCP.", default=PortProtocol.TCP
    )


@frozen
class ServiceExposure:
    ports: Mapping[str, PortSpec] = describe(
        "Exposed ports by name (an IANA service name: at most 15 lower-case letters, digits and '-').",
        minProperties=1,
        maxProperties=MAX_PORTS,
    )


@frozen
class ResourceSpec:
    type: ResourceType = describe("Resource type; 'service' is another LatticeService.")
    direction: Direction = describe(
        "outbound: this service calls the named service (a dependency). inbound: the named "
        "service may call this one ('*' as the name allows any caller). both: either way."
    )


@frozen
class LatticeServiceSpec:
    environment: str = describe(
        "Environment the service belongs to (e.g. prod, staging). Dependencies resolve within "
        "one environment, across clusters.",
        minLength=1,
        maxLength=63,
        pattern=DNS1123_LABEL.pattern,
    )
    service: ServiceExposure | None = describe(
        "Ports the service exposes; a service without ports can call others but not be called.",
        default=None,
    )
    resources: Mapping[str, ResourceSpec] = describe(
        "Score resources by name. For type service the name is the other service's name, or '*' "
        "(any caller, inbound only).",
        factory=dict,
        maxProperties=MAX_RESOURCES,
    )


@frozen
class LatticeServiceStatus:
    phase: ServicePhase = describe("Lifecycle phase.", default=ServicePhase.PENDING)
    message: str | None = describe("Human-readable summary of the phase.", default=None)
    observed_generation: int | None = describe(
        "Generation of the spec last reconciled successfully.", default=None, minimum=0
    )
    conditions: tuple[models.Condition, ...] = describe("Current conditions.", default=())


@frozen
class ServiceMeta:
    """The parts of ``metav1.ObjectMeta`` a namespaced LatticeService needs."""

    name: str
    namespace: str = "default"
    generation: int = 0
    uid: str | None = None
    resource_version: str | None = None
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)


@frozen
class LatticeService:
    metadata: ServiceMeta
    spec: LatticeServiceSpec
    status: LatticeServiceStatus = attrs.field(factory=LatticeServiceStatus)

    @property
    def name(self) -> str:
        return self.metadata.name

    @property
    def namespace(self) -> str:
        return self.metadata.namespace


# --------------------------------------------------------------------------- validated view


@frozen
class NamedPort:
    name: str
    port: int
    protocol: PortProtocol
    target_port: int | None = None


@frozen
class ValidService:
    """A LatticeService that passed :func:`validate_service`, with its derived facts."""

    name: str
    namespace: str
    environment: str
    ports: tuple[NamedPort, ...]  # sorted by name
    dependencies: tuple[str, ...]  # services this one calls, sorted
    allowed_callers: tuple[str, ...]  # services allowed to call this one ('*' = any), sorted
    version: int  # metadata.resourceVersion as an integer (0 when not numeric)

    @property
    def key(self) -> tuple[str, str]:
        return (self.environment, self.name)

    def allows(self, caller: str) -> bool:
        """The callee half of bilateral agreement."""
        return ANY_CALLER in self.allowed_callers or caller in self.allowed_callers


def validate_service(service: LatticeService) -> ValidService | list[FieldError]:
    errors = list(_service_errors(service))
    if errors:
        return errors
    spec = service.spec
    exposure = spec.service
    ports = tuple(
        NamedPort(name=name, port=p.port, protocol=p.protocol, target_port=p.target_port)
        for name, p in sorted((exposure.ports if exposure else {}).items())
    )
    resources = sorted(spec.resources.items())
    return ValidService(
        name=service.name,
        namespace=service.namespace,
        environment=spec.environment,
        ports=ports,
        dependencies=tuple(n for n, r in resources if r.type is ResourceType.SERVICE and r.direction.calls),
        allowed_callers=tuple(
            n for n, r in resources if r.type is ResourceType.SERVICE and r.direction.allows
        ),
        version=resource_version_number(service.metadata.resource_version),
    )


def resource_version_number(resource_version: str | None) -> int:
    """``metadata.resourceVersion`` as the announcement version; 0 when absent or opaque."""
    if resource_version is not None and resource_version.isdigit():
        return int(resource_version)
    return 0


def _label_errors(value: str, path: tuple[PathSegment, ...], max_len: int = 63) -> Iterator[FieldError]:
    if not value:
        yield FieldError(path, "must not be empty")
    elif len(value) > max_len:
        yield FieldError(path, f"must be at most {max_len} characters, got {len(value)}")
    elif not DNS1123_LABEL.match(value):
        yield FieldError(
            path,
            f"{value!r} is not a DNS-1123 label: use lower-case letters, digits and '-', "
            "starting and ending with a letter or digit",
        )


def _service_errors(service: LatticeService) -> Iterator[FieldError]:
    yield from _label_errors(service.metadata.name, ("metadata", "name"))
    yield from _label_errors(service.metadata.namespace, ("metadata", "namespace"))
    spec = service.spec
    yield from _label_errors(spec.environment, ("spec", "environment"))
    if spec.service is not None:
        yield from _port_errors(spec.service.ports, ("spec", "service", "ports"))
    yield from _resource_errors(service.name, spec.resources, ("spec", "resources"))


def _port_errors(ports: Mapping[str, PortSpec], path: tuple[PathSegment, ...]) -> Iterator[FieldError]:
    if not ports:
        yield FieldError(path, "must list at least one port (or leave out service)")
    if len(ports) > MAX_PORTS:
        yield FieldError(path, f"must have at most {MAX_PORTS} ports, got {len(ports)}")
    seen: dict[int, str] = {}
    for name, spec in sorted(ports.items()):
        ppath = (*path, name)
        if len(name) > MAX_PORT_NAME or not PORT_NAME.match(name) or name.isdigit():
            yield FieldError(
                ppath,
                f"port name {name!r} must be at most {MAX_PORT_NAME} lower-case letters, digits and "
                "'-', with at least one letter",
            )
        for key, number in (("port", spec.port), ("targetPort", spec.target_port)):
            if number is not None and not 1 <= number <= 65535:
                yield FieldError((*ppath, key), f"must be a port between 1 and 65535, got {number}")
        if spec.port in seen:
            yield FieldError(
                (*ppath, "port"), f"port {spec.port} is already used by port {seen[spec.port]!r}"
            )
        else:
            seen[spec.port] = name


def _resource_errors(
    own_name: str, resources: Mapping[str, ResourceSpec], path: tuple[PathSegment, ...]
) -> Iterator[FieldError]:
    if len(resources) > MAX_RESOURCES:
        yield FieldError(path, f"must have at most {MAX_RESOURCES} resources, got {len(resources)}")
    for name, resource in sorted(resources.items()):
        rpath = (*path, name)
        if name == ANY_CALLER:
            if resource.direction is not Direction.INBOUND:
                yield FieldError(
                    (*rpath, "direction"),
                    "'*' means any caller and is only valid with direction inbound",
                )
            continue
        yield from _label_errors(name, rpath)
        if name == own_name and resource.direction.calls:
            yield FieldError((*rpath, "direction"), "a service cannot depend on itself")


# --------------------------------------------------------------------------- wire


def _is_object_map(cls: Any) -> bool:
    origin = get_origin(cls)
    args = get_args(cls)
    return (
        origin in (Mapping, dict)
        and len(args) == 2
        and args[0] is str
        and isinstance(args[1], type)
        and attrs.has(args[1])
    )


def _is_lenient_meta(cls: Any) -> bool:
    return cls is ServiceMeta


def make_converter() -> cattrs.Converter:
    """The shared strict converter plus map-of-object fields (errors keyed by the map key)."""
    converter = serde.make_converter()

    def structure_map(value: object, cls: Any) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise serde.WireTypeError(f"must be an object, got {_json_type(value)}")
        item_type = get_args(cls)[1]
        out: dict[str, Any] = {}
        errors: list[Exception] = []
        for key, item in value.items():
            exc: Exception | None = None
            if not isinstance(key, str):
                exc = serde.WireTypeError(f"keys must be strings, got {_json_type(key)}")
            else:
                try:
                    out[key] = converter.structure(item, item_type)
                except Exception as error:  # every item's errors are collected
                    exc = error
            if exc is not None:
                exc.__notes__ = [
                    *getattr(exc, "__notes__", []),
                    AttributeValidationNote(f"Structuring key {key!r}", str(key), item_type),
                ]
                errors.append(exc)
        if errors:
            raise ClassValidationError("While structuring a map", errors, cls)
        return out

    converter.register_structure_hook_func(_is_object_map, structure_map)

    def meta_factory(cls: type) -> Callable[[Any, type], Any]:
        fn: Callable[[Any, type], Any] = make_dict_structure_fn(
            cls,
            converter,
            _cattrs_forbid_extra_keys=False,
            _cattrs_detailed_validation=True,
            resource_version=cattrs.gen.override(rename="resourceVersion"),
        )

        def structure(value: Any, target: type) -> Any:
            if not isinstance(value, dict):
                raise serde.WireTypeError(f"must be an object, got {_json_type(value)}")
            return fn(value, target)

        return structure

    converter.register_structure_hook_factory(_is_lenient_meta, meta_factory)
    return converter


def _json_type(value: object) -> str:
    names = {
        bool: "boolean",
        int: "integer",
        float: "number",
        str: "string",
        list: "list",
        type(None): "null",
    }
    return names.get(type(value), type(value).__name__)


_CONVERTER = make_converter()


def structure(data: object, cls: type[T], path: tuple[PathSegment, ...] = ()) -> T | list[FieldError]:
    """Like :func:`lattice.domain.serde.structure`, with map keys in error paths."""
    try:
        return _CONVERTER.structure(data, cls)
    except Exception as exc:
        return serde.collect_errors(exc, path, cls)


def unstructure(value: object) -> Any:
    return _CONVERTER.unstructure(value)


def service_from_dict(doc: object) -> LatticeService | list[FieldError]:
    """Read a LatticeService document (as from the API server or a YAML file)."""
    if not isinstance(doc, dict):
        return [FieldError((), f"a LatticeService must be an object, got {_json_type(doc)}")]
    errors: list[FieldError] = []
    if doc.get("apiVersion") != models.API_VERSION:
        errors.append(
            FieldError(("apiVersion",), f"must be {models.API_VERSION}, got {doc.get('apiVersion')!r}")
        )
    if doc.get("kind") != KIND:
        errors.append(FieldError(("kind",), f"must be {KIND}, got {doc.get('kind')!r}"))
    unknown = sorted(set(doc) - {"apiVersion", "kind", "metadata", "spec", "status"})
    errors.extend(FieldError((key,), "unknown top-level field") for key in unknown)
    metadata = _part(doc, "metadata", ServiceMeta, errors)
    spec = _part(doc, "spec", LatticeServiceSpec, errors)
    status: LatticeServiceStatus | None = LatticeServiceStatus()
    if doc.get("status") is not None:
        status = _part(doc, "status", LatticeServiceStatus, errors)
    if errors or metadata is None or spec is None or status is None:
        return errors
    return LatticeService(metadata=metadata, spec=spec, status=status)


def _part(doc: Mapping[str, Any], key: str, cls: type[T], errors: list[FieldError]) -> T | None:
    if doc.get(key) is None:
        errors.append(FieldError((key,), "required field is missing"))
        return None
    result = structure(doc[key], cls, (key,))
    if isinstance(result, list):
        errors.extend(result)
        return None
    return result


def service_to_dict(service: LatticeService, *, with_status: bool = True) -> dict[str, Any]:
    out: dict[str, Any] = {
        "apiVersion": models.API_VERSION,
        "kind": KIND,
        "metadata": unstructure(service.metadata),
        "spec": unstructure(service.spec),
    }
    if with_status:
        out["status"] = unstructure(service.status)
    return out
