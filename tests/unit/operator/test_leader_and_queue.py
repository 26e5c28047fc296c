from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from lattice.app.operator.workqueue import WorkQueue, backoff_delay
from lattice.domain import deploy, leader

NOW = dt.datetime(2026, 11, 23, 12, 0, tzinfo=dt.UTC)


def test_lease_created_when_missing() -> None:
    decision = leader.decide(None, "a", NOW, 15)
    assert isinstance(decision, leader.Acquire)
    assert decision.create
    assert decision.spec["holderIdentity"] == "a"
    assert leader.parse_time(decision.spec["renewTime"]) == NOW


def test_holder_renews_and_others_wait_until_expiry() -> None:
    spec = leader.decide(None, "a", NOW, 15).spec  # type: ignore[union-attr]
    renew = leader.decide(spec, "a", NOW + dt.timedelta(seconds=5), 15)
    assert isinstance(renew, leader.Acquire)
    assert not renew.takeover
    wait = leader.decide(spec, "b", NOW + dt.timedelta(seconds=5), 15)
    assert isinstance(wait, leader.Wait)
    assert wait.holder == "a"
    takeover = leader.decide(spec, "b", NOW + dt.timedelta(seconds=16), 15)
    assert isinstance(takeover, leader.Acquire)
    assert takeover.takeover
    assert takeover.spec["leaseTransitions"] == 1


def test_released_lease_is_taken_over_immediately() -> None:
    spec = leader.decide(None, "a", NOW, 15).spec  # type: ignore[union-attr]
    released = leader.released(spec, NOW)
    decision = leader.decide(released, "b", NOW, 15)
    assert isinstance(decision, leader.Acquire)
    assert decision.spec["holderIdentity"] == "b"


def test_unparseable_times_count_as_expired() -> None:
    assert leader.parse_time("yesterday") is None
    assert leader.parse_time("2026-11-23T12:00:00Z") == NOW
    decision = leader.decide({"holderIdentity": "a", "renewTime": "garbage"}, "b", NOW, 15)
    assert isinstance(decision, leader.Acquire)


@pytest.mark.parametrize(
    ("failures", "jitter", "expected"),
    [(1, 0.5, 0.05), (2, 0.5, 0.1), (3, 0.0, 0.1), (20, 0.5, 60.0), (20, 0.999, 89.94)],
)
def test_backoff_is_exponential_capped_and_jittered(failures: int, jitter: float, expected: float) -> None:
    assert backoff_delay(failures, 0.05, 60.0, jitter) == pytest.approx(expected, rel=1e-3)


async def _queue_behaviour() -> None:
    queue: WorkQueue[str] = WorkQueue(random=lambda: 0.5, base_delay=0.01)
    queue.add("a")
    queue.add("a")
    assert len(queue) == 1
    key = await queue.get()
    queue.add("a")  # while processing: remembered, not queued twice
    assert len(queue) == 0
    queue.done(key)
    assert len(queue) == 1
    assert await queue.get() == "a"
    queue.done("a")
    assert queue.add_rate_limited("b") == pytest.approx(0.01)
    assert queue.failures("b") == 1
    queue.add_after("b", 10)  # a later retry does not replace an earlier one
    assert await asyncio.wait_for(queue.get(), 1) == "b"
    queue.done("b")
    queue.forget("b")
    assert queue.failures("b") == 0
    queue.add_after("c", 10)
    queue.add_after("c", 0.01)  # an earlier retry replaces a later one
    assert await asyncio.wait_for(queue.get(), 1) == "c"
    queue.done("c")
    queue.add_after("d", 0)
    queue.add_after("e", 10)
    queue.shutdown()
    queue.add("f")
    assert len(queue) == 0


def test_work_queue() -> None:
    asyncio.run(_queue_behaviour())


def test_deploy_manifests_are_least_privilege() -> None:
    objs = deploy.operator_manifests("img:1", cluster_name="mgmt", replicas=3)
    kinds = [o["kind"] for o in objs]
    assert kinds == [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "Role",
        "RoleBinding",
        "Deployment",
    ]
    role = objs[2]
    assert all("*" not in r["verbs"] and "*" not in r["resources"] for r in role["rules"])
    deployment = objs[-1]
    assert deployment["spec"]["replicas"] == 3
    assert deployment["spec"]["template"]["spec"]["containers"][0]["args"][-2:] == ["--cluster-name", "mgmt"]
