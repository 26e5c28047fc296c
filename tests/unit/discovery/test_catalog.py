from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.domain.discovery.catalog import (
    CatalogEntry,
    Ignored,
    IgnoreReason,
    Registered,
    RemovalCause,
    ServiceCatalog,
    Unregistered,
)
from lattice.domain.discovery.messages import ServiceCatalogSync, ServicePort, allows
from tests.unit.discovery.factories import T0, announcement, entry

T1 = T0 + dt.timedelta(minutes=1)


def catalog() -> ServiceCatalog:
    return ServiceCatalog("cell")


def test_register_then_query_with_bilateral_check() -> None:
    c = catalog()
    event = c.register(entry("api", allowed=("frontend",)))
    assert isinstance(event, Registered)
    assert event.previous is None
    allowed = c.query("prod", "api", "frontend")
    denied = c.query("prod", "api", "intruder")
    assert allowed is not None
    assert allowed.bilateral_agreement
    assert denied is not None
    assert not denied.bilateral_agreement
    assert c.query("prod", "nope", "frontend") is None
    assert c.query("staging", "api", "frontend") is None


def test_wildcard_allows_everyone() -> None:
    c = catalog()
    c.register(entry("api", allowed=("*",)))
    result = c.query("prod", "api", "anyone")
    assert result is not None
    assert result.bilateral_agreement


def test_newer_versions_replace_older_are_ignored() -> None:
    c = catalog()
    c.register(entry("api", version=5))
    assert c.register(entry("api", version=4)) == Ignored(
        ("prod", "api"), "cluster-a", IgnoreReason.STALE_VERSION
    )
    assert isinstance(c.register(entry("api", version=5)), Ignored)
    newer = c.register(entry("api", version=6, allowed=("x",)))
    assert isinstance(newer, Registered)
    assert newer.previous is not None
    assert newer.previous.version == 5
    got = c.get("prod", "api")
    assert got is not None
    assert got.version == 6


def test_another_cluster_can_neither_take_over_nor_unregister() -> None:
    c = catalog()
    c.register(entry("api", cluster="cluster-a", version=1))
    takeover = c.register(entry("api", cluster="cluster-b", version=99))
    assert takeover == Ignored(("prod", "api"), "cluster-b", IgnoreReason.OWNED_BY_OTHER_CLUSTER)
    assert c.unregister("prod", "api", "cluster-b") == Ignored(
        ("prod", "api"), "cluster-b", IgnoreReason.OWNED_BY_OTHER_CLUSTER
    )
    got = c.get("prod", "api")
    assert got is not None
    assert got.source_cluster == "cluster-a"
    assert c.services_of("cluster-b") == []
    # Once the owner lets go, the name is free.
    assert isinstance(c.unregister("prod", "api", "cluster-a"), Unregistered)
    assert isinstance(c.register(entry("api", cluster="cluster-b", version=1)), Registered)


def test_unregister_unknown_and_invalid_entries() -> None:
    c = catalog()
    assert c.unregister("prod", "api", "cluster-a") == Ignored(
        ("prod", "api"), "cluster-a", IgnoreReason.NOT_REGISTERED
    )
    assert c.register(entry("", cluster="cluster-a")).reason is IgnoreReason.INVALID  # type: ignore[union-attr]
    assert c.service_count() == 0


def test_indices_follow_registrations_and_removals() -> None:
    c = catalog()
    for name, cluster, env in [
        ("api", "cluster-a", "prod"),
        ("web", "cluster-a", "prod"),
        ("db", "cluster-b", "prod"),
        ("api", "cluster-b", "staging"),
    ]:
        c.register(entry(name, cluster=cluster, environment=env))
    assert [e.name for e in c.list_services("prod")] == ["api", "db", "web"]
    assert [e.key for e in c.services_of("cluster-b")] == [("prod", "db"), ("staging", "api")]
    assert c.clusters() == ["cluster-a", "cluster-b"]
    assert c.environments() == ["prod", "staging"]
    assert (c.service_count(), c.cluster_count()) == (4, 2)
    events = c.remove_cluster("cluster-b")
    assert [(e.entry.name, e.cause) for e in events if isinstance(e, Unregistered)] == [
        ("db", RemovalCause.CLUSTER_REMOVED),
        ("api", RemovalCause.CLUSTER_REMOVED),
    ]
    assert c.environments() == ["prod"]
    assert c.list_services("staging") == []
    assert c.clusters() == ["cluster-a"]
    assert c.remove_cluster("cluster-b") == []


def test_announcements_come_from_the_stream_identity() -> None:
    c = catalog()
    spoofed = c.apply_announcement("cluster-b", announcement("api", cluster="cluster-a"), T0)
    assert spoofed == Ignored(("prod", "api"), "cluster-b", IgnoreReason.SOURCE_MISMATCH)
    unnamed = announcement("api", cluster="")
    assert isinstance(c.apply_announcement("cluster-b", unnamed, T0), Registered)
    got = c.get("prod", "api")
    assert got is not None
    assert got.source_cluster == "cluster-b"
    assert got.last_updated == T0


def test_deletion_by_the_owner_always_wins() -> None:
    c = catalog()
    c.apply_announcement("cluster-a", announcement("api", version=50), T0)
    event = c.apply_announcement("cluster-a", announcement("api", version=0, deleted=True), T1)
    assert isinstance(event, Unregistered)
    assert event.cause is RemovalCause.DELETED
    assert c.get("prod", "api") is None


def test_incremental_sync_only_adds() -> None:
    c = catalog()
    c.register(entry("old"))
    sync = ServiceCatalogSync(services=(announcement("new"),), full_sync=False, cluster_name="cluster-a")
    c.apply_sync("cluster-a", sync, T0)
    assert [e.name for e in c.services_of("cluster-a")] == ["new", "old"]


def test_full_sync_replaces_the_clusters_services_only() -> None:
    c = catalog()
    c.register(entry("old"))
    c.register(entry("kept", version=3))
    c.register(entry("other", cluster="cluster-b"))
    sync = ServiceCatalogSync(
        services=(announcement("kept", version=3), announcement("new"), announcement("gone", deleted=True)),
        full_sync=True,
        cluster_name="cluster-a",
    )
    events = c.apply_sync("cluster-a", sync, T0)
    assert [e.name for e in c.services_of("cluster-a")] == ["kept", "new"]
    assert [e.name for e in c.services_of("cluster-b")] == ["other"]
    dropped = [e for e in events if isinstance(e, Unregistered)]
    assert [(e.entry.name, e.cause) for e in dropped] == [("old", RemovalCause.DROPPED_BY_FULL_SYNC)]


def test_sync_naming_another_cluster_is_rejected_whole() -> None:
    c = catalog()
    sync = ServiceCatalogSync(
        services=(announcement("x", cluster=""),), full_sync=True, cluster_name="cluster-a"
    )
    assert c.apply_sync("cluster-b", sync, T0) == [
        Ignored(("", ""), "cluster-b", IgnoreReason.SOURCE_MISMATCH)
    ]
    assert c.service_count() == 0


def test_entry_normalises_ports_and_callers() -> None:
    a = announcement(
        "api",
        ports=(ServicePort("web", 80, "HTTP"), ServicePort("api", 81, "GRPC"), ServicePort("web", 82, "TCP")),
    )
    e = CatalogEntry.from_announcement(a, T0)
    assert [p.name for p in e.ports] == ["api", "web"]
    assert e.ports[1].port == 82
    back = e.to_announcement()
    assert back.allowed_callers == ("*",)
    assert back.ports == e.ports
    assert e.same_content(CatalogEntry.from_announcement(a, T1))
    assert allows(("frontend",), "frontend")
    assert not allows(("frontend",), "x")


# --------------------------------------------------------------------------- watches and pushes


def test_pushes_go_to_watchers_except_the_owner() -> None:
    c = catalog()
    c.watch("cluster-b", "prod", "api")
    c.watch("cluster-c", "prod", "api")
    c.watch("cluster-a", "prod", "api")  # the owner itself: never pushed its own service
    events = [c.apply_announcement("cluster-a", announcement("api", version=2), T0)]
    pushes = c.pushes(events)
    assert [cluster for cluster, _ in pushes] == ["cluster-b", "cluster-c"]
    assert pushes[0][1].services == (announcement("api", version=2),)
    assert not pushes[0][1].full_sync


def test_unchanged_content_and_disconnects_are_not_pushed_deletions_are() -> None:
    c = catalog()
    c.watch("cluster-b", "prod", "api")
    c.register(entry("api", version=1))
    same = c.register(CatalogEntry.from_announcement(announcement("api", version=2), T1))
    assert isinstance(same, Registered)
    assert c.pushes([same]) == []
    assert c.pushes(c.remove_cluster("cluster-a")) == []
    assert c.pushes([Ignored(("prod", "api"), "x", IgnoreReason.STALE_VERSION)]) == []
    c.register(entry("api", version=3))
    deleted = c.apply_announcement("cluster-a", announcement("api", deleted=True, version=0), T1)
    ((cluster, update),) = c.pushes([deleted])
    assert cluster == "cluster-b"
    (gone,) = update.services
    assert gone.deleted
    assert gone.key == ("prod", "api")


def test_watches_are_dropped_with_the_cluster() -> None:
    c = catalog()
    c.watch("cluster-b", "prod", "api")
    c.watch("cluster-b", "prod", "db")
    c.watch("cluster-c", "prod", "api")
    assert c.watched_by("cluster-b") == {("prod", "api"), ("prod", "db")}
    c.remove_cluster("cluster-b")
    assert c.watchers("prod", "api") == {"cluster-c"}
    assert c.watchers("prod", "db") == frozenset()
    assert c.watched_by("cluster-b") == frozenset()


def test_refresh_lists_watched_registered_services() -> None:
    c = catalog()
    c.register(entry("api"))
    c.register(entry("own", cluster="cluster-b"))
    for name in ("api", "missing", "own"):
        c.watch("cluster-b", "prod", name)
    update = c.refresh_for("cluster-b")
    assert [a.service_name for a in update.services] == ["api"]
    assert not update.full_sync
    assert c.refresh_for("nobody").services == ()


# --------------------------------------------------------------------------- properties

clusters = st.sampled_from(["cluster-a", "cluster-b", "cluster-c"])
names = st.sampled_from(["api", "db", "web"])
ops = st.lists(
    st.tuples(
        st.sampled_from(["register", "unregister", "remove", "delete"]), clusters, names, st.integers(0, 20)
    ),
    max_size=40,
)


def _state(c: ServiceCatalog) -> dict[tuple[str, str], tuple[str, int]]:
    return {e.key: (e.source_cluster, e.version) for env in c.environments() for e in c.list_services(env)}


@given(ops)
def test_no_cluster_ever_removes_or_replaces_another_clusters_service(
    operations: list[tuple[str, str, str, int]],
) -> None:
    c = catalog()
    for op, cluster, name, version in operations:
        before = _state(c)
        if op == "register":
            c.register(entry(name, cluster=cluster, version=version))
        elif op == "unregister":
            c.unregister("prod", name, cluster)
        elif op == "delete":
            c.apply_announcement(cluster, announcement(name, cluster=cluster, deleted=True), T0)
        else:
            c.remove_cluster(cluster)
        after = _state(c)
        for key, (owner, _) in before.items():
            if owner != cluster:
                assert after.get(key, (None, 0))[0] == owner, (op, cluster, key)
        # Indices agree with the entries.
        assert sorted(k for cl in c.clusters() for k in (e.key for e in c.services_of(cl))) == sorted(after)


@given(st.lists(st.integers(0, 100), min_size=1, max_size=30))
def test_version_is_monotonic_while_registered(versions: list[int]) -> None:
    c = catalog()
    seen: list[int] = []
    for version in versions:
        c.register(entry("api", version=version))
        got = c.get("prod", "api")
        assert got is not None
        seen.append(got.version)
    assert seen == sorted(seen)
    assert seen[-1] == max(versions)


announcements = st.lists(
    st.builds(lambda n, v, d: announcement(n, version=v, deleted=d), names, st.integers(0, 5), st.booleans()),
    max_size=6,
)


@given(announcements, announcements)
def test_full_sync_is_idempotent(existing: list, listed: list) -> None:  # type: ignore[type-arg]
    c = catalog()
    c.apply_sync(
        "cluster-a", ServiceCatalogSync(tuple(existing), full_sync=False, cluster_name="cluster-a"), T0
    )
    c.register(entry("foreign", cluster="cluster-b"))
    sync = ServiceCatalogSync(tuple(listed), full_sync=True, cluster_name="cluster-a")
    c.apply_sync("cluster-a", sync, T0)
    first = _state(c)
    second_events = c.apply_sync("cluster-a", sync, T1)
    assert _state(c) == first
    assert not [e for e in second_events if isinstance(e, (Registered, Unregistered))]
    # The result lists exactly the non-deleted announced services of cluster-a.
    last = {a.key: a for a in listed}
    assert {k for k, (owner, _) in first.items() if owner == "cluster-a"} == {
        k for k, a in last.items() if not a.deleted
    }
    assert first[("prod", "foreign")] == ("cluster-b", 1)


@given(
    st.lists(st.sampled_from(["frontend", "web", "*", "db"]), max_size=4, unique=True),
    st.sampled_from(["frontend", "web", "db", "x"]),
)
def test_bilateral_check_matches_the_spec_rule(allowed: list[str], caller: str) -> None:
    c = catalog()
    c.register(entry("api", allowed=tuple(allowed)))
    result = c.query("prod", "api", caller)
    assert result is not None
    assert result.bilateral_agreement == ("*" in allowed or caller in allowed)


@pytest.mark.parametrize("caller", ["frontend", "*"])
def test_wildcard_caller_name_is_not_special_on_the_caller_side(caller: str) -> None:
    c = catalog()
    c.register(entry("api", allowed=("frontend",)))
    result = c.query("prod", "api", caller)
    assert result is not None
    assert result.bilateral_agreement is (caller == "frontend")
