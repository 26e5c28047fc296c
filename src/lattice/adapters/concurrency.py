"""Run awaitables at once: independent ones to the end before reporting a failure
(:func:`gather_settled`), dependent ones stopped at the first failure (:func:`failures_of_all`)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, TypeVar

T = TypeVar("T")


async def gather_settled(aws: Iterable[Awaitable[T]]) -> tuple[list[T], BaseException | None]:
    """The results of those that succeeded, in order, and the first failure (None if none).

    Unlike a bare :func:`asyncio.gather`, no awaitable is left running in the background when
    another fails, and the successes are not lost."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    return ok, (errors[0] if errors else None)


async def failures_of_all(coros: Iterable[Coroutine[Any, Any, None]]) -> list[BaseException]:
    """Run ``coros`` at once; on the first failure the others are cancelled (one may wait for
    another that failed: nothing is left waiting forever). Returns every failure that happened,
    nested exception groups flattened; empty when all succeeded."""
    try:
        async with asyncio.TaskGroup() as group:
            for coro in coros:
                group.create_task(coro)
    except BaseExceptionGroup as failed:
        return _leaves(failed)
    return []


def _leaves(group: BaseExceptionGroup[BaseException]) -> list[BaseException]:
    return [
        leaf for e in group.exceptions for leaf in (_leaves(e) if isinstance(e, BaseExceptionGroup) else [e])
    ]
