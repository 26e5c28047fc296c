"""The mailboxes between the agent hub, the ClusterController and the cell's coordinator."""

from __future__ import annotations

import asyncio
import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.app.operator.mailboxes import AgentStatusMailbox, Wakeups
from lattice.domain.agent import AgentStatus, Connection

CLUSTERS = ("a", "b", "c")


def status(name: str, version: str = "") -> AgentStatus:
    return AgentStatus(name, Connection.CONNECTED, agent_version=version)


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_a_waiting_name_is_queued_once_and_handled_in_order() -> None:
    async def scenario() -> list[str]:
        wakeups, handled, stop = Wakeups(), [], asyncio.Event()
        for name in ("a", "b", "a", "c", "b"):
            wakeups.put(name)
        serving = asyncio.create_task(wakeups.serve(handled.append, stop))
        await settle()
        wakeups.put("a")  # handled already: queued again
        await settle()
        stop.set()
        await asyncio.wait_for(serving, 5)
        return handled

    assert asyncio.run(scenario()) == ["a", "b", "c", "a"]


def test_a_failing_wakeup_is_logged_and_the_next_is_handled(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> list[str]:
        wakeups, handled, stop = Wakeups(), [], asyncio.Event()

        def handle(name: str) -> None:
            if name == "bad":
                raise RuntimeError("boom")
            handled.append(name)

        wakeups.put("bad")
        wakeups.put("good")
        serving = asyncio.create_task(wakeups.serve(handle, stop))
        await settle()
        stop.set()
        await asyncio.wait_for(serving, 5)
        return handled

    with caplog.at_level(logging.ERROR, logger="lattice.cell"):
        assert asyncio.run(scenario()) == ["good"]
    assert "a wake-up failed" in caplog.text


@given(st.lists(st.sampled_from(CLUSTERS), max_size=30), st.integers(1, 4))
def test_each_cluster_gets_its_newest_status_in_order(arrivals: list[str], every: int) -> None:
    """Statuses recorded before and while the mailbox serves: every cluster's last delivered
    status is its newest, and one cluster's deliveries keep their arrival order."""

    async def scenario() -> dict[str, list[int]]:
        mailbox, stop = AgentStatusMailbox(), asyncio.Event()
        delivered: dict[str, list[int]] = {}

        async def deliver(s: AgentStatus) -> None:
            await asyncio.sleep(0)  # a write: other clusters go on meanwhile
            delivered.setdefault(s.cluster_name, []).append(int(s.agent_version))

        half = len(arrivals) // 2
        for number, name in enumerate(arrivals[:half]):  # before the coordinator exists: kept
            await mailbox.record(status(name, str(number)))
        serving = asyncio.create_task(mailbox.serve(deliver, stop))
        for number, name in enumerate(arrivals[half:], start=half):
            await mailbox.record(status(name, str(number)))
            if number % every == 0:
                await settle()
        await settle()
        stop.set()
        await asyncio.wait_for(serving, 5)
        return delivered

    delivered = asyncio.run(scenario())
    for cluster in CLUSTERS:
        sent = [number for number, name in enumerate(arrivals) if name == cluster]
        if not sent:
            assert cluster not in delivered
            continue
        got = delivered[cluster]
        assert got[-1] == sent[-1]
        assert set(got) <= set(sent)
        assert got == sorted(got)


def test_a_slow_cluster_does_not_hold_the_others_and_a_failure_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def scenario() -> tuple[list[str], int]:
        mailbox, stop, release = AgentStatusMailbox(), asyncio.Event(), asyncio.Event()
        delivered: list[str] = []

        async def deliver(s: AgentStatus) -> None:
            if s.cluster_name == "slow":
                await release.wait()
            if s.cluster_name == "bad":
                raise RuntimeError("the API server said no")
            delivered.append(f"{s.cluster_name}:{s.agent_version}")

        serving = asyncio.create_task(mailbox.serve(deliver, stop))
        await mailbox.record(status("slow", "1"))
        await mailbox.record(status("bad", "1"))
        await mailbox.record(status("fast", "1"))
        await settle()
        await mailbox.record(status("bad", "2"))
        await mailbox.record(status("slow", "2"))
        await settle()
        before = list(delivered)
        release.set()
        await settle()
        stop.set()
        await asyncio.wait_for(serving, 5)
        return [*before, "|", *delivered], mailbox.delivered

    with caplog.at_level(logging.ERROR, logger="lattice.cell"):
        seen, count = asyncio.run(scenario())
    assert seen == ["fast:1", "|", "fast:1", "slow:1", "slow:2"]
    assert count == 3
    assert caplog.text.count("recording an agent's status failed") == 2


def test_stopping_cancels_a_delivery_in_flight() -> None:
    async def scenario() -> bool:
        mailbox, stop = AgentStatusMailbox(), asyncio.Event()
        cancelled = asyncio.Event()

        async def deliver(_: AgentStatus) -> None:
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                cancelled.set()
                raise

        serving = asyncio.create_task(mailbox.serve(deliver, stop))
        await mailbox.record(status("a"))
        await settle()
        stop.set()
        await asyncio.wait_for(serving, 5)
        return cancelled.is_set()

    assert asyncio.run(scenario())
