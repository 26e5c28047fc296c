"""What Lattice needs from a Kubernetes API server, as a narrow Protocol.

Objects travel as plain JSON-shaped dicts (the wire format); no client library's types appear
here. Errors are port-level: every adapter translates its library's errors into these.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any, Literal, Protocol

from attrs import frozen

from lattice.domain.refs import ResourceRef

__all__ = ["ResourceRef"]  # re-exported: the port speaks of objects by it

Obj = dict[str, Any]


class KubeError(Exception):
    """Base of every error a KubeApi adapter raises."""


class NotFound(KubeError):
    pass


class Conflict(KubeError):
    """Optimistic-concurrency failure or AlreadyExists."""


class Invalid(KubeError):
    """The server rejected the object (422 Invalid, 400 BadRequest); the message says why."""


class Gone(KubeError):
    """A watch's resourceVersion is too old (410): relist."""


class Unavailable(KubeError):
    pass


@frozen
class WatchEvent:
    type: Literal["ADDED", "MODIFIED", "DELETED", "BOOKMARK"]
    object: Obj


@frozen
class ListResult:
    items: list[Obj]
    resource_version: str


class KubeApi(Protocol):
    async def get(self, ref: ResourceRef) -> Obj: ...

    async def list(
        self,
        api_version: str,
        kind: str,
        namespace: str | None = None,
        label_selector: str | None = None,
    ) -> ListResult: ...

    def watch(
        self,
        api_version: str,
        kind: str,
        resource_version: str,
        namespace: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: int = 300,
    ) -> AsyncIterator[WatchEvent]:
        """Events after ``resource_version`` until the server ends the watch. Raises Gone."""
        ...

    async def apply(self, obj: Obj, field_manager: str, *, dry_run: bool = False) -> Obj:
        """Server-side apply (force), returning the object as stored."""
        ...

    async def apply_status(self, obj: Obj, field_manager: str) -> Obj:
        """Server-side apply to the status subresource; ``obj`` holds identity and ``status``."""
        ...

    async def create(self, obj: Obj) -> Obj: ...

    async def replace(self, obj: Obj) -> Obj:
        """PUT with the object's resourceVersion: raises Conflict if it changed meanwhile."""
        ...

    async def merge_patch(self, ref: ResourceRef, patch: Obj) -> Obj: ...

    async def delete(self, ref: ResourceRef) -> None:
        """Delete (background propagation). NotFound is not an error here."""
        ...
