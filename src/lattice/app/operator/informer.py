"""List-then-watch caches of Kubernetes objects that survive API server restarts.

Each informer lists, then watches from the list's resourceVersion with bookmarks and a server-side
timeout (so a silently dead watch is replaced within ``watch_timeout`` seconds), relists on 410
Gone, and retries with capped exponential backoff while the API server is unavailable. Handlers
are called for every change; a periodic resync is the controller's job.

A watch event older than what :meth:`Informer.update` recorded (the response of a later write)
does not replace it: a reconcile between the two would otherwise plan from the past.

A deleted object leaves a tombstone (its key and the resourceVersion of its deletion), so the
response of a write made before the deletion, handed to :meth:`Informer.update` after the watch
reported it, does not bring the object back: it would stay cached until the next relist.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from lattice.ports import kube
from lattice.ports.kube import KubeApi, Obj

log = logging.getLogger("lattice.informer")

Key = tuple[str, str]  # (namespace or "", name)
Handler = Callable[[str, Obj], None]

MAX_TOMBSTONES = 4096
"""Deleted keys remembered (the oldest are forgotten first): enough for the writes in flight."""


def key_of(obj: Obj) -> Key:
    meta = obj.get("metadata", {})
    return (meta.get("namespace") or "", meta["name"])


class Informer:
    def __init__(
        self,
        api: KubeApi,
        api_version: str,
        kind: str,
        *,
        label_selector: str | None = None,
        handler: Handler | None = None,
        watch_timeout: int = 240,
        max_backoff: float = 10.0,
    ) -> None:
        self.api = api
        self.api_version = api_version
        self.kind = kind
        self.label_selector = label_selector
        self.store: dict[Key, Obj] = {}
        self._by_namespace: dict[str, dict[Key, Obj]] = {}  # the same objects, by namespace
        self._tombstones: dict[Key, int] = {}  # deleted key → resourceVersion of its deletion
        self.synced = asyncio.Event()
        self._handler = handler
        self._watch_timeout = watch_timeout
        self._max_backoff = max_backoff
        self.restarts = 0

    def get(self, namespace: str | None, name: str) -> Obj | None:
        return self.store.get((namespace or "", name))

    def items(self) -> list[Obj]:
        return list(self.store.values())

    def in_namespace(self, namespace: str | None) -> list[Obj]:
        """The objects of one namespace, without a scan of the whole store."""
        return list(self._by_namespace.get(namespace or "", {}).values())

    def _put(self, key: Key, obj: Obj) -> None:
        self.store[key] = obj
        self._by_namespace.setdefault(key[0], {})[key] = obj

    def _drop(self, key: Key, version: int) -> None:
        self._tombstones.pop(key, None)
        self._tombstones[key] = version
        while len(self._tombstones) > MAX_TOMBSTONES:
            del self._tombstones[next(iter(self._tombstones))]
        self.store.pop(key, None)
        objects = self._by_namespace.get(key[0])
        if objects is not None:
            objects.pop(key, None)
            if not objects:
                del self._by_namespace[key[0]]

    def update(self, obj: Obj) -> None:
        """Record an object we just wrote, so a reconcile before the watch event sees it."""
        key = key_of(obj)
        if _rv(obj) <= self._tombstones.get(key, -1):
            return  # deleted since this write
        current = self.store.get(key)
        if current is None or _rv(obj) >= _rv(current):
            self._put(key_of(obj), obj)

    async def run(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._list_and_watch()
                backoff = 0.1
            except kube.Gone:
                log.info("watch expired; relisting", extra={"kind": self.kind})
            except (kube.Unavailable, kube.KubeError) as exc:
                self.restarts += 1
                log.warning(
                    "watch failed; retrying",
                    extra={"kind": self.kind, "error": str(exc), "retry_in_s": backoff},
                )
                await asyncio.sleep(backoff)
                backoff = min(self._max_backoff, backoff * 2)

    async def _list_and_watch(self) -> None:
        listed = await self.api.list(self.api_version, self.kind, label_selector=self.label_selector)
        fresh = {key_of(o): o for o in listed.items}
        for key, obj in list(self.store.items()):
            if key not in fresh:
                self._drop(key, _version(listed.resource_version))
                self._notify("DELETED", obj)
        for key, obj in fresh.items():
            old = self.store.get(key)
            self._put(key, obj)
            if old is None or _rv(old) != _rv(obj):
                self._notify("ADDED" if old is None else "MODIFIED", obj)
        self.synced.set()
        version = listed.resource_version
        while True:
            async for event in self.api.watch(
                self.api_version,
                self.kind,
                version,
                label_selector=self.label_selector,
                timeout_seconds=self._watch_timeout,
            ):
                obj = event.object
                if event.type == "BOOKMARK":
                    version = obj.get("metadata", {}).get("resourceVersion", version)
                    continue
                version = obj.get("metadata", {}).get("resourceVersion", version)
                if event.type == "DELETED":
                    self._drop(key_of(obj), _rv(obj))
                else:
                    obj.setdefault("apiVersion", self.api_version)
                    obj.setdefault("kind", self.kind)
                    current = self.store.get(key_of(obj))
                    # A write's response recorded by update() may be newer than this event: the
                    # cache never goes back to an older version of an object.
                    if current is None or _rv(obj) >= _rv(current):
                        self._put(key_of(obj), obj)
                self._notify(event.type, obj)

    def _notify(self, event_type: str, obj: Obj) -> None:
        if self._handler is not None:
            try:
                self._handler(event_type, obj)
            except Exception:
                log.exception("informer handler failed", extra={"kind": self.kind})


def _rv(obj: Any) -> int:
    return _version(obj.get("metadata", {}).get("resourceVersion", "0"))


def _version(value: object) -> int:
    try:
        return int(str(value))
    except (TypeError, ValueError):
        return 0
