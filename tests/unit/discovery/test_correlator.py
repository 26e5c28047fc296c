from __future__ import annotations

import anyio
import pytest

from lattice.app.discovery.correlator import QueryCorrelator
from lattice.domain.discovery.messages import ServiceQuery, ServiceQueryResponse
from lattice.ports.discovery import ParentUnavailable

pytestmark = pytest.mark.anyio


def q(qid: str) -> ServiceQuery:
    return ServiceQuery(query_id=qid, environment="prod", service_name="api", requesting_service="frontend")


async def test_responses_are_paired_by_id() -> None:
    sent: list[ServiceQuery] = []

    async def send(query: ServiceQuery) -> None:
        sent.append(query)

    correlator = QueryCorrelator(send)
    results: dict[str, ServiceQueryResponse] = {}

    async def ask(qid: str) -> None:
        results[qid] = await correlator.query(q(qid))

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask, "a")
        tg.start_soon(ask, "b")
        await anyio.wait_all_tasks_blocked()
        assert correlator.pending == 2
        assert not correlator.on_response(ServiceQueryResponse(query_id="zzz", found=False))
        assert correlator.on_response(ServiceQueryResponse(query_id="b", found=True))
        assert correlator.on_response(ServiceQueryResponse(query_id="a", found=False))
    assert results["a"].found is False
    assert results["b"].found is True
    assert [s.query_id for s in sent] == ["a", "b"]
    assert correlator.pending == 0


async def test_stream_break_fails_waiters() -> None:
    async def send(query: ServiceQuery) -> None:
        return None

    correlator = QueryCorrelator(send)
    errors: list[BaseException] = []

    async def ask() -> None:
        try:
            await correlator.query(q("a"))
        except ParentUnavailable as exc:
            errors.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(ask)
        await anyio.wait_all_tasks_blocked()
        assert correlator.fail_all() == 1
    assert len(errors) == 1
    assert correlator.pending == 0


async def test_cancelled_wait_leaves_nothing_behind_and_ids_are_unique() -> None:
    async def send(query: ServiceQuery) -> None:
        return None

    correlator = QueryCorrelator(send)
    with anyio.move_on_after(0.01):
        await correlator.query(q("a"))
    assert correlator.pending == 0

    async with anyio.create_task_group() as tg:
        tg.start_soon(correlator.query, q("dup"))
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(ValueError, match="already in flight"):
            await correlator.query(q("dup"))
        correlator.on_response(ServiceQueryResponse(query_id="dup", found=False))


async def test_send_failure_is_propagated_and_cleaned_up() -> None:
    async def send(query: ServiceQuery) -> None:
        raise ParentUnavailable("no stream")

    correlator = QueryCorrelator(send)
    with pytest.raises(ParentUnavailable):
        await correlator.query(q("a"))
    assert correlator.pending == 0
