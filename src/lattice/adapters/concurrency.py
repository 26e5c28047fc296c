"""Run independent awaitables at once and let every one finish before reporting a failure."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Iterable
from typing import TypeVar

T = TypeVar("T")


async def gather_settled(aws: Iterable[Awaitable[T]]) -> tuple[list[T], BaseException | None]:
    """The results of those that succeeded, in order, and the first failure (None if none).

    Unlike a bare :func:`asyncio.gather`, no awaitable is left running in the background when
    another fails, and the successes are not lost."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    ok = [r for r in results if not isinstance(r, BaseException)]
    errors = [r for r in results if isinstance(r, BaseException)]
    return ok, (errors[0] if errors else None)
