from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from syrupy.assertion import SnapshotAssertion

from lattice.app import yamlio
from lattice.domain import lattice_service, lattice_service_crd
from lattice.domain.errors import FieldError
from tests.unit.discovery.factories import HTTP, service_doc, svc, valid

EXAMPLE = Path(__file__).parents[3] / "examples" / "services" / "cross-cluster.yaml"


def _errors(doc: dict[str, Any]) -> list[str]:
    parsed = lattice_service.service_from_dict(doc)
    if isinstance(parsed, list):
        return [str(e) for e in parsed]
    result = lattice_service.validate_service(parsed)
    assert isinstance(result, list), result
    return [str(e) for e in result]


# --------------------------------------------------------------------------- wire


def test_example_documents_parse_and_validate() -> None:
    docs = yamlio.load_documents(EXAMPLE.read_text())
    assert isinstance(docs, list)
    api, frontend = (valid(yamlio.to_plain(d.data)) for d in docs)
    assert api.allowed_callers == ("frontend",)
    assert [p.name for p in api.ports] == ["http", "metrics"]
    assert frontend.dependencies == ("api",)
    assert frontend.allowed_callers == ("*",)


def test_derived_facts() -> None:
    s = svc("a", ports=HTTP, outbound=("b", "c"), inbound=("d",), both=("e",), resource_version="42")
    assert s.dependencies == ("b", "c", "e")
    assert s.allowed_callers == ("d", "e")
    assert s.version == 42
    assert s.key == ("prod", "a")
    assert s.allows("d")
    assert s.allows("e")
    assert not s.allows("b")
    assert svc("x", inbound=("*",)).allows("anyone")


@pytest.mark.parametrize(("resource_version", "expected"), [(None, 0), ("17", 17), ("opaque-v1", 0), ("", 0)])
def test_resource_version_becomes_the_announcement_version(
    resource_version: str | None, expected: int
) -> None:
    assert lattice_service.resource_version_number(resource_version) == expected


def test_round_trip_keeps_every_field() -> None:
    doc = service_doc(
        "api", ports={"http": {"port": 80, "targetPort": 8080, "protocol": "HTTP"}}, inbound=("*",)
    )
    doc["metadata"]["labels"] = {"team": "a"}
    parsed = lattice_service.service_from_dict(doc)
    assert isinstance(parsed, lattice_service.LatticeService)
    out = lattice_service.service_to_dict(parsed)
    assert out["spec"] == doc["spec"]
    assert out["metadata"] == {**doc["metadata"], "generation": 0}
    assert out["status"] == {"phase": "Pending"}
    assert "status" not in lattice_service.service_to_dict(parsed, with_status=False)


def test_unknown_metadata_is_ignored_but_unknown_spec_is_not() -> None:
    doc = service_doc("api")
    doc["metadata"]["creationTimestamp"] = "2026-01-01T00:00:00Z"
    doc["spec"]["replicas"] = 3
    assert _errors(doc) == [
        "spec.replicas: unknown field; known fields here are environment, resources, service"
    ]


def test_wire_errors_are_all_collected_with_map_keys_in_their_paths() -> None:
    doc = service_doc("api", ports={"http": {"port": "80"}, "grpc": {"port": 9000, "protocol": "SCTP"}})
    doc["spec"]["resources"] = {
        "db": {"type": "database", "direction": "outbound"},
        "cache": {"type": "service"},
        "queue": 3,
    }
    doc["status"] = {"phase": "Sleeping"}
    doc["extra"] = True
    assert sorted(_errors(doc)) == sorted(
        [
            "extra: unknown top-level field",
            "spec.service.ports.http.port: must be an integer, got string",
            "spec.service.ports.grpc.protocol: must be one of HTTP, HTTPS, GRPC, TCP; got 'SCTP'",
            "spec.resources.db.type: must be one of service; got 'database'",
            "spec.resources.cache.direction: required field is missing",
            "spec.resources.queue: must be an object, got integer",
            "status.phase: must be one of Pending, Ready, Failed; got 'Sleeping'",
        ]
    )


@pytest.mark.parametrize(
    ("doc", "expected"),
    [
        pytest.param([], ["<root>: a LatticeService must be an object, got list"], id="not-an-object"),
        pytest.param(
            {"apiVersion": "v1", "kind": "Service"},
            [
                "apiVersion: must be lattice.dev/v1alpha1, got 'v1'",
                "kind: must be LatticeService, got 'Service'",
                "metadata: required field is missing",
                "spec: required field is missing",
            ],
            id="wrong-kind-and-empty",
        ),
        pytest.param(
            {**service_doc("a"), "metadata": "a"},
            ["metadata: must be an object, got string"],
            id="metadata-not-an-object",
        ),
        pytest.param(
            {**service_doc("a"), "spec": {"environment": "prod", "resources": ["x"]}},
            ["spec.resources: must be an object, got list"],
            id="resources-not-a-map",
        ),
        pytest.param(
            {**service_doc("a"), "spec": {"environment": "prod", "resources": {1: {}}}},
            ["spec.resources.1: keys must be strings, got integer"],
            id="non-string-key",
        ),
    ],
)
def test_document_errors(doc: Any, expected: list[str]) -> None:
    assert _errors(doc) == expected


# --------------------------------------------------------------------------- validation


def test_validation_collects_every_error_with_its_path() -> None:
    doc = service_doc(
        "API",
        namespace="",
        environment="Prod_1",
        ports={
            "http": {"port": 8080},
            "web": {"port": 8080},
            "8080": {"port": 1},
            "a-very-long-port-name": {"port": 2},
            "bad": {"port": 0, "targetPort": 70000},
        },
        outbound=("API", "Bad_Name"),
    )
    doc["spec"]["resources"]["*"] = {"type": "service", "direction": "outbound"}
    assert _errors(doc) == [
        "metadata.name: 'API' is not a DNS-1123 label: use lower-case letters, digits and '-', "
        "starting and ending with a letter or digit",
        "metadata.namespace: must not be empty",
        "spec.environment: 'Prod_1' is not a DNS-1123 label: use lower-case letters, digits and '-', "
        "starting and ending with a letter or digit",
        "spec.service.ports.8080: port name '8080' must be at most 15 lower-case letters, digits and '-', "
        "with at least one letter",
        "spec.service.ports.a-very-long-port-name: port name 'a-very-long-port-name' must be at most 15 "
        "lower-case letters, digits and '-', with at least one letter",
        "spec.service.ports.bad.port: must be a port between 1 and 65535, got 0",
        "spec.service.ports.bad.targetPort: must be a port between 1 and 65535, got 70000",
        "spec.service.ports.web.port: port 8080 is already used by port 'http'",
        "spec.resources.*.direction: '*' means any caller and is only valid with direction inbound",
        "spec.resources.API: 'API' is not a DNS-1123 label: use lower-case letters, digits and '-', "
        "starting and ending with a letter or digit",
        "spec.resources.API.direction: a service cannot depend on itself",
        "spec.resources.Bad_Name: 'Bad_Name' is not a DNS-1123 label: use lower-case letters, digits "
        "and '-', starting and ending with a letter or digit",
    ]


def test_validation_limits() -> None:
    doc = service_doc("a", ports={})
    doc["spec"]["resources"] = {f"s{i}": {"type": "service", "direction": "outbound"} for i in range(129)}
    too_many_ports = service_doc("b", ports={f"p{i}": {"port": 1000 + i} for i in range(33)})
    long_name = service_doc("x" * 64)
    assert _errors(doc) == [
        "spec.service.ports: must list at least one port (or leave out service)",
        "spec.resources: must have at most 128 resources, got 129",
    ]
    assert _errors(too_many_ports) == ["spec.service.ports: must have at most 32 ports, got 33"]
    assert _errors(long_name) == ["metadata.name: must be at most 63 characters, got 64"]


def test_a_service_may_allow_itself_and_call_others_both_ways() -> None:
    s = svc("a", inbound=("a",), both=("b",))
    assert s.dependencies == ("b",)
    assert s.allowed_callers == ("a", "b")


# --------------------------------------------------------------------------- properties

labels = st.from_regex(r"[a-z]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
port_specs = st.fixed_dictionaries(
    {"port": st.integers(1, 65535)},
    optional={
        "targetPort": st.integers(1, 65535),
        "protocol": st.sampled_from(["HTTP", "HTTPS", "GRPC", "TCP"]),
    },
)
resource_specs = st.fixed_dictionaries(
    {"type": st.just("service"), "direction": st.sampled_from(["outbound", "inbound", "both"])}
)


@st.composite
def service_docs(draw: st.DrawFn) -> dict[str, Any]:
    doc = service_doc(draw(labels), namespace=draw(labels), environment=draw(labels))
    if draw(st.booleans()):
        doc["spec"]["service"] = {"ports": draw(st.dictionaries(labels, port_specs, min_size=1, max_size=4))}
    resources = draw(st.dictionaries(labels, resource_specs, max_size=5))
    if resources:
        doc["spec"]["resources"] = resources
    return doc


@given(service_docs())
def test_wire_round_trip(doc: dict[str, Any]) -> None:
    parsed = lattice_service.service_from_dict(copy.deepcopy(doc))
    assert isinstance(parsed, lattice_service.LatticeService)
    again = lattice_service.service_from_dict(lattice_service.service_to_dict(parsed))
    assert again == parsed


@given(service_docs())
def test_dependencies_and_callers_partition_the_service_resources(doc: dict[str, Any]) -> None:
    parsed = lattice_service.service_from_dict(doc)
    assert isinstance(parsed, lattice_service.LatticeService)
    result = lattice_service.validate_service(parsed)
    if isinstance(result, list):
        assert all(isinstance(e, FieldError) and e.path for e in result)
        return
    resources = doc["spec"].get("resources", {})
    assert set(result.dependencies) == {n for n, r in resources.items() if r["direction"] != "inbound"}
    assert set(result.allowed_callers) == {n for n, r in resources.items() if r["direction"] != "outbound"}


# --------------------------------------------------------------------------- CRD


def _nodes(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = [(path, schema)]
    for key, sub in schema.get("properties", {}).items():
        out += _nodes(sub, f"{path}.{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            out += _nodes(schema[key], f"{path}[]")
    return out


def test_crd_golden(yaml_snapshot: SnapshotAssertion) -> None:
    assert yamlio.dump_all([lattice_service_crd.lattice_service_crd()]) == yaml_snapshot


def test_crd_is_namespaced_structural_and_described() -> None:
    crd = lattice_service_crd.lattice_service_crd()
    assert crd["metadata"]["name"] == "latticeservices.lattice.dev"
    assert crd["spec"]["scope"] == "Namespaced"
    assert crd["spec"]["names"]["shortNames"] == ["ls"]
    version = crd["spec"]["versions"][0]
    assert [c["name"] for c in version["additionalPrinterColumns"]] == [
        "Environment",
        "Phase",
        "Message",
        "Age",
    ]
    root = version["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root["properties"]["spec"], "spec"):
        assert "type" in node, path
        if path != "spec" and not path.endswith("[]"):
            assert node.get("description"), f"{path} has no description"
    resources = root["properties"]["spec"]["properties"]["resources"]
    assert resources["additionalProperties"]["properties"]["direction"]["enum"] == [
        "outbound",
        "inbound",
        "both",
    ]
    ports = root["properties"]["spec"]["properties"]["service"]["properties"]["ports"]
    assert ports["additionalProperties"]["properties"]["protocol"]["default"] == "TCP"


def test_required_fields_carry_no_default() -> None:
    root = lattice_service_crd.lattice_service_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for path, node in _nodes(root):
        for name in node.get("required", []):
            assert "default" not in node["properties"][name], f"{path}.{name}"
    defaults = {path: node["default"] for path, node in _nodes(root) if "default" in node}
    assert defaults == {".spec.service.ports[].protocol": "TCP", ".status.phase": "Pending"}


def test_cel_rules_have_messages() -> None:
    root = lattice_service_crd.lattice_service_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    rules = [r for _, node in _nodes(root) for r in node.get("x-kubernetes-validations", [])]
    assert {r["message"] for r in rules} == {
        "port numbers must be unique",
        "'*' means any caller and is only valid with direction inbound",
        "a service cannot depend on itself",
    }
