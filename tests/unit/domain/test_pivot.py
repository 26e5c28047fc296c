from __future__ import annotations

import json
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import pivot_export


def obj(kind: str, name: str, **extra: Any) -> dict[str, Any]:
    api = "v1" if kind in ("Secret", "ConfigMap") else "cluster.x-k8s.io/v1beta2"
    return {
        "apiVersion": api,
        "kind": kind,
        "metadata": {"name": name, "namespace": "capi-w1", "uid": "u-" + name, "resourceVersion": "7"},
        **extra,
    }


def files(*objects: dict[str, Any]) -> list[tuple[str, bytes]]:
    return [
        (f"{o['kind']}_{o['metadata']['namespace']}_{o['metadata']['name']}.yaml", json.dumps(o).encode())
        for o in objects
    ]


def test_parse_export() -> None:
    cluster = obj(
        "Cluster", "w1", spec={"paused": True}, status={"initialization": {"infrastructureProvisioned": True}}
    )
    secret = obj("Secret", "w1-kubeconfig", data={"value": "eA=="}, status={"ignored": True})
    md = obj("MachineDeployment", "w1-md-0", status={})
    parsed = [
        o
        for o in pivot_export.parse_export(files(secret, md, cluster))
        if isinstance(o, pivot_export.ExportedObject)
    ]
    assert len(parsed) == 3
    names = [o.file_name for o in parsed]
    assert names == sorted(names)
    by_id = {str(o.id): o for o in parsed}
    assert by_id["Cluster capi-w1/w1"].body["status"] == {
        "initialization": {"infrastructureProvisioned": True}
    }


def test_parse_export_reports_every_bad_file() -> None:
    result = pivot_export.parse_export(
        [
            ("../etc/passwd", b"{}"),
            ("Cluster_ns_x.yaml", b"not json"),
            ("Cluster_ns_y.yaml", b"[1]"),
            ("Cluster_ns_z.yaml", json.dumps({"apiVersion": "v1", "kind": "X", "metadata": {}}).encode()),
        ]
    )
    assert [str(e) for e in result] == [
        'files["../etc/passwd"]: not a clusterctl move file name (Kind_Namespace_Name.yaml)',
        'files["Cluster_ns_x.yaml"]: not a JSON object: Expecting value: line 1 column 1 (char 0)',
        'files["Cluster_ns_y.yaml"]: missing apiVersion, kind or metadata',
        'files["Cluster_ns_z.yaml"].metadata: missing name',
    ]


def test_deletion_order_puts_the_cluster_last() -> None:
    kinds = [
        "Cluster",
        "Secret",
        "LocalCluster",
        "LocalMachineTemplate",
        "KubeadmControlPlane",
        "Machine",
        "MachineDeployment",
        "KubeadmConfigTemplate",
        "Widget",
    ]
    ids = [pivot_export.ObjectId("x/v1", k, "ns", k.lower()) for k in kinds]
    order = [i.kind for i in pivot_export.deletion_order(ids)]
    assert order[0] == "Machine"
    assert order[-1] == "Cluster"
    assert order.index("KubeadmControlPlane") < order.index("LocalCluster") < order.index("Secret")


def test_content_hash_ignores_server_fields_and_move_markers() -> None:
    a = obj("Cluster", "w1", spec={"paused": True, "x": 1})
    b = json.loads(json.dumps(a))
    b["metadata"].update(
        uid="other", resourceVersion="99", managedFields=[{}], annotations={pivot_export.DELETE_FOR_MOVE: ""}
    )
    b["spec"]["paused"] = False
    assert pivot_export.content_hash(a) == pivot_export.content_hash(b)
    b["spec"]["x"] = 2
    assert pivot_export.content_hash(a) != pivot_export.content_hash(b)


def test_compare_sides() -> None:
    a, b, c, d = (obj("Secret", n, data={"k": n}) for n in "abcd")
    changed = obj("Secret", "c", data={"k": "other"})
    report = pivot_export.compare_sides([a, b, c, d], source_now=[b], target_now=[a, b, changed])
    assert report.only_target == ("Secret capi-w1/a", "Secret capi-w1/c")
    assert report.on_both == ("Secret capi-w1/b",)
    assert report.missing == ("Secret capi-w1/d",)
    assert report.changed == ("Secret capi-w1/c",)
    assert not report.moved_exactly_once
    assert pivot_export.compare_sides([a], [], [a]).moved_exactly_once
    assert str(pivot_export.ObjectId("v1", "Namespace", None, "n")) == "Namespace n"


@given(st.lists(st.sampled_from(["a", "b", "c", "d", "e"]), unique=True))
def test_a_complete_move_is_exactly_once(names: list[str]) -> None:
    objects = [obj("ConfigMap", n, data={"v": n}) for n in names]
    assert pivot_export.compare_sides(objects, [], objects).moved_exactly_once


def test_move_kinds_are_the_served_storage_versions_of_labelled_crds() -> None:
    def crd(group: str, kind: str, *versions: tuple[str, bool, bool]) -> dict[str, Any]:
        return {
            "spec": {
                "group": group,
                "names": {"kind": kind},
                "versions": [
                    {"name": n, "served": served, "storage": storage} for n, served, storage in versions
                ],
            }
        }

    crds = [
        crd("cluster.x-k8s.io", "Machine", ("v1beta1", True, False), ("v1beta2", True, True)),
        crd("infrastructure.lattice.dev", "LocalCluster", ("v1alpha1", True, True)),
        crd("cluster.x-k8s.io", "Machine", ("v1beta2", True, True)),  # listed twice: once
        crd("example.com", "Retired", ("v1", False, True)),  # storage but not served
        {"spec": {"group": "example.com", "names": {}}},  # malformed: skipped
        {},
    ]
    assert pivot_export.move_kinds(crds) == [
        ("cluster.x-k8s.io/v1beta2", "Machine"),
        ("infrastructure.lattice.dev/v1alpha1", "LocalCluster"),
    ]


def test_deletion_waves_keep_the_order_and_group_one_rank_each() -> None:
    def oid(kind: str, name: str) -> pivot_export.ObjectId:
        return pivot_export.ObjectId("v1", kind, "ns", name)

    ids = [
        oid("Cluster", "c"),
        oid("Secret", "c-kubeconfig"),
        oid("Machine", "m-1"),
        oid("LocalMachineTemplate", "t-1"),
        oid("Machine", "m-0"),
        oid("KubeadmConfigTemplate", "k"),
        oid("LocalCluster", "c"),
        oid("Secret", "c-ca"),
    ]
    waves = pivot_export.deletion_waves(ids)
    assert [w for wave in waves for w in wave] == pivot_export.deletion_order(ids)
    assert [[f"{o.kind}/{o.name}" for o in wave] for wave in waves] == [
        ["Machine/m-0", "Machine/m-1"],
        ["KubeadmConfigTemplate/k", "LocalMachineTemplate/t-1"],
        ["LocalCluster/c"],
        ["Secret/c-ca", "Secret/c-kubeconfig"],
        ["Cluster/c"],
    ]
    assert pivot_export.deletion_waves([]) == []
