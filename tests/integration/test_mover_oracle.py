"""The native mover against its oracle, ``clusterctl move``, on real control planes.

For the same source graph, clusterctl (``--to-directory`` then ``--from-directory``) moves into
one target and the native mover (its export, then its import) into another; both targets must
hold the same objects, compared after dropping what the server assigns (uid, resourceVersion,
creationTimestamp, managedFields), with owner references resolved to the objects they point at
on their own target. Two graphs: the one the real Cluster API managers and the local provider
make of a compiled cluster, and graphs hypothesis draws over the CAPI kinds that fit without
controllers (Clusters with a provisioned status, Secrets and ConfigMaps owned by them and by one
another, Secrets named as a Cluster's, the move labels, an owner that is not of a moved kind).
The two movers also read each other's exports."""

from __future__ import annotations

import asyncio
import copy
import itertools
import json
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lattice.adapters.binaries import Toolchain
from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS
from lattice.adapters.capi_managers import CapiManagers
from lattice.adapters.clusterctl import ClusterctlMover
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.mover_native import NativeMover, mover_for
from lattice.domain import move_graph, pivot_export
from lattice.ports.kube import ResourceRef
from lattice.ports.mover import MoveError, MoverKind
from lattice.testing.fixtures import ControlPlaneFactory
from tests.integration.test_pivot_import import NAMESPACE, provisioned_graph

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

CAPI = "cluster.x-k8s.io/v1beta2"
VOLATILE = ("uid", "resourceVersion", "creationTimestamp", "managedFields")


class Planes:
    def __init__(self, source: ControlPlane, by_clusterctl: ControlPlane, native: ControlPlane) -> None:
        self.source = source
        self.by_clusterctl = by_clusterctl
        self.native = native


@pytest.fixture(scope="module")
def planes(toolchain: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Planes]:
    factory = ControlPlaneFactory(toolchain, tmp_path_factory.mktemp("mover-oracle"))
    try:
        source = factory(1, controller_manager=True, names=["source"])[0]
        targets = factory(2, names=["by-clusterctl", "native"])
        for cp in (source, *targets):
            cp.install_capi_crds(LOCAL_CAPI_PROVIDERS)
            cp.install_lattice_crds()  # the local provider's kinds among them
        yield Planes(source, *targets)
    finally:
        factory.stop_all()


def namespace_objects(cp: ControlPlane, namespace: str) -> list[dict[str, Any]]:
    """Everything of the kinds labelled for move, with Secrets and ConfigMaps, in ``namespace``."""
    names = cp.kubectl("get", "crd", "-l", move_graph.CLUSTERCTL_LABEL, "-o", "name").stdout.split()
    kinds = ",".join([*(n.split("/", 1)[1] for n in names), "secrets", "configmaps"])
    items: list[dict[str, Any]] = json.loads(cp.kubectl("get", kinds, "-n", namespace, "-o", "json").stdout)[
        "items"
    ]
    return [o for o in items if o["metadata"]["name"] != "kube-root-ca.crt"]


def normalised(items: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """``items`` by identity, without server-assigned fields, owner references resolved (each
    must point at an object of the same target, of the kind and name it says)."""
    by_uid = {o["metadata"]["uid"]: o for o in items}
    out: dict[str, dict[str, Any]] = {}
    for item in items:
        obj = copy.deepcopy(item)
        meta = obj["metadata"]
        for key in VOLATILE:
            meta.pop(key, None)
        refs = []
        for ref in meta.get("ownerReferences") or []:
            owner = by_uid.get(ref["uid"])
            assert owner is not None, f"{pivot_export.object_id(item)}: owner {ref} is not on this target"
            assert (owner["kind"], owner["metadata"]["name"]) == (ref["kind"], ref["name"]), ref
            refs.append({**ref, "uid": f"{owner['kind']}/{owner['metadata']['name']}"})
        if refs:
            meta["ownerReferences"] = sorted(refs, key=lambda r: (r["kind"], r["name"]))
        out[str(pivot_export.object_id(obj))] = obj
    return out


def assert_same(clusterctl_side: list[dict[str, Any]], native_side: list[dict[str, Any]]) -> None:
    expected, got = normalised(clusterctl_side), normalised(native_side)
    assert sorted(got) == sorted(expected)
    for key, obj in expected.items():
        assert got[key] == obj, key


async def move_both(
    planes: Planes, toolchain: Toolchain, namespace: str, work: Path
) -> tuple[list[Path], list[Path]]:
    """clusterctl from the source into one target, the native mover into the other."""
    clusterctl = ClusterctlMover(toolchain.clusterctl)
    native = NativeMover()
    by_clusterctl, by_native = work / "clusterctl", work / "native"
    exported = await clusterctl.export(planes.source.kubeconfig, namespace, by_clusterctl)
    await clusterctl.import_(planes.by_clusterctl.kubeconfig, by_clusterctl)
    exported_natively = await native.export(planes.source.kubeconfig, namespace, by_native)
    await native.import_(planes.native.kubeconfig, by_native)
    return exported, exported_natively


# ---------------------------------------------------------------- the graph of the real managers


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_both_movers_move_the_real_capi_graph_alike(
    planes: Planes, toolchain: Toolchain, tmp_path: Path
) -> None:
    source = planes.source
    with CapiManagers(source):
        async with provisioned_graph(source, tmp_path):
            exported, exported_natively = await move_both(planes, toolchain, NAMESPACE, tmp_path)
            source_now = namespace_objects(source, NAMESPACE)
    assert [p.name for p in exported_natively] == [p.name for p in exported]
    kinds = {p.name.split("_", 1)[0] for p in exported}
    assert {
        "Cluster",
        "KubeadmControlPlane",
        "MachineSet",
        "Machine",
        "KubeadmConfig",
        "LocalMachine",
    } <= kinds
    # Both exports leave the source unpaused, as clusterctl >= 1.12 does.
    cluster = next(o for o in source_now if o["kind"] == "Cluster")
    assert not move_graph.paused(cluster)
    # The saved Cluster is the paused one, in both exports.
    for path in (exported[0].parent, exported_natively[0].parent):
        saved = json.loads((path / f"Cluster_{NAMESPACE}_moved.yaml").read_text())
        assert saved["spec"]["paused"] is True
    on_clusterctl = namespace_objects(planes.by_clusterctl, NAMESPACE)
    on_native = namespace_objects(planes.native, NAMESPACE)
    assert len(on_native) == len(exported)
    assert_same(on_clusterctl, on_native)
    assert not any(move_graph.paused(o) for o in on_native if o["kind"] == "Cluster")


# ---------------------------------------------------------------- drawn graphs

KINDS = ("Secret", "ConfigMap")
_counter = itertools.count()


@st.composite
def drawn_graphs(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Specs of objects: ``(kind, name, owner indices, label)``, owners earlier in the list; index
    -1 is a ServiceAccount (a kind clusterctl does not list)."""
    clusters = draw(st.integers(1, 2))
    specs: list[dict[str, Any]] = [
        {"kind": "Cluster", "name": f"c{i}", "owners": [], "label": None} for i in range(clusters)
    ]
    for i in range(draw(st.integers(1, 10))):
        kind = draw(st.sampled_from(KINDS))
        name = draw(
            st.sampled_from([f"o{i}", f"c{i % clusters}-kubeconfig", f"c{i % clusters}-ca", f"c9-o{i}"])
        )
        if any(s["name"] == name and s["kind"] == kind for s in specs):
            name = f"o{i}"
        owners = draw(st.lists(st.integers(-1, len(specs) - 1), max_size=2, unique=True))
        label = draw(st.sampled_from([None, None, move_graph.MOVE_LABEL, move_graph.MOVE_HIERARCHY_LABEL]))
        specs.append({"kind": kind, "name": name, "owners": owners, "label": label})
    return specs


PROVISIONED = {
    "initialization": {"infrastructureProvisioned": True},
    "conditions": [
        {
            "type": "ControlPlaneInitialized",
            "status": "True",
            "reason": "Initialized",
            "message": "",
            "lastTransitionTime": "2026-01-01T00:00:00Z",
        }
    ],
}


async def create_graph(cp: ControlPlane, namespace: str, specs: list[dict[str, Any]]) -> None:
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    await api.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}})
    foreign = await api.create(
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": {"name": "foreign", "namespace": namespace},
        }
    )
    created: list[dict[str, Any]] = []
    for spec in specs:
        meta: dict[str, Any] = {"name": spec["name"], "namespace": namespace}
        if spec["label"]:
            meta["labels"] = {spec["label"]: ""}
        owners = [foreign if i < 0 else created[i] for i in spec["owners"]]
        if owners:
            meta["ownerReferences"] = [
                {
                    "apiVersion": o["apiVersion"],
                    "kind": o["kind"],
                    "name": o["metadata"]["name"],
                    "uid": o["metadata"]["uid"],
                }
                for o in owners
            ]
        if spec["kind"] == "Cluster":
            body = {
                "apiVersion": CAPI,
                "kind": "Cluster",
                "metadata": meta,
                "spec": {"controlPlaneEndpoint": {"host": "h", "port": 6443}},
            }
        elif spec["kind"] == "Secret":
            body = {"apiVersion": "v1", "kind": "Secret", "metadata": meta, "stringData": {"k": spec["name"]}}
        else:
            body = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": meta, "data": {"k": spec["name"]}}
        obj = await api.create(body)
        obj.setdefault("apiVersion", body["apiVersion"])
        obj.setdefault("kind", body["kind"])
        if spec["kind"] == "Cluster":
            await api.apply_status(
                {
                    "apiVersion": CAPI,
                    "kind": "Cluster",
                    "metadata": {"name": spec["name"], "namespace": namespace},
                    "status": PROVISIONED,
                },
                "test",
            )
        created.append(obj)


@settings(
    max_examples=6,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(specs=drawn_graphs())
def test_both_movers_move_drawn_graphs_alike(
    planes: Planes, toolchain: Toolchain, specs: list[dict[str, Any]]
) -> None:
    namespace = f"capi-drawn-{next(_counter)}"

    async def run() -> None:
        await create_graph(planes.source, namespace, specs)
        with tempfile.TemporaryDirectory() as tmp:
            exported, natively = await move_both(planes, toolchain, namespace, Path(tmp))
            assert [p.name for p in natively] == [p.name for p in exported]
            assert_same(
                namespace_objects(planes.by_clusterctl, namespace),
                namespace_objects(planes.native, namespace),
            )
            # Each mover reads the other's export: re-importing changes nothing (objects exist).
            before = normalised(namespace_objects(planes.native, namespace))
            await NativeMover().import_(planes.native.kubeconfig, exported[0].parent)
            await ClusterctlMover(toolchain.clusterctl).import_(planes.native.kubeconfig, natively[0].parent)
            assert normalised(namespace_objects(planes.native, namespace)) == before

    asyncio.run(run())


# ---------------------------------------------------------------- refusals


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_native_mover_refuses_what_clusterctl_refuses(planes: Planes, tmp_path: Path) -> None:
    source = planes.source
    namespace = f"capi-refused-{next(_counter)}"
    await create_graph(source, namespace, [{"kind": "Cluster", "name": "r", "owners": [], "label": None}])
    api = await Kr8sKube.connect(str(source.kubeconfig))
    ref = ResourceRef(CAPI, "Cluster", "r", namespace)
    mover = NativeMover(block_timeout=0.5)

    await api.merge_patch(ref, {"spec": {"paused": True}})
    with pytest.raises(MoveError, match=f"paused: Cluster {namespace}/r"):
        await mover.export(source.kubeconfig, namespace, tmp_path / "paused")
    await api.merge_patch(ref, {"spec": {"paused": None}})

    await api.merge_patch(ref, {"metadata": {"annotations": {move_graph.BLOCK_MOVE_ANNOTATION: ""}}})
    with pytest.raises(MoveError, match="the move is blocked by the"):
        await mover.export(source.kubeconfig, namespace, tmp_path / "blocked")
    assert not move_graph.paused(await api.get(ref))  # unpaused again after the refusal
    await api.merge_patch(ref, {"metadata": {"annotations": {move_graph.BLOCK_MOVE_ANNOTATION: None}}})

    (tmp_path / "a-file").write_text("")
    with pytest.raises(MoveError, match="writing the export of namespace"):
        await mover.export(source.kubeconfig, namespace, tmp_path / "a-file" / "below")
    assert not move_graph.paused(await api.get(ref))

    await api.apply_status(
        {
            "apiVersion": CAPI,
            "kind": "Cluster",
            "metadata": {"name": "r", "namespace": namespace},
            "status": {"initialization": {"infrastructureProvisioned": False}},
        },
        "test",
    )
    with pytest.raises(MoveError, match="is still provisioning the infrastructure"):
        await mover.export(source.kubeconfig, namespace, tmp_path / "early")

    with pytest.raises(MoveError, match="holds no Cluster API objects"):
        await mover.export(source.kubeconfig, "capi-empty", tmp_path / "empty")

    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "Cluster_x_y.yaml").write_text("not json")
    with pytest.raises(MoveError, match="unusable export"):
        await mover.import_(planes.native.kubeconfig, bad)
    with pytest.raises(MoveError, match="cannot read the export"):
        await mover.import_(planes.native.kubeconfig, tmp_path / "missing")


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_the_native_mover_restores_status_when_asked(planes: Planes, tmp_path: Path) -> None:
    namespace = f"capi-status-{next(_counter)}"
    specs = [
        {"kind": "Cluster", "name": "s", "owners": [], "label": None},
        {"kind": "Secret", "name": "s-kubeconfig", "owners": [], "label": None},
    ]
    await create_graph(planes.source, namespace, specs)
    mover = NativeMover(restore_status=True)
    await mover.export(planes.source.kubeconfig, namespace, tmp_path)
    await mover.import_(planes.by_clusterctl.kubeconfig, tmp_path)
    target = await Kr8sKube.connect(str(planes.by_clusterctl.kubeconfig))
    cluster = await target.get(ResourceRef(CAPI, "Cluster", "s", namespace))
    assert cluster["status"]["initialization"] == {"infrastructureProvisioned": True}
    assert [c["type"] for c in cluster["status"]["conditions"]] == ["ControlPlaneInitialized"]
    assert not move_graph.paused(cluster)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_mover_for_names_each_mover(planes: Planes, tmp_path: Path) -> None:
    assert isinstance(mover_for(MoverKind.CLUSTERCTL), ClusterctlMover)
    assert isinstance(mover_for(MoverKind.NATIVE), NativeMover)
    own = await Kr8sKube.connect(str(planes.native.kubeconfig))
    mover = mover_for(MoverKind.NATIVE, own)
    # Bound to its own API server whatever kubeconfig it is given (the agent's case).
    with pytest.raises(MoveError, match="holds no Cluster API objects"):
        await mover.export(tmp_path / "ignored", "capi-nothing-here", tmp_path / "out")
