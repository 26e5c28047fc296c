"""Test doubles of the agent ports: they record what they were asked and can fail on demand.
Test support only: not in the wheel or the image, and not counted in coverage.

* :class:`InMemoryAgentStatusSink` keeps the latest :class:`~lattice.domain.agent.AgentStatus`
  per cluster and the full history, and lets tests wait for a condition;
* :class:`RecordingManifestApplier` and :class:`RecordingPivotImporter` remember what they
  were asked to do (optionally failing on demand);
* :class:`RecordingUnpivoter` hands back fixed files and remembers what it was asked.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from lattice.domain import agent
from lattice.ports.agent import (
    AgentStatusSink,
    ExecutionError,
    ManifestApplier,
    PivotImporter,
    Unpivoter,
)

__all__ = [
    "InMemoryAgentStatusSink",
    "RecordingManifestApplier",
    "RecordingPivotImporter",
    "RecordingUnpivoter",
]


class InMemoryAgentStatusSink:
    def __init__(self) -> None:
        self.latest: dict[str, agent.AgentStatus] = {}
        self.history: list[agent.AgentStatus] = []
        self._changed = asyncio.Condition()

    async def record(self, status: agent.AgentStatus) -> None:
        self.latest[status.cluster_name] = status
        self.history.append(status)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(
        self, predicate: Callable[[dict[str, agent.AgentStatus]], bool], within: float = 10.0
    ) -> None:
        """Wait until ``predicate(latest)`` holds (raises TimeoutError after ``within`` s)."""
        async with asyncio.timeout(within), self._changed:
            await self._changed.wait_for(lambda: predicate(self.latest))


class RecordingUnpivoter:
    def __init__(
        self,
        files: tuple[agent.MoveFile, ...] = (),
        deleting_reason: str | None = None,
        fail_with: str | None = None,
    ) -> None:
        self.files = files
        self.deleting_reason = deleting_reason
        self.fail_with = fail_with
        self.exported: list[agent.Unpivot] = []
        self.released: list[agent.UnpivotComplete] = []

    async def deleting(self) -> str | None:
        return None if self.released else self.deleting_reason

    async def export_own(self, command: agent.Unpivot) -> tuple[agent.MoveFile, ...]:
        if self.fail_with is not None:
            raise ExecutionError(self.fail_with)
        self.exported.append(command)
        return self.files

    async def release(self, command: agent.UnpivotComplete) -> None:
        self.released.append(command)


class RecordingManifestApplier:
    def __init__(self, fail_with: str | None = None) -> None:
        self.applied: list[tuple[bytes, ...]] = []
        self.fail_with = fail_with

    async def apply(self, manifests: tuple[bytes, ...]) -> None:
        if self.fail_with is not None:
            raise ExecutionError(self.fail_with)
        self.applied.append(manifests)


class RecordingPivotImporter:
    def __init__(self, fail_with: str | None = None, delay: float = 0.0) -> None:
        self.imported: list[agent.PivotManifests] = []
        self.fail_with = fail_with
        self.delay = delay

    async def import_move(self, pivot: agent.PivotManifests) -> None:
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail_with is not None:
            raise ExecutionError(self.fail_with)
        self.imported.append(pivot)


_sink: type[AgentStatusSink] = InMemoryAgentStatusSink
_applier: type[ManifestApplier] = RecordingManifestApplier
_importer: type[PivotImporter] = RecordingPivotImporter
_unpivoter: type[Unpivoter] = RecordingUnpivoter
