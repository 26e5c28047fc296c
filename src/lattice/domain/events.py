"""Kubernetes Events as the controllers record them: pure (the caller passes the time and a
unique suffix; writing is the caller's, best-effort)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

MESSAGE_LIMIT = 1024


def event_object(
    involved: Mapping[str, Any],
    *,
    event_type: Literal["Normal", "Warning"],
    reason: str,
    message: str,
    now: str,
    suffix: str,
    component: str,
    instance: str,
    namespace: str | None = None,
) -> dict[str, Any]:
    """A ``v1`` Event about ``involved`` (an object as the API returns it), in its namespace
    unless ``namespace`` is given (cluster-scoped objects' events need one)."""
    meta = involved.get("metadata") or {}
    return {
        "apiVersion": "v1",
        "kind": "Event",
        "metadata": {
            "name": f"{meta.get('name', 'unknown')}.{suffix}",
            "namespace": namespace or meta.get("namespace") or "default",
        },
        "involvedObject": {
            "apiVersion": involved.get("apiVersion", ""),
            "kind": involved.get("kind", ""),
            "name": meta.get("name", ""),
            **({"namespace": meta["namespace"]} if meta.get("namespace") else {}),
            "uid": meta.get("uid", ""),
            "resourceVersion": meta.get("resourceVersion", ""),
        },
        "reason": reason,
        "message": message[:MESSAGE_LIMIT],
        "type": event_type,
        "firstTimestamp": now,
        "lastTimestamp": now,
        "count": 1,
        "source": {"component": component},
        "reportingComponent": component,
        "reportingInstance": instance,
    }
