"""The move graph of ``clusterctl move``, computed from listed objects: what moves, in which
order, and how owner references are rewired on the target (pure; the native mover's core).

The rules are those of clusterctl v1.14 (``cmd/clusterctl/client/cluster/objectgraph.go`` and
``getMoveSequence``/``buildOwnerChain`` in ``mover.go``):

* Kinds: every CRD labelled ``clusterctl.cluster.x-k8s.io`` (any value), at its storage version,
  plus Secrets and ConfigMaps. A CRD labelled ``clusterctl.cluster.x-k8s.io/move`` moves all its
  objects; one labelled ``.../move-hierarchy`` (and Cluster, ClusterClass, ClusterResourceSet)
  moves its objects and everything they own. The same labels on an object do the same for it.
* Ownership: ``ownerReferences`` by UID; an owner that was not listed is a *virtual* node, which
  never moves and keeps whatever it owns from moving (clusterctl issue #8387). Soft ownership:
  a Secret without owners named ``<cluster>-<purpose>`` (kubeconfig, ca, etcd, sa, proxy,
  apiserver-etcd-client) belongs to that Cluster of its namespace; a Cluster with a topology
  to its ClusterClass; a ClusterResourceSetBinding to the Cluster it names.
* What moves: every object reached from a move-hierarchy object through (soft) ownership, and
  every force-moved object, provided its owners move too; creation goes in groups, a group
  holding every object whose owners are all in earlier groups (owners first).
* On the target each object is created with its owner references rebuilt from its owners' new
  UIDs (apiVersion, kind and name of the owner as listed; ``controller`` and
  ``blockOwnerDeletion`` as they were), without resourceVersion or uid.

Not covered (Lattice creates neither): a ClusterClass in another namespace than its Clusters,
and the Secrets of infrastructure providers' own namespaces (clusterctl adds those through its
provider inventory).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen

from lattice.domain.pivot_export import ObjectId, object_id

CLUSTERCTL_LABEL = "clusterctl.cluster.x-k8s.io"
MOVE_LABEL = "clusterctl.cluster.x-k8s.io/move"
MOVE_HIERARCHY_LABEL = "clusterctl.cluster.x-k8s.io/move-hierarchy"
BLOCK_MOVE_ANNOTATION = "clusterctl.cluster.x-k8s.io/block-move"
PAUSED_ANNOTATION = "cluster.x-k8s.io/paused"
CLUSTER_GROUP = "cluster.x-k8s.io"
ADDONS_GROUP = "addons.cluster.x-k8s.io"
# util/secret: the purposes of a Cluster's Secrets, in the order ParseSecretName tries them.
SECRET_PURPOSES = ("kubeconfig", "ca", "etcd", "sa", "proxy", "apiserver-etcd-client")
# Kinds whose objects move with everything they own, whatever their CRD's labels say.
_HIERARCHY_KINDS = frozenset(
    {(CLUSTER_GROUP, "Cluster"), (CLUSTER_GROUP, "ClusterClass"), (ADDONS_GROUP, "ClusterResourceSet")}
)


def group_of(api_version: str) -> str:
    return api_version.split("/", 1)[0] if "/" in api_version else ""


@frozen
class MoveType:
    """A kind clusterctl lists for a move (``discoveryTypeInfo``)."""

    api_version: str
    kind: str
    namespaced: bool = True
    force_move: bool = False
    force_move_hierarchy: bool = False

    @property
    def key(self) -> tuple[str, str]:
        return group_of(self.api_version), self.kind


CORE_TYPES = (MoveType("v1", "ConfigMap"), MoveType("v1", "Secret"))


def move_types(crds: Iterable[Mapping[str, Any]]) -> tuple[MoveType, ...]:
    """The kinds to list, from the CRDs (those without the clusterctl label are skipped), with
    Secrets and ConfigMaps."""
    types: dict[tuple[str, str], MoveType] = {}
    for crd in crds:
        labels = (crd.get("metadata") or {}).get("labels") or {}
        spec = crd.get("spec") or {}
        group, kind = spec.get("group"), (spec.get("names") or {}).get("kind")
        if CLUSTERCTL_LABEL not in labels or not group or not kind:
            continue
        hierarchy = (group, kind) in _HIERARCHY_KINDS or MOVE_HIERARCHY_LABEL in labels
        for version in spec.get("versions") or ():
            if not version.get("storage") or not version.get("name"):
                continue
            types[(group, kind)] = MoveType(
                f"{group}/{version['name']}",
                kind,
                namespaced=spec.get("scope", "Namespaced") != "Cluster",
                force_move=hierarchy or MOVE_LABEL in labels,
                force_move_hierarchy=hierarchy,
            )
    for core in CORE_TYPES:
        types[core.key] = core
    return tuple(sorted(types.values(), key=lambda t: (t.key, t.api_version)))


def exported_types(objects: Iterable[Mapping[str, Any]]) -> tuple[MoveType, ...]:
    """The kinds of an export, for its import, read from the objects themselves (the import
    needs no list of the target's CRDs, megabytes with every provider installed): what an export
    holds is what its mover chose on the source, so every kind of it moves; a kind is namespaced
    when its objects carry a namespace."""
    types: dict[tuple[str, str], MoveType] = {}
    for obj in objects:
        oid = object_id(obj)
        key = (group_of(oid.api_version), oid.kind)
        if key not in types:
            types[key] = MoveType(
                oid.api_version,
                oid.kind,
                namespaced=oid.namespace is not None,
                force_move=True,
                force_move_hierarchy=key in _HIERARCHY_KINDS,
            )
    return tuple(sorted(types.values(), key=lambda t: (t.key, t.api_version)))


@frozen
class OwnerLink:
    """One owner reference of a moved object, as recorded on the source."""

    uid: str
    id: ObjectId
    controller: bool | None = None
    block_owner_deletion: bool | None = None


@frozen
class MoveNode:
    uid: str
    id: ObjectId
    owners: tuple[OwnerLink, ...]
    is_global: bool = False
    after: tuple[str, ...] = ()
    """UIDs of the soft owners created before this node (a Cluster before its Secrets, a
    ClusterClass before its Clusters), as clusterctl orders them; no reference points at them."""


@frozen
class MoveGraph:
    groups: tuple[tuple[MoveNode, ...], ...]
    """What moves, in creation order: each group's owners are all in earlier groups."""
    clusters: tuple[ObjectId, ...]
    """Every Cluster listed (clusterctl pauses and unpauses these)."""
    cluster_classes: tuple[ObjectId, ...]
    blocking: tuple[ObjectId, ...]
    """Objects that move and carry the block-move annotation."""
    stranded: tuple[ObjectId, ...]
    """Objects that would move but an owner of theirs does not (outside the graph, or a cycle)."""

    @property
    def nodes(self) -> tuple[MoveNode, ...]:
        return tuple(node for group in self.groups for node in group)

    @property
    def ids(self) -> tuple[ObjectId, ...]:
        return tuple(node.id for node in self.nodes)


@frozen
class _Node:
    uid: str
    id: ObjectId
    owners: tuple[OwnerLink, ...]
    force_move: bool
    force_move_hierarchy: bool
    is_global: bool
    blocking: bool
    virtual: bool


def _uid(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    uid = meta.get("uid")
    if uid:
        return str(uid)
    # An object without a uid (a hand-written file): its identity stands in for one.
    return f"id:{object_id(obj)}"


def secret_cluster_name(name: str) -> str | None:
    """The Cluster a Secret belongs to by its name (util/secret.ParseSecretName), if any."""
    if "-" not in name:
        return None
    for purpose in SECRET_PURPOSES:
        if name.endswith("-" + purpose):
            return name.removesuffix("-" + purpose)
    return None


def _cluster_class_key(cluster: Mapping[str, Any]) -> tuple[str, str] | None:
    topology = (cluster.get("spec") or {}).get("topology") or {}
    ref = topology.get("classRef") or {}
    name = ref.get("name") or topology.get("class")
    if not name:
        return None
    namespace = ref.get("namespace") or topology.get("classNamespace") or cluster["metadata"].get("namespace")
    return str(namespace or ""), str(name)


def build(objects: Iterable[Mapping[str, Any]], types: Sequence[MoveType]) -> MoveGraph:
    """The move graph of ``objects`` (everything listed of ``types``)."""
    by_key = {t.key: t for t in types}
    bodies: dict[str, Mapping[str, Any]] = {}
    for obj in objects:
        bodies[_uid(obj)] = obj
    nodes: dict[str, _Node] = {}
    for uid, obj in bodies.items():
        meta = obj.get("metadata") or {}
        labels = meta.get("labels") or {}
        oid = object_id(obj)
        kind_type = by_key.get((group_of(oid.api_version), oid.kind))
        owners = []
        for ref in meta.get("ownerReferences") or ():
            owner_uid = str(ref.get("uid", ""))
            owner = bodies.get(owner_uid)
            owner_id = (
                object_id(owner)
                if owner is not None
                else ObjectId(
                    str(ref.get("apiVersion", "")), str(ref.get("kind", "")), None, str(ref.get("name", ""))
                )
            )
            owners.append(
                OwnerLink(owner_uid, owner_id, ref.get("controller"), ref.get("blockOwnerDeletion"))
            )
        nodes[uid] = _Node(
            uid,
            oid,
            tuple(owners),
            force_move=MOVE_LABEL in labels or bool(kind_type and kind_type.force_move),
            force_move_hierarchy=MOVE_HIERARCHY_LABEL in labels
            or bool(kind_type and kind_type.force_move_hierarchy),
            is_global=bool(kind_type and not kind_type.namespaced),
            blocking=BLOCK_MOVE_ANNOTATION in (meta.get("annotations") or {}),
            virtual=False,
        )
    # Owners that were not listed: virtual nodes (they never move).
    for node in list(nodes.values()):
        for link in node.owners:
            if link.uid not in nodes:
                nodes[link.uid] = _Node(link.uid, link.id, (), False, False, False, False, virtual=True)

    soft_owners = _soft_owners(nodes, bodies)
    # children[u]: the nodes that u owns or soft-owns.
    children: dict[str, set[str]] = {uid: set() for uid in nodes}
    for uid, node in nodes.items():
        for link in node.owners:
            children[link.uid].add(uid)
        for soft_owner in soft_owners.get(uid, ()):
            children[soft_owner].add(uid)
    in_tenancy: set[str] = set()
    stack = [uid for uid, node in nodes.items() if node.force_move_hierarchy]
    while stack:
        uid = stack.pop()
        if uid in in_tenancy:
            continue
        in_tenancy.add(uid)
        stack.extend(children[uid] - in_tenancy)
    candidates = {
        uid for uid, node in nodes.items() if not node.virtual and (uid in in_tenancy or node.force_move)
    }

    groups: list[tuple[MoveNode, ...]] = []
    placed: set[str] = set()
    while True:
        ready = [
            nodes[uid]
            for uid in candidates - placed
            if all(link.uid in placed for link in nodes[uid].owners) and soft_owners.get(uid, set()) <= placed
        ]
        if not ready:
            break
        ready.sort(key=lambda n: _sort_key(n.id))
        groups.append(
            tuple(
                MoveNode(n.uid, n.id, n.owners, n.is_global, tuple(sorted(soft_owners.get(n.uid, ()))))
                for n in ready
            )
        )
        placed.update(n.uid for n in ready)

    listed = [n for n in nodes.values() if not n.virtual]
    return MoveGraph(
        groups=tuple(groups),
        clusters=_ids(n for n in listed if _is(n.id, CLUSTER_GROUP, "Cluster")),
        cluster_classes=_ids(n for n in listed if _is(n.id, CLUSTER_GROUP, "ClusterClass")),
        blocking=_ids(nodes[uid] for uid in candidates if nodes[uid].blocking),
        stranded=_ids(nodes[uid] for uid in candidates - placed),
    )


def _soft_owners(nodes: Mapping[str, _Node], bodies: Mapping[str, Mapping[str, Any]]) -> dict[str, set[str]]:
    clusters = {
        (n.id.namespace, n.id.name): uid
        for uid, n in nodes.items()
        if not n.virtual and _is(n.id, CLUSTER_GROUP, "Cluster")
    }
    classes = {
        (n.id.namespace or "", n.id.name): uid
        for uid, n in nodes.items()
        if not n.virtual and _is(n.id, CLUSTER_GROUP, "ClusterClass")
    }
    soft: dict[str, set[str]] = {}
    for uid, node in nodes.items():
        if node.virtual:
            continue
        owner: str | None = None
        if node.id.api_version == "v1" and node.id.kind == "Secret" and not node.owners:
            cluster_name = secret_cluster_name(node.id.name)
            owner = None if cluster_name is None else clusters.get((node.id.namespace, cluster_name))
        elif _is(node.id, CLUSTER_GROUP, "Cluster"):
            key = _cluster_class_key(bodies[uid])
            owner = None if key is None else classes.get(key)
        elif _is(node.id, ADDONS_GROUP, "ClusterResourceSetBinding"):
            cluster_name = ((bodies[uid].get("spec") or {}).get("clusterName")) or None
            owner = None if cluster_name is None else clusters.get((node.id.namespace, cluster_name))
        if owner is not None:
            soft.setdefault(uid, set()).add(owner)
    return soft


def _is(oid: ObjectId, group: str, kind: str) -> bool:
    return oid.kind == kind and group_of(oid.api_version) == group


def _sort_key(oid: ObjectId) -> tuple[str, str, str]:
    return oid.kind, oid.namespace or "", oid.name


def _ids(nodes: Iterable[_Node]) -> tuple[ObjectId, ...]:
    return tuple(sorted((n.id for n in nodes), key=_sort_key))


class MissingOwner(ValueError):
    """An owner of an object to create has no UID on the target yet (it was not created first)."""


def owner_references(node: MoveNode, new_uids: Mapping[str, str]) -> list[dict[str, Any]]:
    """``node``'s owner references pointing at its owners' objects on the target."""
    refs: list[dict[str, Any]] = []
    for link in node.owners:
        if link.uid not in new_uids:
            raise MissingOwner(f"{node.id}: its owner {link.id} has not been created on the target")
        ref: dict[str, Any] = {
            "apiVersion": link.id.api_version,
            "kind": link.id.kind,
            "name": link.id.name,
            "uid": new_uids[link.uid],
        }
        if link.controller is not None:
            ref["controller"] = link.controller
        if link.block_owner_deletion is not None:
            ref["blockOwnerDeletion"] = link.block_owner_deletion
        refs.append(ref)
    return refs


_SERVER_SET = ("uid", "resourceVersion", "creationTimestamp", "generation", "deletionTimestamp", "selfLink")


def creation_body(obj: Mapping[str, Any], node: MoveNode, new_uids: Mapping[str, str]) -> dict[str, Any]:
    """What to POST on the target for ``obj``: its source body with owner references rewired and
    the fields the server assigns removed (clusterctl's restoreTargetObject)."""
    body: dict[str, Any] = json.loads(json.dumps(obj))
    meta = body.setdefault("metadata", {})
    for key in _SERVER_SET:
        meta.pop(key, None)
    refs = owner_references(node, new_uids)
    if refs:
        meta["ownerReferences"] = refs
    else:
        meta.pop("ownerReferences", None)
    if meta.get("name") and meta.get("generateName"):
        meta.pop("generateName")
    return body


def paused(cluster: Mapping[str, Any]) -> bool:
    """Whether a Cluster is paused (``spec.paused`` or the paused annotation)."""
    meta = cluster.get("metadata") or {}
    return bool((cluster.get("spec") or {}).get("paused")) or PAUSED_ANNOTATION in (
        meta.get("annotations") or {}
    )


def provisioning_errors(objects: Iterable[Mapping[str, Any]]) -> list[str]:
    """clusterctl's export preflight (``checkProvisioningCompleted``) over a graph's Clusters and
    Machines: each error names the object and what it waits for, in clusterctl's words."""
    errors: list[str] = []
    for obj in sorted(objects, key=lambda o: _sort_key(object_id(o))):
        oid = object_id(obj)
        status = obj.get("status") or {}
        if _is(oid, CLUSTER_GROUP, "Cluster"):
            initialization = status.get("initialization") or {}
            conditions = {c.get("type"): c.get("status") for c in status.get("conditions") or ()}
            if not initialization.get("infrastructureProvisioned"):
                errors.append(
                    f"cannot start the move operation while {oid} is still provisioning the infrastructure"
                )
            elif conditions.get("ControlPlaneInitialized") != "True" or (
                (obj.get("spec") or {}).get("controlPlaneRef")
                and not initialization.get("controlPlaneInitialized")
            ):
                errors.append(
                    f"cannot start the move operation while the control plane for {oid} "
                    "is not yet initialized"
                )
        elif _is(oid, CLUSTER_GROUP, "Machine") and not (status.get("nodeRef") or {}).get("name"):
            errors.append(f"cannot start the move operation while {oid} is still provisioning the node")
    return errors


def file_name(oid: ObjectId) -> str:
    """clusterctl's file name for an object of an export."""
    return f"{oid.kind}_{oid.namespace or ''}_{oid.name}.yaml"
