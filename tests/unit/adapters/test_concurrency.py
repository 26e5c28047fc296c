from __future__ import annotations

import asyncio

import pytest

from lattice.adapters.concurrency import gather_settled

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_every_awaitable_finishes_and_the_first_failure_is_reported() -> None:
    finished: list[int] = []

    async def job(i: int) -> int:
        await asyncio.sleep(0.01 * (3 - i))
        finished.append(i)
        if i in (1, 2):
            raise ValueError(f"job {i}")
        return i

    ok, error = await gather_settled(job(i) for i in range(4))
    assert sorted(finished) == [0, 1, 2, 3]  # nothing left running after a failure
    assert ok == [0, 3]
    assert isinstance(error, ValueError)
    assert str(error) == "job 1"


async def test_no_failure_and_no_work() -> None:
    async def one() -> str:
        return "x"

    assert await gather_settled([one(), one()]) == (["x", "x"], None)
    assert await gather_settled([]) == ([], None)
