"""Which Kubernetes object: the one reference type of the domain, the ports and the adapters."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from attrs import frozen


@frozen
class ResourceRef:
    api_version: str
    kind: str
    name: str
    namespace: str | None = None

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> ResourceRef:
        meta = obj.get("metadata", {})
        return cls(obj["apiVersion"], obj["kind"], meta["name"], meta.get("namespace"))

    @property
    def group_kind(self) -> tuple[str, str]:
        """The API group ("" for the core group) and kind."""
        return (self.api_version.rpartition("/")[0], self.kind)

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"
