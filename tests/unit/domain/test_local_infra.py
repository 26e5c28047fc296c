"""The local provider's plans against Cluster API's v1beta2 infrastructure contract."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import local_infra
from lattice.domain.local_infra import (
    FINALIZER,
    AddFinalizer,
    Boot,
    ClusterPlan,
    MachinePlan,
    Release,
    Report,
    Wait,
    plan_local_cluster,
    plan_local_machine,
    provider_id,
)
from lattice.domain.models import ConditionStatus

Obj = dict[str, Any]

NS = "capi-w1"
CAPI = "cluster.x-k8s.io/v1beta2"
INFRA = "infrastructure.lattice.dev/v1alpha1"
PAUSED = "cluster.x-k8s.io/paused"
DELETE_FOR_MOVE = "clusterctl.cluster.x-k8s.io/delete-for-move"
CONTROL_PLANE = "cluster.x-k8s.io/control-plane"
NOW = "2025-01-01T00:00:00Z"


def cluster(*, paused: bool | None = None, provisioned: bool = True, name: str = "w1") -> Obj:
    spec: Obj = {"infrastructureRef": {"apiGroup": "infrastructure.lattice.dev", "kind": "LocalCluster"}}
    if paused is not None:
        spec["paused"] = paused
    return {
        "apiVersion": CAPI,
        "kind": "Cluster",
        "metadata": {"name": name, "namespace": NS, "uid": "u-cluster"},
        "spec": spec,
        "status": {"initialization": {"infrastructureProvisioned": provisioned}},
    }


def local_cluster(
    *,
    endpoint: Obj | None = None,
    provisioned: bool | None = None,
    annotations: Obj | None = None,
    deleting: bool = False,
) -> Obj:
    meta: Obj = {
        "name": "w1",
        "namespace": NS,
        "ownerReferences": [{"apiVersion": CAPI, "kind": "Cluster", "name": "w1", "uid": "u-cluster"}],
    }
    if annotations is not None:
        meta["annotations"] = annotations
    if deleting:
        meta["deletionTimestamp"] = NOW
    obj: Obj = {"apiVersion": INFRA, "kind": "LocalCluster", "metadata": meta, "spec": {}}
    if endpoint is not None:
        obj["spec"]["controlPlaneEndpoint"] = endpoint
    if provisioned is not None:
        obj["status"] = {"initialization": {"provisioned": provisioned}}
    return obj


def machine(
    *, secret: str | None = "w1-cp-abcde", control_plane: bool = True, version: str | None = "v1.32.0"
) -> Obj:
    labels = {"cluster.x-k8s.io/cluster-name": "w1"}
    if control_plane:
        labels[CONTROL_PLANE] = ""
    spec: Obj = {"clusterName": "w1", "bootstrap": {"configRef": {"kind": "KubeadmConfig", "name": "w1-cp"}}}
    if secret is not None:
        spec["bootstrap"]["dataSecretName"] = secret
    if version is not None:
        spec["version"] = version
    return {
        "apiVersion": CAPI,
        "kind": "Machine",
        "metadata": {"name": "w1-cp-x7k2p", "namespace": NS, "labels": labels, "uid": "u-machine"},
        "spec": spec,
    }


def local_machine(
    *,
    owners: list[Obj] | None = None,
    finalizers: tuple[str, ...] | None = (FINALIZER,),
    annotations: Obj | None = None,
    deleting: bool = False,
    provider: str | None = None,
    provisioned: bool | None = None,
) -> Obj:
    meta: Obj = {
        "name": "w1-cp-x7k2p",
        "namespace": NS,
        "labels": {"cluster.x-k8s.io/cluster-name": "w1"},
        "ownerReferences": (
            [
                {
                    "apiVersion": CAPI,
                    "kind": "Machine",
                    "name": "w1-cp-x7k2p",
                    "uid": "u-machine",
                    "controller": True,
                }
            ]
            if owners is None
            else owners
        ),
    }
    if finalizers is not None:
        meta["finalizers"] = list(finalizers)
    if annotations is not None:
        meta["annotations"] = annotations
    if deleting:
        meta["deletionTimestamp"] = NOW
    obj: Obj = {"apiVersion": INFRA, "kind": "LocalMachine", "metadata": meta, "spec": {}}
    if provider is not None:
        obj["spec"]["providerID"] = provider
    if provisioned is not None:
        obj["status"] = {"initialization": {"provisioned": provisioned}}
    return obj


ENDPOINT = {"host": "127.0.0.1", "port": 40123}
WANTED_ID = "local://w1/w1-cp-x7k2p"


def plan(
    lm: Obj | None = None,
    m: Obj | None = None,
    c: Obj | None = None,
    lc: Obj | None = None,
    *,
    booted: bool = False,
    no_machine: bool = False,
    no_cluster: bool = False,
    no_local_cluster: bool = False,
) -> MachinePlan:
    """``plan_local_machine`` over a world ready for booting (the LocalMachine already claimed with
    the finalizer), but for the objects given or left out."""
    return plan_local_machine(
        local_machine() if lm is None else lm,
        None if no_machine else machine() if m is None else m,
        None if no_cluster else cluster() if c is None else c,
        None if no_local_cluster else local_cluster(endpoint=ENDPOINT) if lc is None else lc,
        booted=booted,
    )


# -- provider_id -----------------------------------------------------------------------------------


def test_provider_id() -> None:
    assert provider_id("w1", "w1-cp-x7k2p") == "local://w1/w1-cp-x7k2p"


@given(cluster_name=st.text(), machine_name=st.text())
def test_provider_id_names_cluster_then_machine(cluster_name: str, machine_name: str) -> None:
    assert provider_id(cluster_name, machine_name) == f"local://{cluster_name}/{machine_name}"


# -- LocalCluster ----------------------------------------------------------------------------------


def test_cluster_waits_for_its_cluster() -> None:
    assert plan_local_cluster(local_cluster(), None, 40000) == ClusterPlan(
        wait="waiting for the Cluster to own this LocalCluster"
    )


def test_cluster_paused_by_the_cluster() -> None:
    assert plan_local_cluster(local_cluster(), cluster(paused=True), 40000) == ClusterPlan(wait="paused")


def test_cluster_paused_by_annotation() -> None:
    paused = local_cluster(annotations={PAUSED: ""})
    assert plan_local_cluster(paused, cluster(paused=False), 40000) == ClusterPlan(wait="paused")


def test_cluster_paused_annotation_on_the_cluster_does_not_pause() -> None:
    """The contract pauses on ``Cluster.spec.paused`` or the annotation on the infra object itself."""
    c = cluster()
    c["metadata"]["annotations"] = {PAUSED: ""}
    assert plan_local_cluster(local_cluster(), c, 40000) == ClusterPlan(endpoint=("127.0.0.1", 40000))


def test_cluster_deleting() -> None:
    assert plan_local_cluster(local_cluster(deleting=True), cluster(), 40000) == ClusterPlan(wait="deleting")


def test_cluster_paused_wins_over_deleting() -> None:
    deleting = local_cluster(deleting=True)
    assert plan_local_cluster(deleting, cluster(paused=True), 40000) == ClusterPlan(wait="paused")


@pytest.mark.parametrize(
    "endpoint",
    [None, {}, {"host": "127.0.0.1"}, {"port": 6443}, {"host": "", "port": 6443}, {"host": "h", "port": 0}],
)
def test_cluster_chooses_an_endpoint(endpoint: Obj | None) -> None:
    assert plan_local_cluster(local_cluster(endpoint=endpoint), cluster(), 40123) == ClusterPlan(
        endpoint=("127.0.0.1", 40123)
    )


def test_cluster_with_neither_spec_nor_metadata_chooses_an_endpoint() -> None:
    assert plan_local_cluster({}, cluster(), 1) == ClusterPlan(endpoint=("127.0.0.1", 1))


@pytest.mark.parametrize("provisioned", [None, False])
def test_cluster_provisioned_once_the_endpoint_is_recorded(provisioned: bool | None) -> None:
    lc = local_cluster(endpoint=ENDPOINT, provisioned=provisioned)
    assert plan_local_cluster(lc, cluster(), 40000) == ClusterPlan(provisioned=True)


def test_cluster_endpoint_never_changes() -> None:
    """A recorded endpoint is kept whatever port is free now."""
    lc = local_cluster(endpoint={"host": "10.0.0.1", "port": 6443}, provisioned=True)
    assert plan_local_cluster(lc, cluster(), 40000) == ClusterPlan()


def test_cluster_plan_defaults() -> None:
    assert ClusterPlan() == ClusterPlan(wait=None, endpoint=None, provisioned=False)


# -- LocalMachine: pause, then deletion ------------------------------------------------------------


def test_machine_paused_by_the_cluster() -> None:
    assert plan(c=cluster(paused=True)) == Wait("paused")


def test_machine_paused_by_annotation() -> None:
    assert plan(local_machine(annotations={PAUSED: "true"})) == Wait("paused")
    assert plan(local_machine(annotations={PAUSED: ""}), no_cluster=True) == Wait("paused")


def test_machine_unpaused_cluster() -> None:
    assert isinstance(plan(c=cluster(paused=False)), Boot)


def test_machine_paused_annotation_on_the_cluster_does_not_pause() -> None:
    c = cluster()
    c["metadata"]["annotations"] = {PAUSED: ""}
    assert isinstance(plan(c=c), Boot)


def test_machine_paused_before_it_is_claimed() -> None:
    """A paused LocalMachine is left alone entirely: not even the finalizer is added."""
    assert plan(local_machine(finalizers=None), c=cluster(paused=True)) == Wait("paused")


@pytest.mark.parametrize(
    ("finalizers", "annotations"),
    [
        ((FINALIZER,), {}),
        ((FINALIZER,), {DELETE_FOR_MOVE: ""}),
        (None, {}),
    ],
)
@pytest.mark.parametrize("paused_by", ["cluster", "annotation"])
def test_machine_paused_wins_over_deleting(
    finalizers: tuple[str, ...] | None, annotations: Obj, paused_by: str
) -> None:
    """clusterctl move pauses the source cluster and then deletes its objects: that deletion must
    not stop the machines, so a paused LocalMachine waits even while it is being deleted."""
    if paused_by == "annotation":
        annotations = {**annotations, PAUSED: ""}
    lm = local_machine(deleting=True, finalizers=finalizers, annotations=annotations)
    c = cluster(paused=paused_by == "cluster")
    assert plan(lm, c=c) == Wait("paused")
    assert plan(lm, c=c, no_machine=True, no_local_cluster=True) == Wait("paused")


@pytest.mark.parametrize("finalizers", [None, (), ("other.example.com",)])
def test_machine_deleting_without_finalizer_waits(finalizers: tuple[str, ...] | None) -> None:
    assert plan(local_machine(deleting=True, finalizers=finalizers)) == Wait("deleting")


def test_machine_deleting_for_move_without_finalizer_waits() -> None:
    lm = local_machine(deleting=True, finalizers=None, annotations={DELETE_FOR_MOVE: ""})
    assert plan(lm) == Wait("deleting")


@pytest.mark.parametrize("finalizers", [(FINALIZER,), ("other.example.com", FINALIZER)])
def test_machine_deleting_with_finalizer_stops_it(finalizers: tuple[str, ...]) -> None:
    lm = local_machine(deleting=True, finalizers=finalizers)
    assert plan(lm) == Release(machine="w1-cp-x7k2p", stop=True)
    assert plan(lm, c=cluster(paused=False)) == Release(machine="w1-cp-x7k2p", stop=True)


def test_machine_deleted_for_move_is_released_without_stopping() -> None:
    """clusterctl move deletes the source objects with the delete-for-move annotation: the machine
    keeps running for the target management cluster."""
    lm = local_machine(deleting=True, annotations={DELETE_FOR_MOVE: ""})
    assert plan(lm) == Release(machine="w1-cp-x7k2p", stop=False)


def test_machine_delete_for_move_annotation_matters_only_on_deletion() -> None:
    assert isinstance(plan(local_machine(annotations={DELETE_FOR_MOVE: ""})), Boot)


def test_machine_deletion_needs_nothing_else() -> None:
    """An unpaused deleting machine is released even when its owners are gone."""
    lm = local_machine(deleting=True, owners=[])
    assert plan(lm, no_machine=True, no_cluster=True, no_local_cluster=True) == Release(
        "w1-cp-x7k2p", stop=True
    )
    lm = local_machine(deleting=True, owners=[], annotations={DELETE_FOR_MOVE: ""})
    assert plan(lm, no_machine=True, no_cluster=True, no_local_cluster=True) == Release(
        "w1-cp-x7k2p", stop=False
    )


def test_machine_release_of_a_nameless_machine() -> None:
    lm = local_machine(deleting=True)
    del lm["metadata"]["name"]
    assert plan(lm) == Release(machine="", stop=True)


# -- LocalMachine: owner, then finalizer -----------------------------------------------------------


OWNER_WAIT = Wait("waiting for a Machine to own this LocalMachine")


@pytest.mark.parametrize("finalizers", [(FINALIZER,), None])
def test_machine_waits_for_the_machine_object(finalizers: tuple[str, ...] | None) -> None:
    assert plan(local_machine(finalizers=finalizers), no_machine=True) == OWNER_WAIT


@pytest.mark.parametrize(
    "owners",
    [
        [],
        [{"apiVersion": CAPI, "kind": "MachineSet", "name": "w1-md-0"}],
        [{"apiVersion": "example.com/v1", "kind": "Machine", "name": "w1-cp-x7k2p"}],
        [{"apiVersion": "cluster.x-k8s.io.evil/v1", "kind": "Machine", "name": "w1-cp-x7k2p"}],
        [{"kind": "Machine", "name": "w1-cp-x7k2p"}],
    ],
)
@pytest.mark.parametrize("finalizers", [(FINALIZER,), None])
def test_machine_waits_for_an_owner_machine(owners: list[Obj], finalizers: tuple[str, ...] | None) -> None:
    """The finalizer is only added once a Machine owns the LocalMachine."""
    assert plan(local_machine(owners=owners, finalizers=finalizers)) == OWNER_WAIT


@pytest.mark.parametrize("version", ["cluster.x-k8s.io/v1beta1", CAPI])
def test_machine_owner_of_any_capi_version(version: str) -> None:
    owners = [
        {"apiVersion": "v1", "kind": "ConfigMap", "name": "x"},
        {"apiVersion": version, "kind": "Machine", "name": "w1-cp-x7k2p"},
    ]
    assert isinstance(plan(local_machine(owners=owners)), Boot)
    assert plan(local_machine(owners=owners, finalizers=None)) == AddFinalizer()


def test_machine_without_metadata_waits_for_an_owner() -> None:
    assert plan({}) == OWNER_WAIT


@pytest.mark.parametrize("finalizers", [None, (), ("other.example.com",)])
def test_machine_adds_the_finalizer(finalizers: tuple[str, ...] | None) -> None:
    assert plan(local_machine(finalizers=finalizers)) == AddFinalizer()


def test_machine_with_the_finalizer_among_others_goes_on() -> None:
    assert isinstance(plan(local_machine(finalizers=("other.example.com", FINALIZER))), Boot)


UNCLAIMED_WORLDS = {
    "ready to boot": {},
    "booted": {"booted": True},
    "no Cluster": {"no_cluster": True},
    "no LocalCluster": {"no_local_cluster": True},
    "cluster infrastructure not provisioned": {"c": cluster(provisioned=False)},
    "no endpoint": {"lc": local_cluster()},
    "no bootstrap data": {"m": machine(secret=None)},
}


@pytest.mark.parametrize("world", UNCLAIMED_WORLDS.values(), ids=UNCLAIMED_WORLDS.keys())
def test_machine_adds_the_finalizer_before_anything_else(world: dict[str, Any]) -> None:
    """Nothing runs for a LocalMachine before it is claimed, so its deletion always waits for the
    stop: the finalizer comes before the waits for the cluster infrastructure, the endpoint and
    the bootstrap data, and before Boot and Report."""
    assert plan(local_machine(finalizers=None), **world) == AddFinalizer()


def test_machine_recorded_but_unclaimed_adds_the_finalizer() -> None:
    """Provisioned is not reported for a LocalMachine without the finalizer."""
    lm = local_machine(provider=WANTED_ID, provisioned=True, finalizers=None)
    assert plan(lm, booted=True) == AddFinalizer()


@given(
    has_machine=st.booleans(),
    owned=st.booleans(),
    has_cluster=st.booleans(),
    has_local_cluster=st.booleans(),
    infrastructure=st.booleans(),
    endpoint=st.booleans(),
    secret=st.booleans(),
    booted=st.booleans(),
    recorded=st.booleans(),
)
def test_machine_without_the_finalizer_is_only_claimed(
    has_machine: bool,
    owned: bool,
    has_cluster: bool,
    has_local_cluster: bool,
    infrastructure: bool,
    endpoint: bool,
    secret: bool,
    booted: bool,
    recorded: bool,
) -> None:
    """An unpaused, undeleted LocalMachine without the finalizer waits for its owner or is claimed:
    it is never booted nor reported."""
    lm = local_machine(
        finalizers=None,
        owners=None if owned else [],
        provider=WANTED_ID if recorded else None,
        provisioned=recorded,
    )
    planned = plan_local_machine(
        lm,
        machine(secret="w1-cp-abcde" if secret else None) if has_machine else None,
        cluster(provisioned=infrastructure) if has_cluster else None,
        local_cluster(endpoint=ENDPOINT if endpoint else None) if has_local_cluster else None,
        booted=booted,
    )
    assert planned == (AddFinalizer() if has_machine and owned else OWNER_WAIT)


# -- LocalMachine: waiting -------------------------------------------------------------------------


def test_machine_waits_for_the_cluster_and_local_cluster() -> None:
    wait = Wait("waiting for the Cluster and its LocalCluster")
    assert plan(no_cluster=True) == wait
    assert plan(no_local_cluster=True) == wait


@pytest.mark.parametrize("status", [None, {}, {"initialization": {}}, {"initialization": None}])
def test_machine_waits_for_cluster_infrastructure(status: Obj | None) -> None:
    c = cluster()
    c["status"] = status
    assert plan(c=c) == Wait("waiting for the cluster infrastructure")


def test_machine_waits_for_cluster_infrastructure_provisioned() -> None:
    assert plan(c=cluster(provisioned=False)) == Wait("waiting for the cluster infrastructure")


@pytest.mark.parametrize(
    "endpoint", [None, {}, {"host": "127.0.0.1"}, {"port": 6443}, {"host": "", "port": 6443}]
)
def test_machine_waits_for_the_endpoint(endpoint: Obj | None) -> None:
    assert plan(lc=local_cluster(endpoint=endpoint)) == Wait("waiting for the control-plane endpoint")


def test_machine_waits_for_the_endpoint_without_a_spec() -> None:
    lc = local_cluster()
    del lc["spec"]
    assert plan(lc=lc) == Wait("waiting for the control-plane endpoint")


@pytest.mark.parametrize("secret", [None, ""])
def test_machine_waits_for_bootstrap_data(secret: str | None) -> None:
    wait = Wait("waiting for the bootstrap data (Machine.spec.bootstrap.dataSecretName)")
    assert plan(m=machine(secret=secret)) == wait


def test_machine_without_spec_waits_for_bootstrap_data() -> None:
    m = machine()
    del m["spec"]
    assert plan(m=m) == Wait("waiting for the bootstrap data (Machine.spec.bootstrap.dataSecretName)")


# -- LocalMachine: boot ----------------------------------------------------------------------------


def test_machine_boots_a_control_plane() -> None:
    assert plan() == Boot(
        cluster="w1",
        machine="w1-cp-x7k2p",
        bootstrap_secret="w1-cp-abcde",
        control_plane=True,
        endpoint=("127.0.0.1", 40123),
        version="v1.32.0",
    )


def test_machine_boots_a_worker() -> None:
    booted = plan(m=machine(control_plane=False, secret="w1-md-0-xyz"))
    assert isinstance(booted, Boot)
    assert booted.control_plane is False
    assert booted.bootstrap_secret == "w1-md-0-xyz"


def test_machine_without_labels_is_a_worker() -> None:
    m = machine()
    del m["metadata"]["labels"]
    booted = plan(m=m)
    assert isinstance(booted, Boot)
    assert not booted.control_plane


def test_machine_boot_reads_the_endpoint_as_host_and_integer_port() -> None:
    booted = plan(lc=local_cluster(endpoint={"host": "localhost", "port": "6443"}))
    assert isinstance(booted, Boot)
    assert booted.endpoint == ("localhost", 6443)


def test_machine_boot_without_version() -> None:
    booted = plan(m=machine(version=None))
    assert isinstance(booted, Boot)
    assert booted.version == ""


def test_machine_boot_names_the_cluster_object() -> None:
    """The cluster is the Cluster's name, not the LocalCluster's."""
    booted = plan(c=cluster(name="prod"))
    assert isinstance(booted, Boot)
    assert booted.cluster == "prod"


# -- LocalMachine: report --------------------------------------------------------------------------


ADDRESSES = (("InternalIP", "127.0.0.1"), ("Hostname", "w1-cp-x7k2p"))


def test_machine_reports_once_booted() -> None:
    assert plan(booted=True) == Report(provider_id=WANTED_ID, addresses=ADDRESSES)


@pytest.mark.parametrize(
    ("provider", "provisioned"),
    [
        (None, None),
        (None, True),
        ("local://other/w1-cp-x7k2p", True),
        ("local://w1/other", True),
        (WANTED_ID, None),
        (WANTED_ID, False),
    ],
)
def test_machine_reports_until_all_is_recorded(provider: str | None, provisioned: bool | None) -> None:
    lm = local_machine(provider=provider, provisioned=provisioned)
    assert plan(lm, booted=True) == Report(provider_id=WANTED_ID, addresses=ADDRESSES)


@pytest.mark.parametrize("status", [{}, {"initialization": None}, {"initialization": {}}])
def test_machine_reports_without_status_initialization(status: Obj) -> None:
    lm = local_machine(provider=WANTED_ID)
    lm["status"] = status
    assert plan(lm, booted=True) == Report(provider_id=WANTED_ID, addresses=ADDRESSES)


def test_machine_reports_without_a_spec() -> None:
    lm = local_machine(provisioned=True)
    del lm["spec"]
    assert plan(lm, booted=True) == Report(provider_id=WANTED_ID, addresses=ADDRESSES)


def test_machine_report_names_the_cluster_object() -> None:
    reported = plan(c=cluster(name="prod"), booted=True)
    assert reported == Report(provider_id="local://prod/w1-cp-x7k2p", addresses=ADDRESSES)


def test_machine_provisioned() -> None:
    lm = local_machine(provider=WANTED_ID, provisioned=True)
    assert plan(lm, booted=True) == Wait("provisioned")


def test_machine_provisioned_with_other_finalizers() -> None:
    lm = local_machine(provider=WANTED_ID, provisioned=True, finalizers=(FINALIZER, "other.example.com"))
    assert plan(lm, booted=True) == Wait("provisioned")


def test_machine_provisioned_elsewhere_is_not_booted_twice() -> None:
    """A fully recorded LocalMachine that this host did not boot runs on another host (the cell,
    before this cluster's pivot): booting it again would start a second machine for it. (A
    restarted host still knows its own machines: they outlive it and it reads their records.)"""
    lm = local_machine(provider=WANTED_ID, provisioned=True)
    assert plan(lm, booted=False) == Wait("provisioned by another host")
    half = local_machine(provider=WANTED_ID, provisioned=False)
    assert isinstance(plan(half, booted=False), Boot)


def test_machine_lifecycle() -> None:
    """Each plan, once applied, leads to the next: claim, boot, report, provisioned, release."""
    lm = local_machine(finalizers=None)
    assert plan(lm) == AddFinalizer()
    lm["metadata"]["finalizers"] = [FINALIZER]
    boot = plan(lm)
    assert isinstance(boot, Boot)
    report = plan(lm, booted=True)
    assert report == Report(provider_id=WANTED_ID, addresses=ADDRESSES)
    lm["spec"]["providerID"] = report.provider_id
    lm["status"] = {"initialization": {"provisioned": True}}
    assert plan(lm, booted=True) == Wait("provisioned")
    lm["metadata"]["deletionTimestamp"] = NOW
    assert plan(lm, booted=True) == Release(machine=boot.machine, stop=True)
    lm["metadata"]["finalizers"] = []
    assert plan(lm, booted=False) == Wait("deleting")


def test_machine_moved_by_clusterctl() -> None:
    """clusterctl move pauses the source, then deletes it with the delete-for-move annotation: while
    paused nothing is done (clusterctl removes the finalizers itself), and a deletion for move that
    is seen unpaused releases the machine without stopping it."""
    lm = local_machine(provider=WANTED_ID, provisioned=True)
    paused = cluster(paused=True)
    assert plan(lm, c=paused, booted=True) == Wait("paused")
    lm["metadata"]["annotations"] = {DELETE_FOR_MOVE: ""}
    lm["metadata"]["deletionTimestamp"] = NOW
    assert plan(lm, c=paused, booted=True) == Wait("paused")
    assert plan(lm, booted=True) == Release(machine="w1-cp-x7k2p", stop=False)


def test_ready_condition_keeps_its_transition_time_until_the_status_flips() -> None:
    t0 = dt.datetime(2026, 12, 6, 1, 0, tzinfo=dt.UTC)
    machine: dict[str, Any] = {"metadata": {"name": "m", "generation": 3}, "status": {}}
    first = local_infra.ready_conditions(machine, ConditionStatus.FALSE, "BootFailed", "x", now=t0)
    assert first == [
        {
            "type": "Ready",
            "status": "False",
            "reason": "BootFailed",
            "message": "x",
            "lastTransitionTime": "2026-12-06T01:00:00Z",
            "observedGeneration": 3,
        }
    ]
    machine["status"]["conditions"] = [*first, {"type": "Other"}]  # unparseable: dropped
    later = t0 + dt.timedelta(minutes=5)
    same = local_infra.ready_conditions(machine, ConditionStatus.FALSE, "BootFailed", "y" * 40000, now=later)
    assert same[0]["lastTransitionTime"] == "2026-12-06T01:00:00Z"
    assert len(same[0]["message"]) == 32768
    assert len(same) == 1
    flipped = local_infra.ready_conditions(machine, ConditionStatus.TRUE, "Booted", "", now=later)
    assert flipped[0]["lastTransitionTime"] == "2026-12-06T01:05:00Z"
    no_generation = local_infra.ready_conditions({"metadata": {}}, ConditionStatus.TRUE, "Booted", "", now=t0)
    assert "observedGeneration" not in no_generation[0]
