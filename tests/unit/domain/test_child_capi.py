"""The CAPI CRDs a cell sends a child: as served, without what belongs to the cell."""

from __future__ import annotations

from lattice.domain import child_capi


def crd(name: str, **spec: object) -> dict[str, object]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": name,
            "uid": "u",
            "resourceVersion": "7",
            "managedFields": [{}],
            "labels": {"cluster.x-k8s.io/provider": "cluster-api", "clusterctl.cluster.x-k8s.io": ""},
            "annotations": {
                "controller-gen.kubebuilder.io/version": "v0.19.0",
                "kubectl.kubernetes.io/last-applied-configuration": "{}",
            },
        },
        "spec": {"group": "cluster.x-k8s.io", **spec},
        "status": {"acceptedNames": {}},
    }


def test_a_crd_for_a_child_keeps_its_shape_and_labels_only() -> None:
    webhook = {"strategy": "Webhook", "webhook": {"clientConfig": {"url": "https://127.0.0.1:9443/convert"}}}
    out = child_capi.for_child(
        crd("machines.cluster.x-k8s.io", conversion=webhook, names={"kind": "Machine"})
    )
    assert out == {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "machines.cluster.x-k8s.io",
            "labels": {"cluster.x-k8s.io/provider": "cluster-api", "clusterctl.cluster.x-k8s.io": ""},
            "annotations": {"controller-gen.kubebuilder.io/version": "v0.19.0"},
        },
        "spec": {
            "group": "cluster.x-k8s.io",
            "names": {"kind": "Machine"},
            "conversion": {"strategy": "None"},
        },
    }


def test_bare_crds_and_a_stable_list() -> None:
    bare = {"metadata": {"name": "b"}, "spec": {}}
    listed = child_capi.crd_list([crd("z.x"), bare])
    assert listed["kind"] == "List"
    assert [c["metadata"]["name"] for c in listed["items"]] == ["b", "z.x"]
    assert listed["items"][0]["metadata"] == {"name": "b"}
    assert all(s for s in child_capi.SELECTORS)
