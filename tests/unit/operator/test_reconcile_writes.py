"""Writes per cluster: what the CAPI controllers and webhooks do to the objects the operator
applied (status, defaulted or rewritten fields) never makes it apply them again."""

from __future__ import annotations

import copy
import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import cluster_reconcile
from lattice.domain.cluster_reconcile import (
    APPLIED_HASH,
    applied_hash,
    plan_cluster,
    up_to_date,
    with_applied_hash,
)
from tests.unit.operator.test_reconcile import CELL, NOW, desired, lc, with_status

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=10,
)


def stored(plan: cluster_reconcile.Plan) -> list[dict[str, Any]]:
    """What the server returns for the applied objects: theirs plus its own metadata."""
    return [{**o, "metadata": {**o["metadata"], "uid": "x", "resourceVersion": "5"}} for o in plan.apply]


def test_every_applied_object_carries_the_hash_of_what_was_compiled() -> None:
    raw = lc()
    plan = plan_cluster(raw, [], CELL, NOW)
    for obj, compiled in zip(plan.apply, desired(raw), strict=True):
        assert obj["metadata"]["annotations"][APPLIED_HASH] == applied_hash(compiled)
        without = copy.deepcopy(obj)
        del without["metadata"]["annotations"]
        assert without == compiled


def test_a_field_a_webhook_or_controller_rewrote_is_not_fought_over() -> None:
    """The loop behind a dozen `Applying 1 of 8` Events: a controller's write to an object
    re-triggers the reconcile, and a field that no longer equals the compiled one made it apply
    again (and the controller rewrite it again)."""
    raw = lc()
    first = plan_cluster(raw, [], CELL, NOW)
    objects = stored(first)
    kcp = next(o for o in objects if o["kind"] == "KubeadmControlPlane")
    kcp["spec"]["version"] = "v1.35.0-defaulted"
    kcp["spec"]["kubeadmConfigSpec"]["files"].append({"path": "/added/by/a/controller"})
    kcp["status"] = {"initialization": {"controlPlaneInitialized": True}}
    cluster = next(o for o in objects if o["kind"] == "Cluster")
    cluster["spec"]["controlPlaneEndpoint"] = {"host": "10.0.0.9", "port": 6443}
    again = plan_cluster(with_status(raw, first), objects, CELL, NOW + dt.timedelta(seconds=1))
    assert again.apply == ()
    assert [e.reason for e in again.events] == []


def test_objects_applied_before_the_annotation_are_compared_field_by_field() -> None:
    raw = lc()
    compiled = desired(raw)
    plain = [{**o, "metadata": {**o["metadata"], "resourceVersion": "3"}} for o in compiled]
    first = plan_cluster(raw, plain, CELL, NOW)
    assert first.apply == ()
    changed = copy.deepcopy(plain)
    md = next(o for o in changed if o["kind"] == "MachineDeployment")
    md["spec"]["replicas"] = 7
    plan = plan_cluster(raw, changed, CELL, NOW)
    assert [o["kind"] for o in plan.apply] == ["MachineDeployment"]
    assert plan.apply[0]["spec"]["replicas"] == 2
    assert APPLIED_HASH in plan.apply[0]["metadata"]["annotations"]


def test_a_changed_spec_applies_again_even_over_a_matching_field_set() -> None:
    """The annotation of an older spec: the object is applied, though another writer had
    already set the very fields (the hash, not the fields, says what the operator applied)."""
    raw = lc()
    first = plan_cluster(raw, [], CELL, NOW)
    objects = stored(first)
    raw2 = with_status(raw, first)
    raw2["spec"]["nodes"]["workers"] = 3
    raw2["metadata"]["generation"] = 2
    md = next(o for o in objects if o["kind"] == "MachineDeployment")
    md["spec"]["replicas"] = 3  # someone scaled it by hand to what the new spec wants
    plan = plan_cluster(raw2, objects, CELL, NOW)
    assert [o["kind"] for o in plan.apply] == ["MachineDeployment"]
    assert [e.reason for e in plan.events] == ["Applying"]


def test_annotations_of_others_are_kept_next_to_the_hash() -> None:
    obj = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "a", "annotations": {"x": "1"}}}
    annotated = with_applied_hash(obj)
    assert annotated["metadata"]["annotations"] == {"x": "1", APPLIED_HASH: applied_hash(obj)}
    assert obj["metadata"]["annotations"] == {"x": "1"}
    assert not up_to_date(obj, None)


@given(json_values, json_values)
def test_the_hash_is_of_content_not_key_order(a: Any, b: Any) -> None:
    one = {"metadata": {"name": "n"}, "a": a, "b": b}
    other = {"b": b, "a": a, "metadata": {"name": "n"}}
    assert applied_hash(one) == applied_hash(other)
    assert len(applied_hash(one)) == 32


@given(st.sampled_from(range(8)), st.text(min_size=1, max_size=8), json_values)
def test_whatever_others_write_into_an_applied_object_it_is_not_applied_again(
    index: int, key: str, value: Any
) -> None:
    raw = lc()
    first = plan_cluster(raw, [], CELL, NOW)
    objects = copy.deepcopy(stored(first))
    target = objects[index]
    target.setdefault("spec", {})[key] = value
    target["status"] = {key: value}
    target["metadata"].setdefault("labels", {})[f"other/{key}"[:60]] = "x"
    assert plan_cluster(with_status(raw, first), objects, CELL, NOW).apply == ()


@given(st.integers(min_value=0, max_value=50))
def test_a_spec_change_is_applied_to_exactly_the_objects_it_changes(workers: int) -> None:
    raw = lc()
    first = plan_cluster(raw, [], CELL, NOW)
    changed = with_status(raw, first)
    changed["spec"]["nodes"]["workers"] = workers
    plan = plan_cluster(changed, stored(first), CELL, NOW)
    assert [o["kind"] for o in plan.apply] == ([] if workers == 2 else ["MachineDeployment"])
