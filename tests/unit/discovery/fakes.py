"""Small working in-memory implementations of the discovery ports."""

from __future__ import annotations

import datetime as dt
import enum

import anyio

from lattice.app.discovery.catalog_service import CatalogService
from lattice.domain.discovery.messages import (
    ServiceAnnouncement,
    ServiceCatalogSync,
    ServiceQuery,
    ServiceQueryResponse,
)
from lattice.ports.discovery import ParentChannel as ParentChannelLike
from lattice.ports.discovery import ParentTimeout, ParentUnavailable
from tests.unit.discovery.factories import T0


class FakeClock:
    def __init__(self, start: float = 1000.0) -> None:
        self._mono = start
        self._start = start

    def now(self) -> dt.datetime:
        return T0 + dt.timedelta(seconds=self._mono - self._start)

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self._mono += seconds


class FakeIds:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> str:
        self.count += 1
        return f"q-{self.count}"


class Mode(enum.Enum):
    ANSWER = "answer"  # answer from the catalog service
    TIMEOUT = "timeout"  # the adapter's own deadline fires
    HANG = "hang"  # never answers: the coordinator's deadline must fire
    UNAVAILABLE = "unavailable"  # no stream
    WRONG_ID = "wrong-id"  # answers with another query id
    GARBLED = "garbled"  # found=true without a service


class FakeParentChannel:
    """A parent reachable (or not) at will, answering from a real CatalogService."""

    def __init__(self, service: CatalogService, cluster: str) -> None:
        self.service = service
        self.cluster = cluster
        self.mode = Mode.ANSWER
        self.queries: list[ServiceQuery] = []
        self.announcements: list[ServiceAnnouncement] = []
        self.syncs: list[ServiceCatalogSync] = []

    async def _gate(self) -> None:
        if self.mode is Mode.UNAVAILABLE:
            raise ParentUnavailable("no stream")
        if self.mode is Mode.TIMEOUT:
            raise ParentTimeout("deadline")
        if self.mode is Mode.HANG:
            await anyio.sleep_forever()

    async def query(self, query: ServiceQuery) -> ServiceQueryResponse:
        self.queries.append(query)
        await self._gate()
        (out,) = self.service.handle_agent_message(self.cluster, query)
        assert isinstance(out.message, ServiceQueryResponse)
        if self.mode is Mode.WRONG_ID:
            return ServiceQueryResponse(query_id="other", found=False)
        if self.mode is Mode.GARBLED:
            return ServiceQueryResponse(query_id=query.query_id, found=True, service=None)
        return out.message

    async def announce(self, announcement: ServiceAnnouncement) -> None:
        self.announcements.append(announcement)
        await self._gate()
        self.service.handle_agent_message(self.cluster, announcement)

    async def sync(self, sync: ServiceCatalogSync) -> None:
        self.syncs.append(sync)
        await self._gate()
        self.service.handle_agent_message(self.cluster, sync)


class FlakyChannel:
    """Wraps a real ParentChannel; fails (or hangs) on demand like a broken stream would."""

    def __init__(self, inner: ParentChannelLike) -> None:
        self.inner = inner
        self.mode = Mode.ANSWER
        self.queries = 0

    async def _gate(self) -> None:
        if self.mode is Mode.UNAVAILABLE:
            raise ParentUnavailable("stream error")
        if self.mode is Mode.TIMEOUT:
            raise ParentTimeout("deadline")
        if self.mode is Mode.HANG:
            await anyio.sleep_forever()

    async def query(self, query: ServiceQuery) -> ServiceQueryResponse:
        self.queries += 1
        await self._gate()
        return await self.inner.query(query)

    async def announce(self, announcement: ServiceAnnouncement) -> None:
        await self._gate()
        await self.inner.announce(announcement)

    async def sync(self, sync: ServiceCatalogSync) -> None:
        await self._gate()
        await self.inner.sync(sync)
