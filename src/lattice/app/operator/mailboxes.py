"""What one part of the operator hands another without holding it: the composition root creates
a mailbox first, gives the sending side its ``put`` and the receiving side starts ``serve`` once it
exists. No part is patched after construction (no late hooks).

* :class:`Wakeups`: cluster names the ClusterController wants the cell's coordinator to look at
  (a deleted, self-managing child whose objects must be taken back first). A name already
  waiting is not queued twice.
* :class:`AgentStatusMailbox`: the agent hub's status sink. It keeps the newest status of each
  cluster (a status is the whole of what the hub knows of an agent, so the newest one says all
  the older ones did) and delivers it to the coordinator: in order for one cluster, clusters in
  parallel, as the hub's own awaiting of each write did before. Statuses that arrive before the
  coordinator serves are kept, not lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from lattice.domain import agent

log = logging.getLogger("lattice.cell")


class Wakeups:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._queued: set[str] = set()

    def put(self, name: str) -> None:
        if name not in self._queued:
            self._queued.add(name)
            self._queue.put_nowait(name)

    async def serve(self, handle: Callable[[str], None], stop: asyncio.Event) -> None:
        """Hand each name to ``handle`` until ``stop`` is set."""
        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                got = asyncio.create_task(self._queue.get())
                await asyncio.wait({got, stopped}, return_when=asyncio.FIRST_COMPLETED)
                if not got.done():
                    got.cancel()
                    break
                name = got.result()
                self._queued.discard(name)
                try:
                    handle(name)
                except Exception:
                    log.exception("a wake-up failed", extra={"cluster": name})
        finally:
            stopped.cancel()


class AgentStatusMailbox:
    def __init__(self) -> None:
        self._latest: dict[str, agent.AgentStatus] = {}
        self._arrived = asyncio.Event()
        self.delivered = 0

    async def record(self, status: agent.AgentStatus) -> None:
        """The hub's sink (``lattice.ports.agent.AgentStatusSink``): never blocks on a write."""
        self._latest[status.cluster_name] = status
        self._arrived.set()

    async def serve(
        self, deliver: Callable[[agent.AgentStatus], Awaitable[None]], stop: asyncio.Event
    ) -> None:
        """Deliver every cluster's newest status until ``stop`` is set; a failed delivery is
        logged (the next status of that cluster is delivered as usual)."""
        workers: dict[str, asyncio.Task[None]] = {}

        async def drain(name: str) -> None:
            while (status := self._latest.pop(name, None)) is not None:
                try:
                    await deliver(status)
                    self.delivered += 1
                except Exception:
                    log.exception("recording an agent's status failed", extra={"cluster": name})

        stopped = asyncio.create_task(stop.wait())
        try:
            while not stop.is_set():
                self._arrived.clear()
                for name in list(self._latest):
                    if name not in workers or workers[name].done():
                        workers[name] = asyncio.create_task(drain(name), name=f"agent-status-{name}")
                for name in [n for n, task in workers.items() if task.done()]:
                    del workers[name]
                arrived = asyncio.create_task(self._arrived.wait())
                await asyncio.wait({arrived, stopped}, return_when=asyncio.FIRST_COMPLETED)
                arrived.cancel()
        finally:
            stopped.cancel()
            for task in workers.values():
                task.cancel()
            await asyncio.gather(*workers.values(), return_exceptions=True)
