"""Fuzz target ``validation``: the domain checks the operator runs on LatticeCluster and
LatticeService objects, and the reconcile decision built on them.

Invariant: a valid value, or a non-empty list of :class:`FieldError` whose paths name fields
(only a document that is not an object at all is refused at ``<root>``); ``plan_cluster``
returns a plan, and an invalid spec's plan says which field is wrong. Never an exception.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import cluster_reconcile, lattice_service, serde, validation
from lattice.domain.errors import FieldError
from tests.fuzz.plugin import fuzz
from tests.fuzz.strategies import (
    CLUSTER_SCHEMA,
    cluster_documents,
    from_schema,
    json_values,
    service_documents,
    weird_strings,
)
from tests.unit.strategies import names, versions

NOW = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)


def check_errors(errors: list[FieldError], doc: Any) -> None:
    assert errors, "an empty error list instead of a valid value"
    for error in errors:
        assert isinstance(error, FieldError), error
        assert isinstance(error.path, tuple)
        assert all(isinstance(segment, str | int) for segment in error.path), error.path
        assert isinstance(error.reason, str)
        assert error.reason.strip(), error
        assert error.path or not isinstance(doc, dict), f"an error that names no field: {error}"
        str(error)


@given(doc=st.one_of(cluster_documents(), json_values))
@fuzz("validation.cluster", examples=300)
def test_cluster_documents(doc: Any) -> None:
    parsed = serde.cluster_from_dict(doc)
    if isinstance(parsed, list):
        check_errors(parsed, doc)
        return
    valid = validation.validate_cluster(parsed)
    if isinstance(valid, list):
        check_errors(valid, doc)
    else:
        assert valid.name == doc["metadata"]["name"]


@given(doc=st.one_of(service_documents(), json_values))
@fuzz("validation.service", examples=300)
def test_service_documents(doc: Any) -> None:
    parsed = lattice_service.service_from_dict(doc)
    if isinstance(parsed, list):
        check_errors(parsed, doc)
        return
    valid = lattice_service.validate_service(parsed)
    if isinstance(valid, list):
        check_errors(valid, doc)
    else:
        assert valid.name == doc["metadata"]["name"]


@given(previous=st.one_of(versions, weird_strings), new=st.one_of(versions, weird_strings))
@fuzz("validation.version_change", examples=200)
def test_version_changes(previous: str, new: str) -> None:
    errors = validation.version_change_errors(previous, new, ("spec", "provider", "kubernetes", "version"))
    assert all(e.path == ("spec", "provider", "kubernetes", "version") and e.reason for e in errors)


@st.composite
def stored_clusters(draw: st.DrawFn) -> dict[str, Any]:
    """A LatticeCluster as the API server hands it out: well-formed metadata (the server makes
    it), any spec and status (the fuzzed part)."""
    doc = draw(cluster_documents())
    raw = dict(doc) if isinstance(doc, dict) else {"spec": doc}
    metadata: dict[str, Any] = {
        "name": draw(names),
        "generation": draw(st.integers(1, 2**31)),
        "finalizers": draw(
            st.sampled_from([[cluster_reconcile.FINALIZER], [], ["other/x", cluster_reconcile.FINALIZER]])
        ),
    }
    if draw(st.integers(0, 9)) == 0:
        metadata["deletionTimestamp"] = "2026-01-02T03:04:05Z"
    raw["metadata"] = metadata
    if draw(st.booleans()):
        raw["status"] = draw(st.one_of(from_schema(CLUSTER_SCHEMA["properties"]["status"], 5), json_values))
    return raw


@given(
    raw=stored_clusters(),
    capi_objects=st.sampled_from([None, []]),
    self_name=st.one_of(st.none(), names),
)
@fuzz("validation.plan_cluster", examples=200)
def test_plan_cluster(raw: dict[str, Any], capi_objects: list[Any] | None, self_name: str | None) -> None:
    context = cluster_reconcile.OperatorContext(self_name=self_name)
    plan = cluster_reconcile.plan_cluster(raw, capi_objects, context, NOW)
    assert isinstance(plan, cluster_reconcile.Plan)
    parsed = serde.cluster_from_dict(raw)
    valid = parsed if isinstance(parsed, list) else validation.validate_cluster(parsed)
    wanted = (
        cluster_reconcile.FINALIZER in raw["metadata"]["finalizers"]
        and "deletionTimestamp" not in raw["metadata"]
    )
    if isinstance(valid, list) and wanted and plan.ignored is None and plan.status is not None:
        assert valid[0].field in plan.status["message"], (valid[0], plan.status)
