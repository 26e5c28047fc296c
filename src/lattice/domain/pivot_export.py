"""The pure parts of a pivot: reading a ``clusterctl move --to-directory`` export, deciding what
to delete, and checking that every object sits exactly once on exactly one side.

``clusterctl move`` writes one file per object, named ``Kind_Namespace_Name.yaml``, each holding
the full object as JSON (status, uid and managedFields included). ``--from-directory`` recreates
the objects owners-first but drops ``.status`` (the status subresource ignores it on create);
the target's own Cluster API controllers recompute it, as after any move.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen

from lattice.domain.errors import FieldError

# clusterctl's annotation telling providers that a delete is a move, not a teardown.
DELETE_FOR_MOVE = "clusterctl.cluster.x-k8s.io/delete-for-move"
# Labels and annotations that differ legitimately between the two sides.
_VOLATILE_ANNOTATIONS = frozenset({DELETE_FOR_MOVE, "cluster.x-k8s.io/paused"})
# Kinds without a status subresource (their status, if any, is part of the object).
# Delete order in the source: dependants before what they depend on; the Cluster last.
_DELETE_RANK = {
    "Machine": 0,
    "KubeadmConfig": 1,
    "MachineSet": 2,
    "MachineDeployment": 3,
    "KubeadmControlPlane": 4,
    "KubeadmConfigTemplate": 5,
    "Secret": 7,
    "ConfigMap": 7,
    "Cluster": 9,
}


@frozen
class ObjectId:
    api_version: str
    kind: str
    namespace: str | None
    name: str

    def __str__(self) -> str:
        where = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind} {where}{self.name}"


@frozen
class ExportedObject:
    file_name: str
    id: ObjectId
    body: dict[str, Any]


def object_id(obj: Mapping[str, Any]) -> ObjectId:
    meta = obj.get("metadata", {})
    return ObjectId(obj["apiVersion"], obj["kind"], meta.get("namespace") or None, meta["name"])


def parse_export(files: Iterable[tuple[str, bytes]]) -> list[ExportedObject] | list[FieldError]:
    """Parse the files of an export; every unreadable file is reported (by its name)."""
    objects: list[ExportedObject] = []
    errors: list[FieldError] = []
    for name, content in files:
        if "/" in name or name.startswith(".") or not name.endswith(".yaml"):
            errors.append(
                FieldError(("files", name), "not a clusterctl move file name (Kind_Namespace_Name.yaml)")
            )
            continue
        try:
            body = json.loads(content)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            errors.append(FieldError(("files", name), f"not a JSON object: {exc}"))
            continue
        if not isinstance(body, dict) or not {"apiVersion", "kind", "metadata"} <= set(body):
            errors.append(FieldError(("files", name), "missing apiVersion, kind or metadata"))
            continue
        if not isinstance(body["metadata"], dict) or "name" not in body["metadata"]:
            errors.append(FieldError(("files", name, "metadata"), "missing name"))
            continue
        objects.append(ExportedObject(name, object_id(body), body))
    return errors if errors else sorted(objects, key=lambda o: o.file_name)


def _delete_rank(oid: ObjectId) -> int:
    if oid.kind in _DELETE_RANK:
        return _DELETE_RANK[oid.kind]
    if oid.kind.endswith("MachineTemplate"):
        return 5
    if oid.kind.endswith("Cluster"):  # the infrastructure cluster
        return 6
    return 8


def deletion_order(ids: Iterable[ObjectId]) -> list[ObjectId]:
    """Source objects in the order to delete them after a successful import."""
    return sorted(ids, key=lambda oid: (_delete_rank(oid), oid.kind, oid.name))


def deletion_waves(ids: Iterable[ObjectId]) -> list[list[ObjectId]]:
    """:func:`deletion_order` cut into waves of one rank each: a wave may be deleted at once
    (no object in it owns another), the next only after it."""
    waves: list[list[ObjectId]] = []
    last: int | None = None
    for oid in deletion_order(ids):
        rank = _delete_rank(oid)
        if rank != last:
            waves.append([])
            last = rank
        waves[-1].append(oid)
    return waves


def content_hash(obj: Mapping[str, Any]) -> str:
    """SHA-256 of what must survive a move: identity, labels, annotations, spec/data, status.

    Server-assigned fields (uid, resourceVersion, managedFields, timestamps, ownerReferences'
    uids) and the move's own markers are left out, so the same object hashes the same on both
    sides of a pivot.
    """
    meta = obj.get("metadata", {})
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _VOLATILE_ANNOTATIONS}
    canonical = {
        "apiVersion": obj.get("apiVersion"),
        "kind": obj.get("kind"),
        "namespace": meta.get("namespace"),
        "name": meta.get("name"),
        "labels": meta.get("labels") or {},
        "annotations": annotations,
        "owners": sorted((o.get("kind", ""), o.get("name", "")) for o in meta.get("ownerReferences") or []),
        "spec": _without_paused(obj.get("spec")),
        "data": obj.get("data"),
        "stringData": obj.get("stringData"),
        "type": obj.get("type"),
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(encoded).hexdigest()


def _without_paused(spec: Any) -> Any:
    if isinstance(spec, dict) and "paused" in spec:
        return {k: v for k, v in spec.items() if k != "paused"}
    return spec


@frozen
class SideReport:
    """Where each object of a pivot ended up."""

    only_source: tuple[str, ...]
    only_target: tuple[str, ...]
    on_both: tuple[str, ...]
    missing: tuple[str, ...]
    changed: tuple[str, ...]

    @property
    def moved_exactly_once(self) -> bool:
        return not (self.only_source or self.on_both or self.missing or self.changed)


def compare_sides(
    exported: Sequence[Mapping[str, Any]],
    source_now: Sequence[Mapping[str, Any]],
    target_now: Sequence[Mapping[str, Any]],
) -> SideReport:
    """Check a finished pivot: every exported object is on the target, unchanged, and gone from
    the source."""
    expected = {str(object_id(o)): content_hash(o) for o in exported}
    source = {str(object_id(o)) for o in source_now} & set(expected)
    target = {str(object_id(o)): content_hash(o) for o in target_now if str(object_id(o)) in expected}
    return SideReport(
        only_source=tuple(sorted(source - set(target))),
        only_target=tuple(sorted(set(target) - source)),
        on_both=tuple(sorted(source & set(target))),
        missing=tuple(sorted(set(expected) - source - set(target))),
        changed=tuple(sorted(k for k, h in target.items() if h != expected[k])),
    )


# Label clusterctl puts on the CRDs of every provider; ``clusterctl move`` lists only these kinds.
CLUSTERCTL_LABEL = "clusterctl.cluster.x-k8s.io"


def move_kinds(crds: Iterable[Mapping[str, Any]]) -> list[tuple[str, str]]:
    """``(apiVersion, kind)`` at the storage version of each CRD ``clusterctl move`` will list.

    A kube-apiserver builds the watch cache of a custom resource on its first request and answers
    lists with 429 (Retry-After: 1 s) until it is ready; clusterctl lists the kinds one after the
    other, so an export from a cell whose CAPI kinds were never listed waits about a second per
    kind. Listing these kinds concurrently beforehand makes that wait happen once, in parallel.
    CRDs without a served storage version are skipped."""
    kinds: set[tuple[str, str]] = set()
    for crd in crds:
        spec = crd.get("spec") or {}
        group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
        if not group or not kind:
            continue
        for version in spec.get("versions") or ():
            if version.get("storage") and version.get("served") and version.get("name"):
                kinds.add((f"{group}/{version['name']}", kind))
    return sorted(kinds)
