"""The move graph: clusterctl's discovery rules, creation order and owner rewiring (pure)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lattice.domain import move_graph
from lattice.domain.move_graph import MoveType
from lattice.domain.pivot_export import ObjectId, object_id

NS = "capi-w1"
CAPI = "cluster.x-k8s.io/v1beta2"
KCP_API = "controlplane.cluster.x-k8s.io/v1beta2"
BOOT_API = "bootstrap.cluster.x-k8s.io/v1beta2"
INFRA_API = "infrastructure.cluster.x-k8s.io/v1alpha1"


def crd(
    group: str, kind: str, *, labels: dict[str, str] | None = None, scope: str = "Namespaced"
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": f"{kind.lower()}s.{group}",
            "labels": {move_graph.CLUSTERCTL_LABEL: "", **(labels or {})},
        },
        "spec": {
            "group": group,
            "scope": scope,
            "names": {"kind": kind},
            "versions": [
                {"name": "v1beta1", "served": True, "storage": False},
                {"name": "v1beta2" if "x-k8s" in group else "v1alpha1", "served": True, "storage": True},
            ],
        },
    }


CAPI_CRDS = [
    crd("cluster.x-k8s.io", "Cluster"),
    crd("cluster.x-k8s.io", "ClusterClass"),
    crd("cluster.x-k8s.io", "Machine"),
    crd("cluster.x-k8s.io", "MachineSet"),
    crd("cluster.x-k8s.io", "MachineDeployment"),
    crd("addons.cluster.x-k8s.io", "ClusterResourceSet"),
    crd("addons.cluster.x-k8s.io", "ClusterResourceSetBinding"),
    crd("controlplane.cluster.x-k8s.io", "KubeadmControlPlane"),
    crd("bootstrap.cluster.x-k8s.io", "KubeadmConfig"),
    crd("bootstrap.cluster.x-k8s.io", "KubeadmConfigTemplate"),
    crd("infrastructure.cluster.x-k8s.io", "LocalCluster"),
    crd("infrastructure.cluster.x-k8s.io", "LocalMachine"),
    crd("infrastructure.cluster.x-k8s.io", "LocalMachineTemplate"),
]
TYPES = move_graph.move_types(CAPI_CRDS)
API = {
    "Cluster": CAPI,
    "ClusterClass": CAPI,
    "Machine": CAPI,
    "MachineSet": CAPI,
    "MachineDeployment": CAPI,
    "KubeadmControlPlane": KCP_API,
    "KubeadmConfig": BOOT_API,
    "KubeadmConfigTemplate": BOOT_API,
    "LocalCluster": INFRA_API,
    "LocalMachine": INFRA_API,
    "LocalMachineTemplate": INFRA_API,
    "Secret": "v1",
    "ConfigMap": "v1",
    "ClusterResourceSetBinding": "addons.cluster.x-k8s.io/v1beta2",
}


def obj(kind: str, name: str, *owners: dict[str, Any], namespace: str = NS, **extra: Any) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "name": name,
        "namespace": namespace,
        "uid": f"u-{kind}-{name}",
        "resourceVersion": "9",
    }
    if owners:
        meta["ownerReferences"] = [
            {
                "apiVersion": o["apiVersion"],
                "kind": o["kind"],
                "name": o["metadata"]["name"],
                "uid": o["metadata"]["uid"],
                "controller": True,
                "blockOwnerDeletion": True,
            }
            for o in owners
        ]
    meta.update(extra.pop("metadata", {}))
    return {"apiVersion": API[kind], "kind": kind, "metadata": meta, **extra}


def capi_graph(name: str = "w1") -> list[dict[str, Any]]:
    """What the real CAPI controllers make of a local cluster with one control plane and one worker."""
    cluster = obj("Cluster", name, spec={"controlPlaneRef": {"name": name}})
    infra = obj("LocalCluster", name, cluster)
    kcp = obj("KubeadmControlPlane", name, cluster)
    cp_template = obj("LocalMachineTemplate", f"{name}-cp", cluster)
    md = obj("MachineDeployment", f"{name}-md-0", cluster)
    md_template = obj("LocalMachineTemplate", f"{name}-md-0", cluster)
    config_template = obj("KubeadmConfigTemplate", f"{name}-md-0", cluster)
    ms = obj("MachineSet", f"{name}-md-0-abc", md)
    cp_machine = obj("Machine", f"{name}-cp-x", kcp)
    worker = obj("Machine", f"{name}-md-0-abc-y", ms)
    objects = [cluster, infra, kcp, cp_template, md, md_template, config_template, ms, cp_machine, worker]
    for machine in (cp_machine, worker):
        config = obj("KubeadmConfig", machine["metadata"]["name"], machine)
        objects += [config, obj("LocalMachine", machine["metadata"]["name"], machine)]
        objects.append(obj("Secret", machine["metadata"]["name"], config))
    for purpose in ("kubeconfig", "ca", "etcd", "sa", "proxy"):
        objects.append(obj("Secret", f"{name}-{purpose}"))
    objects.append(obj("Secret", f"{name}-lattice-registration"))  # not a CAPI purpose: stays
    objects.append(obj("ConfigMap", "unrelated"))
    return objects


def kinds(group: tuple[Any, ...]) -> list[str]:
    return sorted({n.id.kind for n in group})


def test_move_types_follow_the_crd_labels_and_storage_versions() -> None:
    extra = [
        crd("example.io", "Forced", labels={move_graph.MOVE_LABEL: ""}),
        crd("example.io", "Tree", labels={move_graph.MOVE_HIERARCHY_LABEL: ""}),
        crd("example.io", "Global", scope="Cluster"),
        {"metadata": {"labels": {}}, "spec": {"group": "example.io", "names": {"kind": "Unlabelled"}}},
        {"metadata": {"labels": {move_graph.CLUSTERCTL_LABEL: ""}}, "spec": {"group": "example.io"}},
        {
            "metadata": {"labels": {move_graph.CLUSTERCTL_LABEL: ""}},
            "spec": {"group": "example.io", "names": {"kind": "NoStorage"}, "versions": [{"name": "v1"}]},
        },
    ]
    types = {t.kind: t for t in move_graph.move_types([*CAPI_CRDS, *extra])}
    assert types["Cluster"] == MoveType(CAPI, "Cluster", force_move=True, force_move_hierarchy=True)
    assert types["Machine"] == MoveType(CAPI, "Machine")
    assert types["ClusterResourceSet"].force_move_hierarchy
    assert types["Forced"].force_move
    assert not types["Forced"].force_move_hierarchy
    assert types["Tree"].force_move
    assert types["Tree"].force_move_hierarchy
    assert not types["Global"].namespaced
    assert "Unlabelled" not in types
    assert "NoStorage" not in types
    assert types["Secret"] == MoveType("v1", "Secret")
    assert types["ConfigMap"] == MoveType("v1", "ConfigMap")


def test_a_capi_graph_moves_owners_first_and_leaves_what_is_not_the_clusters() -> None:
    graph = move_graph.build(capi_graph(), TYPES)
    assert [kinds(g) for g in graph.groups] == [
        ["Cluster"],
        [
            "KubeadmConfigTemplate",
            "KubeadmControlPlane",
            "LocalCluster",
            "LocalMachineTemplate",
            "MachineDeployment",
            "Secret",
        ],
        ["Machine", "MachineSet"],
        ["KubeadmConfig", "LocalMachine", "Machine"],
        ["KubeadmConfig", "LocalMachine", "Secret"],
        ["Secret"],
    ]
    names = {str(i) for i in graph.ids}
    assert "Secret capi-w1/w1-lattice-registration" not in names
    assert "ConfigMap capi-w1/unrelated" not in names
    assert {f"Secret capi-w1/w1-{p}" for p in ("kubeconfig", "ca", "etcd", "sa", "proxy")} <= names
    assert len(graph.ids) == len(capi_graph()) - 2
    assert graph.clusters == (ObjectId(CAPI, "Cluster", NS, "w1"),)
    assert graph.blocking == graph.stranded == graph.cluster_classes == ()


def test_only_the_namespaces_clusters_own_their_secrets() -> None:
    other = obj("Secret", "w2-kubeconfig")
    foreign = obj("Secret", "w1-kubeconfig", namespace="elsewhere")
    no_dash = obj("Secret", "plain")
    graph = move_graph.build([*capi_graph(), other, foreign, no_dash], TYPES)
    names = {str(i) for i in graph.ids}
    assert "Secret capi-w1/w2-kubeconfig" not in names
    assert "Secret elsewhere/w1-kubeconfig" not in names
    assert "Secret capi-w1/plain" not in names


def test_an_owner_outside_the_graph_strands_its_subtree() -> None:
    objects = capi_graph()
    foreign_owner = {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeCluster",
        "metadata": {"name": "w1", "uid": "u-lc"},
    }
    cluster = objects[0]
    cluster["metadata"]["ownerReferences"] = [
        {"apiVersion": "lattice.dev/v1alpha1", "kind": "LatticeCluster", "name": "w1", "uid": "u-lc"}
    ]
    assert foreign_owner["metadata"]["uid"] == "u-lc"
    graph = move_graph.build(objects, TYPES)
    # The Cluster still heads its hierarchy, but neither it nor anything below can be placed.
    assert graph.groups == ()
    assert ObjectId(CAPI, "Cluster", NS, "w1") in graph.stranded
    assert len(graph.stranded) == len(capi_graph()) - 2


def test_move_labels_and_force_moved_kinds() -> None:
    forced = obj("ConfigMap", "forced", metadata={"labels": {move_graph.MOVE_LABEL: ""}})
    tree = obj("ConfigMap", "tree", metadata={"labels": {move_graph.MOVE_HIERARCHY_LABEL: ""}})
    leaf = obj("Secret", "leaf", tree)
    alone = obj("Secret", "alone")
    graph = move_graph.build([forced, tree, leaf, alone], TYPES)
    assert [[str(n.id) for n in g] for g in graph.groups] == [
        ["ConfigMap capi-w1/forced", "ConfigMap capi-w1/tree"],
        ["Secret capi-w1/leaf"],
    ]


def test_cluster_class_crs_binding_and_global_kinds() -> None:
    klass = obj("ClusterClass", "quick")
    cluster = obj("Cluster", "w1", spec={"topology": {"classRef": {"name": "quick"}}})
    other = obj("Cluster", "w2", spec={"topology": {"classRef": {"name": "missing", "namespace": NS}}})
    binding = obj("ClusterResourceSetBinding", "w1", spec={"clusterName": "w1"})
    loose = obj("ClusterResourceSetBinding", "none", spec={})
    graph = move_graph.build([klass, cluster, other, binding, loose], TYPES)
    assert [[str(n.id) for n in g] for g in graph.groups] == [
        ["Cluster capi-w1/w2", "ClusterClass capi-w1/quick"],
        ["Cluster capi-w1/w1"],
        ["ClusterResourceSetBinding capi-w1/w1"],
    ]
    assert graph.cluster_classes == (ObjectId(CAPI, "ClusterClass", NS, "quick"),)
    global_types = (*TYPES, MoveType("example.io/v1", "Global", namespaced=False, force_move=True))
    glob = {"apiVersion": "example.io/v1", "kind": "Global", "metadata": {"name": "g", "uid": "u-g"}}
    (node,) = move_graph.build([glob], global_types).nodes
    assert node.is_global


def test_objects_without_uids_are_told_apart_by_identity() -> None:
    a = obj("Cluster", "a")
    b = obj("Cluster", "b")
    for o in (a, b):
        del o["metadata"]["uid"]
    assert len(move_graph.build([a, b], TYPES).nodes) == 2


def test_block_move_annotation() -> None:
    objects = capi_graph()
    objects[1]["metadata"]["annotations"] = {move_graph.BLOCK_MOVE_ANNOTATION: ""}
    objects[-1]["metadata"]["annotations"] = {move_graph.BLOCK_MOVE_ANNOTATION: ""}  # not moved: ignored
    graph = move_graph.build(objects, TYPES)
    assert graph.blocking == (ObjectId(INFRA_API, "LocalCluster", NS, "w1"),)


def test_owner_references_point_at_the_new_uids() -> None:
    objects = capi_graph()
    graph = move_graph.build(objects, TYPES)
    new = {n.uid: "new-" + n.uid for n in graph.nodes}
    ms = next(n for n in graph.nodes if n.id.kind == "MachineSet")
    assert move_graph.owner_references(ms, new) == [
        {
            "apiVersion": CAPI,
            "kind": "MachineDeployment",
            "name": "w1-md-0",
            "uid": "new-u-MachineDeployment-w1-md-0",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    with pytest.raises(move_graph.MissingOwner, match="MachineDeployment capi-w1/w1-md-0"):
        move_graph.owner_references(ms, {})


def test_creation_body() -> None:
    objects = capi_graph()
    graph = move_graph.build(objects, TYPES)
    new = {n.uid: "new-" + n.uid for n in graph.nodes}
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objects}
    nodes = {(n.id.kind, n.id.name): n for n in graph.nodes}
    machine = by_name[("Machine", "w1-cp-x")]
    machine["metadata"].update(generateName="w1-cp-", creationTimestamp="t", generation=3)
    machine["status"] = {"nodeRef": {"name": "n"}}
    body = move_graph.creation_body(machine, nodes[("Machine", "w1-cp-x")], new)
    assert body["metadata"] == {
        "name": "w1-cp-x",
        "namespace": NS,
        "ownerReferences": [
            {
                "apiVersion": KCP_API,
                "kind": "KubeadmControlPlane",
                "name": "w1",
                "uid": "new-u-KubeadmControlPlane-w1",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    assert body["status"] == machine["status"]
    assert machine["metadata"]["uid"] == "u-Machine-w1-cp-x"
    cluster = by_name[("Cluster", "w1")]
    cluster["metadata"]["ownerReferences"] = []
    assert (
        "ownerReferences" not in move_graph.creation_body(cluster, nodes[("Cluster", "w1")], new)["metadata"]
    )
    generated = obj("Cluster", "", metadata={"generateName": "g-"})
    node = move_graph.build([generated], TYPES).nodes[0]
    assert move_graph.creation_body(generated, node, {})["metadata"]["generateName"] == "g-"


def test_paused_and_the_preflight() -> None:
    assert move_graph.paused({"spec": {"paused": True}})
    assert move_graph.paused({"metadata": {"annotations": {move_graph.PAUSED_ANNOTATION: ""}}})
    assert not move_graph.paused({"metadata": {}, "spec": {}})
    ready = {
        "initialization": {"infrastructureProvisioned": True, "controlPlaneInitialized": True},
        "conditions": [{"type": "ControlPlaneInitialized", "status": "True"}],
    }
    cluster = obj("Cluster", "ok", spec={"controlPlaneRef": {"name": "ok"}}, status=ready)
    no_infra = obj("Cluster", "a", status={})
    no_condition = obj("Cluster", "b", status={"initialization": {"infrastructureProvisioned": True}})
    no_cp_status = obj(
        "Cluster",
        "c",
        spec={"controlPlaneRef": {"name": "c"}},
        status={**ready, "initialization": {"infrastructureProvisioned": True}},
    )
    machine = obj("Machine", "m", status={"nodeRef": {"name": "n"}})
    pending = obj("Machine", "p", status={})
    other = obj("Secret", "s")
    errors = move_graph.provisioning_errors(
        [cluster, no_infra, no_condition, no_cp_status, machine, pending, other]
    )
    start = "cannot start the move operation while"
    assert errors == [
        f"{start} Cluster capi-w1/a is still provisioning the infrastructure",
        f"{start} the control plane for Cluster capi-w1/b is not yet initialized",
        f"{start} the control plane for Cluster capi-w1/c is not yet initialized",
        f"{start} Machine capi-w1/p is still provisioning the node",
    ]


def test_secret_cluster_names_and_file_names() -> None:
    assert move_graph.secret_cluster_name(
        "w1-apiserver-etcd-client"
    ) == "w1-apiserver-etcd-client".removesuffix("-apiserver-etcd-client")
    assert move_graph.secret_cluster_name("w1-etcd") == "w1"
    assert move_graph.secret_cluster_name("w1-token") is None
    assert move_graph.secret_cluster_name("kubeconfig") is None
    assert move_graph.file_name(ObjectId(CAPI, "Cluster", NS, "w1")) == "Cluster_capi-w1_w1.yaml"
    assert move_graph.file_name(ObjectId("example.io/v1", "Global", None, "g")) == "Global__g.yaml"


# ---------------------------------------------------------------- properties

GRAPH_KINDS = [k for k in API if k not in ("ClusterClass", "ClusterResourceSetBinding")]


@st.composite
def graphs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Objects over the CAPI kinds in two namespaces, each owned by a few earlier ones (or by an
    object that was not listed), some named like a Cluster's Secrets, some with move labels."""
    count = draw(st.integers(1, 25))
    objects: list[dict[str, Any]] = []
    for i in range(count):
        kind = draw(st.sampled_from(GRAPH_KINDS))
        namespace = draw(st.sampled_from([NS, "other"]))
        name = draw(st.sampled_from([f"o{i}", f"c{i % 3}-kubeconfig", f"c{i % 3}"]))
        owners = draw(st.lists(st.integers(0, max(i - 1, 0)), max_size=2, unique=True)) if i else []
        refs = [objects[j] for j in owners if objects[j]["metadata"]["namespace"] == namespace]
        o = obj(kind, name, *refs, namespace=namespace)
        o["metadata"]["uid"] = f"u{i}"
        if draw(st.integers(0, 9)) == 0:
            o["metadata"].setdefault("ownerReferences", []).append(
                {
                    "apiVersion": "lattice.dev/v1alpha1",
                    "kind": "LatticeCluster",
                    "name": "x",
                    "uid": "unlisted",
                }
            )
        label = draw(
            st.sampled_from([None, None, None, move_graph.MOVE_LABEL, move_graph.MOVE_HIERARCHY_LABEL])
        )
        if label:
            o["metadata"]["labels"] = {label: ""}
        objects.append(o)
    return objects


def _reachable(objects: list[dict[str, Any]]) -> set[str]:
    """Every uid clusterctl would consider: the move-hierarchy roots' (soft) descendants and the
    force-moved objects (an independent, naive restatement of the rules)."""
    types = {(t.key): t for t in TYPES}
    by_uid = {o["metadata"]["uid"]: o for o in objects}

    def group(o: dict[str, Any]) -> tuple[str, str]:
        return move_graph.group_of(o["apiVersion"]), o["kind"]

    def labels(o: dict[str, Any]) -> dict[str, str]:
        return o["metadata"].get("labels") or {}

    def parents(o: dict[str, Any]) -> set[str]:
        owners = {r["uid"] for r in o["metadata"].get("ownerReferences") or []}
        if o["kind"] == "Secret" and not owners:
            cluster = move_graph.secret_cluster_name(o["metadata"]["name"])
            owners |= {
                u
                for u, c in by_uid.items()
                if c["kind"] == "Cluster"
                and c["metadata"]["name"] == cluster
                and c["metadata"]["namespace"] == o["metadata"]["namespace"]
            }
        return owners

    roots = {
        u
        for u, o in by_uid.items()
        if move_graph.MOVE_HIERARCHY_LABEL in labels(o) or types[group(o)].force_move_hierarchy
    }
    reached = set(roots)
    changed = True
    while changed:
        changed = False
        for u, o in by_uid.items():
            if u not in reached and parents(o) & reached:
                reached.add(u)
                changed = True
    forced = {
        u for u, o in by_uid.items() if move_graph.MOVE_LABEL in labels(o) or types[group(o)].force_move
    }
    return reached | forced


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_every_owner_is_created_before_its_dependents(objects: list[dict[str, Any]]) -> None:
    graph = move_graph.build(objects, TYPES)
    position = {n.uid: i for i, g in enumerate(graph.groups) for n in g}
    for i, group in enumerate(graph.groups):
        for node in group:
            for link in node.owners:
                assert position[link.uid] < i, (node.id, link.id)


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_nothing_outside_the_clusters_graph_moves(objects: list[dict[str, Any]]) -> None:
    graph = move_graph.build(objects, TYPES)
    moved = {n.uid for n in graph.nodes}
    assert moved <= _reachable(objects)
    assert "unlisted" not in moved
    assert len(moved) == len(graph.nodes)  # each object once
    # Everything reachable either moves or is reported stranded.
    stranded = {str(i) for i in graph.stranded}
    by_uid = {o["metadata"]["uid"]: o for o in objects}
    for uid in _reachable(objects) - moved:
        assert str(object_id(by_uid[uid])) in stranded


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_rewiring_is_total(objects: list[dict[str, Any]]) -> None:
    graph = move_graph.build(objects, TYPES)
    new_uids: dict[str, str] = {}
    by_uid = {o["metadata"]["uid"]: o for o in objects}
    for group in graph.groups:
        for node in group:
            body = move_graph.creation_body(by_uid[node.uid], node, new_uids)
            refs = body["metadata"].get("ownerReferences", [])
            assert len(refs) == len(by_uid[node.uid]["metadata"].get("ownerReferences") or [])
            assert all(ref["uid"] in new_uids.values() for ref in refs)
            assert "uid" not in body["metadata"]
            assert "resourceVersion" not in body["metadata"]
        new_uids.update({n.uid: "t-" + n.uid for n in group})


@settings(max_examples=200, deadline=None)
@given(graphs())
def test_an_export_imports_as_the_same_graph_without_the_targets_crds(objects: list[dict[str, Any]]) -> None:
    """The import reads the kinds from the export (``exported_types``): it creates exactly what
    the source's graph moved, with the same owners and soft owners, each after them."""
    source = move_graph.build(objects, TYPES)
    exported = [o for o in objects if o["metadata"]["uid"] in {n.uid for n in source.nodes}]
    imported = move_graph.build(exported, move_graph.exported_types(exported))
    assert {n.uid: (n.owners, n.after, n.is_global) for n in imported.nodes} == {
        n.uid: (n.owners, n.after, n.is_global) for n in source.nodes
    }
    assert imported.stranded == ()
    position = {n.uid: i for i, g in enumerate(imported.groups) for n in g}
    for node in imported.nodes:
        assert all(position[u] < position[node.uid] for u in node.after)


def test_soft_owners_come_first_and_exported_kinds_are_read_from_the_objects() -> None:
    graph = move_graph.build(capi_graph(), TYPES)
    cluster = next(n for n in graph.nodes if n.id.kind == "Cluster")
    kubeconfig = next(n for n in graph.nodes if n.id.name == "w1-kubeconfig")
    assert kubeconfig.owners == ()
    assert kubeconfig.after == (cluster.uid,)
    exported = move_graph.exported_types(
        [*capi_graph(), {"apiVersion": "example.io/v1", "kind": "Global", "metadata": {"name": "g"}}]
    )
    by_kind = {t.kind: t for t in exported}
    assert by_kind["Global"] == MoveType("example.io/v1", "Global", namespaced=False, force_move=True)
    assert by_kind["Cluster"].force_move_hierarchy
    assert by_kind["Cluster"].namespaced
    assert all(t.force_move for t in exported)
