"""Kubernetes Events as the controllers record them: pure (the caller passes the time and a
unique suffix; writing is the caller's, best-effort)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from attrs import frozen

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


# Repeats of one Event are counted on it, as client-go's EventCorrelator does: the first is
# created, each identical one after it (same object, type, reason, message, source) updates that
# Event's ``count`` and ``lastTimestamp`` instead of creating another.


@frozen
class EventKey:
    """What makes two Events the same Event (client-go's ``getEventKey``)."""

    namespace: str
    involved_kind: str
    involved_name: str
    involved_uid: str
    event_type: str
    reason: str
    message: str
    component: str


def key_of(event: Mapping[str, Any]) -> EventKey:
    """The key of an Event body as :func:`event_object` builds it."""
    involved = event.get("involvedObject") or {}
    return EventKey(
        namespace=str((event.get("metadata") or {}).get("namespace", "")),
        involved_kind=str(involved.get("kind", "")),
        involved_name=str(involved.get("name", "")),
        involved_uid=str(involved.get("uid", "")),
        event_type=str(event.get("type", "")),
        reason=str(event.get("reason", "")),
        message=str(event.get("message", "")),
        component=str((event.get("source") or {}).get("component", "")),
    )


def repeat_patch(count: int, now: str) -> dict[str, Any]:
    """The merge patch that records ``count`` occurrences of an Event, the last at ``now``."""
    return {"count": count, "lastTimestamp": now}
