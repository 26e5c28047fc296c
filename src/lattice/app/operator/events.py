"""Records Kubernetes Events the way client-go's recorder does: one Event per distinct
occurrence, repeats counted on it (``count``, ``lastTimestamp``) instead of one object each.

Best-effort and bounded: a failed write is logged, never raised; the cache of Events seen holds
the last ``cache_size`` keys (client-go keeps 4096). Repeats that arrive while the write of the
same Event is in flight are folded into one patch that carries the latest count. An Event that
expired on the server (its TTL, an hour by default) is created afresh.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Literal

from lattice.domain import conditions, events
from lattice.ports import kube
from lattice.ports.clock import Clock
from lattice.ports.kube import KubeApi, ResourceRef

log = logging.getLogger("lattice.events")

CACHE_SIZE = 4096


class _Seen:
    def __init__(self, name: str) -> None:
        self.name = name
        self.count = 0  # occurrences recorded here
        self.written = 0  # occurrences the server's copy counts
        self.lock = asyncio.Lock()


class EventRecorder:
    def __init__(
        self,
        api: KubeApi,
        clock: Clock,
        *,
        component: str,
        instance: str,
        reporting_component: str | None = None,
        namespace: str | None = None,
        cache_size: int = CACHE_SIZE,
        suffix: Callable[[], str] | None = None,
    ) -> None:
        self.api = api
        self.clock = clock
        self.component = component
        self.instance = instance
        self.reporting_component = reporting_component or component
        self.namespace = namespace
        self.cache_size = cache_size
        self._suffix = suffix or (lambda: uuid.uuid4().hex[:16])
        self._seen: OrderedDict[events.EventKey, _Seen] = OrderedDict()
        self.writes = 0  # requests made (creates and patches), for tests and benchmarks

    def _body(
        self, involved: Mapping[str, Any], event_type: Literal["Normal", "Warning"], reason: str, message: str
    ) -> dict[str, Any]:
        body = events.event_object(
            involved,
            event_type=event_type,
            reason=reason,
            message=message,
            now=conditions.rfc3339(self.clock.now()),
            suffix=self._suffix(),
            component=self.component,
            instance=self.instance,
            namespace=self.namespace,
        )
        body["reportingComponent"] = self.reporting_component
        return body

    async def record(
        self, involved: Mapping[str, Any], event_type: Literal["Normal", "Warning"], reason: str, message: str
    ) -> None:
        """Record one occurrence; never raises a :class:`kube.KubeError`."""
        body = self._body(involved, event_type, reason, message)
        key = events.key_of(body)
        seen = self._seen.get(key)
        if seen is None:
            seen = self._seen[key] = _Seen(body["metadata"]["name"])
            while len(self._seen) > self.cache_size:
                self._seen.popitem(last=False)
        else:
            self._seen.move_to_end(key)
        seen.count += 1
        async with seen.lock:
            if seen.written >= seen.count:
                return  # a write made while this one waited already counted it
            try:
                await self._write(seen, body)
            except kube.KubeError as exc:
                log.warning(
                    "could not record event",
                    extra={"object": body["involvedObject"]["name"], "reason": reason, "error": str(exc)},
                )

    async def _write(self, seen: _Seen, body: dict[str, Any]) -> None:
        count = seen.count
        if seen.written:
            ref = ResourceRef("v1", "Event", seen.name, body["metadata"]["namespace"])
            self.writes += 1
            try:
                await self.api.merge_patch(ref, events.repeat_patch(count, body["lastTimestamp"]))
            except kube.NotFound:
                pass  # expired: created afresh below
            else:
                seen.written = count
                return
            # Counted afresh: the occurrences since the expired copy's last count.
            seen.name = body["metadata"]["name"]
            seen.count = count = seen.count - seen.written
            seen.written = 0
        self.writes += 1
        await self.api.create({**body, "metadata": {**body["metadata"], "name": seen.name}, "count": count})
        seen.written = count
