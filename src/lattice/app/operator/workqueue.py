"""A deduplicating work queue with per-key exponential backoff, like client-go's.

A key is processed by at most one worker at a time; a key added while it is being processed is
processed again afterwards. Failed keys come back after ``base * 2**failures`` seconds (capped),
scaled by a jitter factor in [0.5, 1.5) so that failures do not retry in lock-step.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)


def backoff_delay(failures: int, base: float, cap: float, jitter: float) -> float:
    """Delay before retry number ``failures`` (1-based); ``jitter`` is a sample of [0, 1)."""
    raw: float = min(cap, base * 2.0 ** max(0, failures - 1))
    return raw * (0.5 + jitter)


class WorkQueue(Generic[K]):
    def __init__(
        self,
        *,
        random: Callable[[], float],
        base_delay: float = 0.05,
        max_delay: float = 60.0,
    ) -> None:
        self._queue: asyncio.Queue[K] = asyncio.Queue()
        self._queued: set[K] = set()
        self._processing: set[K] = set()
        self._dirty: set[K] = set()
        self._failures: dict[K, int] = {}
        self._timers: dict[K, asyncio.TimerHandle] = {}
        self._random = random
        self._base = base_delay
        self._cap = max_delay
        self._shutdown = False

    def __len__(self) -> int:
        return len(self._queued)

    def add(self, key: K) -> None:
        if self._shutdown:
            return
        if key in self._processing:
            self._dirty.add(key)
            return
        if key in self._queued:
            return
        self._queued.add(key)
        self._queue.put_nowait(key)

    def add_after(self, key: K, delay: float) -> None:
        if delay <= 0:
            self.add(key)
            return
        existing = self._timers.get(key)
        loop = asyncio.get_running_loop()
        if existing is not None:
            if existing.when() <= loop.time() + delay:
                return  # an earlier retry is already scheduled
            existing.cancel()
        self._timers[key] = loop.call_later(delay, self._fire, key)

    def _fire(self, key: K) -> None:
        self._timers.pop(key, None)
        self.add(key)

    def add_rate_limited(self, key: K) -> float:
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = backoff_delay(failures, self._base, self._cap, self._random())
        self.add_after(key, delay)
        return delay

    def forget(self, key: K) -> None:
        self._failures.pop(key, None)

    def failures(self, key: K) -> int:
        return self._failures.get(key, 0)

    async def get(self) -> K:
        key = await self._queue.get()
        self._queued.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: K) -> None:
        self._processing.discard(key)
        if key in self._dirty:
            self._dirty.discard(key)
            self.add(key)

    def shutdown(self) -> None:
        self._shutdown = True
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
        with contextlib.suppress(Exception):
            while True:
                self._queue.get_nowait()
        self._queued.clear()


async def serve(
    queue: WorkQueue[K],
    reconcile: Callable[[K], Awaitable[float | None]],
    *,
    logger: logging.Logger,
    what: str,
) -> None:
    """The one worker loop of the app's controllers: take a key, reconcile it, then requeue it
    after the delay the reconcile returned, or retry it with backoff if it raised (logged with
    the key and the error; a failing reconcile never ends the loop). Runs until cancelled."""
    while True:
        key = await queue.get()
        try:
            requeue = await reconcile(key)
        except Exception as exc:
            delay = queue.add_rate_limited(key)
            logger.warning(
                "%s reconcile failed; will retry",
                what,
                extra={
                    "key": str(key),
                    "error": f"{type(exc).__name__}: {exc}",
                    "retry_in_s": round(delay, 2),
                },
            )
        else:
            queue.forget(key)
            if requeue is not None:
                queue.add_after(key, requeue)
        finally:
            queue.done(key)
