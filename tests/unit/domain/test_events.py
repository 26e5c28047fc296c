"""Events as the controllers record them."""

from __future__ import annotations

from lattice.domain import events


def test_a_namespaced_object_gets_its_event_in_its_namespace() -> None:
    involved = {
        "apiVersion": "infrastructure.lattice.dev/v1alpha1",
        "kind": "LocalMachine",
        "metadata": {"name": "m1", "namespace": "capi-x", "uid": "u1", "resourceVersion": "7"},
    }
    event = events.event_object(
        involved,
        event_type="Warning",
        reason="BootFailed",
        message="x" * 2000,
        now="2026-12-06T00:00:00Z",
        suffix="abc",
        component="lattice-local-infra",
        instance="i1",
    )
    assert event["metadata"] == {"name": "m1.abc", "namespace": "capi-x"}
    assert event["involvedObject"] == {
        "apiVersion": "infrastructure.lattice.dev/v1alpha1",
        "kind": "LocalMachine",
        "name": "m1",
        "namespace": "capi-x",
        "uid": "u1",
        "resourceVersion": "7",
    }
    assert len(event["message"]) == events.MESSAGE_LIMIT
    assert (event["type"], event["reason"], event["count"]) == ("Warning", "BootFailed", 1)
    assert event["firstTimestamp"] == event["lastTimestamp"] == "2026-12-06T00:00:00Z"
    assert event["source"] == {"component": "lattice-local-infra"}
    assert event["reportingInstance"] == "i1"


def test_a_cluster_scoped_object_needs_a_namespace_for_its_event() -> None:
    involved = {"apiVersion": "lattice.dev/v1alpha1", "kind": "LatticeCluster", "metadata": {"name": "c"}}
    event = events.event_object(
        involved,
        event_type="Normal",
        reason="Applied",
        message="ok",
        now="t",
        suffix="s",
        component="c",
        instance="i",
        namespace="default",
    )
    assert event["metadata"]["namespace"] == "default"
    assert "namespace" not in event["involvedObject"]
    bare = events.event_object(
        {}, event_type="Normal", reason="R", message="m", now="t", suffix="s", component="c", instance="i"
    )
    assert bare["metadata"] == {"name": "unknown.s", "namespace": "default"}
