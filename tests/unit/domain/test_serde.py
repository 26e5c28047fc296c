from __future__ import annotations

import copy
from typing import Any

import pytest
from hypothesis import given

from lattice.domain import models, serde
from lattice.domain.errors import FieldError, InvalidObject, render_path
from tests.unit.strategies import cluster_docs


def _doc(**spec_overrides: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "provider": {"type": "docker", "kubernetes": {"version": "1.35.0"}},
        "nodes": {"controlPlane": 1, "workers": 2},
        "parentConfig": {"host": "10.0.0.1"},
    }
    spec.update(spec_overrides)
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": "mgmt"},
        "spec": spec,
    }


def _errors(doc: object) -> dict[str, str]:
    result = serde.cluster_from_dict(doc)
    assert isinstance(result, list), result
    return {e.field: e.reason for e in result}


@given(cluster_docs())
def test_round_trip_preserves_every_field(doc: dict[str, Any]) -> None:
    cluster = serde.cluster_from_dict(copy.deepcopy(doc))
    assert isinstance(cluster, models.LatticeCluster)
    again = serde.cluster_from_dict(serde.cluster_to_dict(cluster))
    assert again == cluster


def test_wire_names_are_camel_case_with_kubernetes_spelling() -> None:
    assert serde.wire_name("control_plane") == "controlPlane"
    assert serde.wire_name("cert_sans") == "certSANs"
    assert serde.wire_name("type") == "type"


def test_every_structural_error_is_collected_with_its_path() -> None:
    doc = _doc(
        provider={
            "type": "aws",
            "kubernetes": {"version": "1.35.0", "certSANs": ["ok", 3]},
            "aws": {"region": "us-west-2"},
        },
        nodes={"controlPlane": True, "workers": "2", "contolPlane": 1},
        cellRef=3,
    )
    errors = _errors(doc)
    assert errors == {
        "spec.provider.kubernetes.certSANs[1]": "must be a string, got integer",
        "spec.provider.aws.sshKeyName": "required field is missing",
        "spec.provider.aws.controlPlaneInstanceType": "required field is missing",
        "spec.provider.aws.workerInstanceType": "required field is missing",
        "spec.nodes.controlPlane": "must be an integer, got boolean",
        "spec.nodes.workers": "must be an integer, got string",
        "spec.nodes.contolPlane": "unknown field; known fields here are controlPlane, workers",
        "spec.cellRef": "must be a string, got integer",
    }


def test_enum_errors_list_the_allowed_values() -> None:
    errors = _errors(_doc(provider={"type": "openstack", "kubernetes": {"version": "1.35.0"}}))
    assert errors["spec.provider.type"] == "must be one of docker, local, aws, gcp, azure; got 'openstack'"


@pytest.mark.parametrize(
    ("mutate", "field", "reason"),
    [
        pytest.param(lambda d: d.pop("spec"), "spec", "required field is missing", id="no-spec"),
        pytest.param(lambda d: d.pop("metadata"), "metadata", "required field is missing", id="no-meta"),
        pytest.param(
            lambda d: d.update(apiVersion="v1"),
            "apiVersion",
            "must be lattice.dev/v1alpha1, got 'v1'",
            id="api-version",
        ),
        pytest.param(
            lambda d: d.update(kind="Cluster"), "kind", "must be LatticeCluster, got 'Cluster'", id="kind"
        ),
        pytest.param(lambda d: d.update(extra=1), "extra", "unknown top-level field", id="top-level"),
        pytest.param(
            lambda d: d["spec"].update(nodes=[1]), "spec.nodes", "must be an object, got list", id="obj"
        ),
        pytest.param(
            lambda d: d["spec"]["provider"]["kubernetes"].update(certSANs="a"),
            "spec.provider.kubernetes.certSANs",
            "must be a list, got string",
            id="list",
        ),
        pytest.param(
            lambda d: d["metadata"].update(labels={"a": 1}),
            "metadata.labels",
            "must be a map of strings to strings",
            id="labels",
        ),
        pytest.param(
            lambda d: d["spec"].update(discovery={"enabled": "yes"}),
            "spec.discovery.enabled",
            "must be true or false, got string",
            id="bool",
        ),
        pytest.param(
            lambda d: d["spec"].update(cellRef=None, parentConfig={"host": None}),
            "spec.parentConfig.host",
            "must be a string, got null",
            id="null",
        ),
    ],
)
def test_field_errors(mutate: Any, field: str, reason: str) -> None:
    doc = _doc()
    mutate(doc)
    assert _errors(doc)[field] == reason


def test_non_object_document() -> None:
    assert _errors([1]) == {"<root>": "a LatticeCluster must be an object, got list"}


def test_status_tolerates_unknown_keys_but_not_wrong_types() -> None:
    doc = _doc()
    doc["status"] = {"phase": "Ready", "futureField": {"x": 1}, "observedGeneration": 3}
    cluster = serde.cluster_from_dict(doc)
    assert isinstance(cluster, models.LatticeCluster)
    assert cluster.status.phase is models.Phase.READY
    doc["status"] = {"phase": "Exploded"}
    assert "status.phase" in _errors(doc)


def test_a_condition_with_a_field_metav1_does_not_have_is_refused_with_its_path() -> None:
    # The case the CRD agreement fuzz test found: the apiserver refuses it (strict decoding).
    doc = _doc()
    condition = {"type": "Ready", "status": "True", "reason": "Up", "message": "", "lastTransitionTime": "x"}
    doc["status"] = {"phase": "Ready", "conditions": [{**condition, "a": None}]}
    assert "status.conditions[0].a" in _errors(doc)
    doc["status"] = {"phase": "Ready", "conditions": [condition]}
    assert isinstance(serde.cluster_from_dict(doc), models.LatticeCluster)


def test_metadata_ignores_server_fields() -> None:
    doc = _doc()
    doc["metadata"].update(
        {"uid": "u1", "generation": 4, "managedFields": [], "creationTimestamp": "2026-01-01T00:00:00Z"}
    )
    cluster = serde.cluster_from_dict(doc)
    assert isinstance(cluster, models.LatticeCluster)
    assert (cluster.metadata.uid, cluster.metadata.generation) == ("u1", 4)


def test_unstructure_never_emits_empty_values_and_can_drop_status() -> None:
    cluster = serde.cluster_from_dict(_doc())
    assert isinstance(cluster, models.LatticeCluster)
    out = serde.cluster_to_dict(cluster, with_status=False)
    assert "status" not in out
    assert out["metadata"] == {"name": "mgmt", "generation": 0}
    assert serde.status_to_dict(cluster.status) == {"phase": "Pending"}


def test_render_path_and_invalid_object() -> None:
    assert render_path(("spec", "a", 0, "b")) == "spec.a[0].b"
    assert render_path(()) == "<root>"
    err = InvalidObject([FieldError(("spec",), "bad"), FieldError((), "worse")])
    assert str(err) == "spec: bad; <root>: worse"
    assert len(err.errors) == 2


@pytest.mark.parametrize(
    ("path", "shown"),
    [
        (("",), '[""]'),
        ((" ",), '[" "]'),
        (("spec", "a b"), 'spec["a b"]'),
        (("metadata", "annotations", "lattice.dev/x"), 'metadata.annotations["lattice.dev/x"]'),
        (("a\nb", 0), '["a\\nb"][0]'),
        (("x[0]",), '["x[0]"]'),
        (("spec", "resources", "*", "direction"), "spec.resources.*.direction"),
        (("café",), "café"),
    ],
)
def test_render_path_quotes_keys_that_would_read_ambiguously(path: tuple[str | int, ...], shown: str) -> None:
    """Found by tests/fuzz: an unknown key ' ' read as ``  : unknown top-level field`` and ''
    as ``<root>``; a key with a dot read as two fields."""
    assert render_path(path) == shown


def test_collect_errors_flattens_any_exception_group_and_keeps_every_error() -> None:
    """cattrs raises its own groups, handled above; any other group (a hook of a future cattrs,
    say) still yields each of its errors at the path, none lost."""
    group = ExceptionGroup("two", [ValueError("first"), ExceptionGroup("inner", [TypeError("second")])])
    errors = serde.collect_errors(group, ("spec", "x"), int)
    assert [(e.path, e.reason) for e in errors] == [
        (("spec", "x"), "invalid value (ValueError: first)"),
        (("spec", "x"), "invalid value (TypeError: second)"),
    ]
