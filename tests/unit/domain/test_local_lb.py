from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from lattice.domain import local_lb


def service(
    name: str,
    *,
    ips: str | None = None,
    held: str | None = None,
    kind: str = "LoadBalancer",
    ports: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ns"}
    if ips is not None:
        meta["annotations"] = {local_lb.IPS_ANNOTATION: ips}
    out: dict[str, Any] = {
        "metadata": meta,
        "spec": {"type": kind, "ports": ports if ports is not None else [{"name": "https", "port": 443}]},
    }
    if held:
        out["status"] = {"loadBalancer": {"ingress": [{"ip": held}]}}
    return out


def pool(name: str, *cidrs: str, disabled: bool = False) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"blocks": [{"cidr": c} for c in cidrs], "disabled": disabled},
    }


def pod(
    name: str,
    labels: dict[str, str],
    *,
    ready: bool = True,
    ip: str = "127.0.0.1",
    ports: list[dict[str, Any]] | None = None,
    namespace: str = "ns",
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {"containers": [{"name": "c", "ports": ports or []}]},
        "status": {"podIP": ip, "conditions": [{"type": "Ready", "status": "True" if ready else "False"}]},
    }


def test_addresses_are_requested_kept_or_the_first_free() -> None:
    pools = [pool("b", "127.77.0.0/30"), pool("a", "127.66.0.1/32"), pool("off", "10.0.0.0/8", disabled=True)]
    services = [
        service("asks", ips="127.77.0.2"),
        service("holds", held="127.66.0.1"),
        service("any"),
        service("none"),  # the pools are used up
        service("elsewhere", ips="10.0.0.1"),  # not in an enabled pool: LB-IPAM leaves it pending
        service("plain", kind="ClusterIP"),
    ]
    assert local_lb.allocate(services, pools) == {
        ("ns", "holds"): "127.66.0.1",
        ("ns", "any"): "127.77.0.1",
        ("ns", "asks"): "127.77.0.2",
        ("ns", "elsewhere"): None,
        ("ns", "none"): None,
    }


def test_a_held_address_outside_every_pool_is_given_up() -> None:
    assert local_lb.allocate([service("s", held="192.0.2.1")], [pool("p", "127.1.0.1/32")]) == {
        ("ns", "s"): "127.1.0.1"
    }
    assert local_lb.allocate([service("s")], [pool("p", "not a cidr")]) == {("ns", "s"): None}
    assert local_lb.allocate([service("s", ips="x")], [pool("p", "127.1.0.1/32")]) == {("ns", "s"): None}


def test_status_is_written_only_when_it_changes() -> None:
    held = service("s", held="127.0.0.9")
    assert local_lb.status_patch(held, "127.0.0.9") is None
    assert local_lb.status_patch(service("s"), None) is None
    assert local_lb.status_patch(held, None) == {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "s", "namespace": "ns"},
        "status": {"loadBalancer": {"ingress": []}},
    }
    assert local_lb.status_patch(service("s"), "127.0.0.9")["status"] == {  # type: ignore[index]
        "loadBalancer": {"ingress": [{"ip": "127.0.0.9", "ipMode": "VIP"}]}
    }


def test_only_loopback_addresses_with_a_ready_pod_are_forwarded() -> None:
    def lb(name: str, ports: list[dict[str, Any]], selector: dict[str, str] | None = None) -> dict[str, Any]:
        out = service(name, ports=ports)
        out["spec"]["selector"] = selector if selector is not None else {"app": name}
        return out

    services = [
        lb(
            "a",
            [
                {"name": "https", "port": 443, "targetPort": 8443},
                {"name": "dns", "port": 53, "protocol": "UDP"},
            ],
        ),
        lb("named", [{"port": 80, "targetPort": "http"}]),
        lb("plain", [{"port": 81}]),
        lb("far", [{"port": 443}]),
        lb("notready", [{"port": 443}]),
        lb("noselector", [{"port": 443}], selector={}),
        lb("pending", [{"port": 443}]),
    ]
    assigned: dict[tuple[str, str], str | None] = {
        ("ns", "a"): "127.77.0.1",
        ("ns", "named"): "127.77.0.2",
        ("ns", "plain"): "127.77.0.3",
        ("ns", "far"): "10.0.0.1",
        ("ns", "notready"): "127.77.0.4",
        ("ns", "noselector"): "127.77.0.5",
        ("ns", "pending"): None,
    }
    gone = pod("a-0", {"app": "a"})
    gone["metadata"]["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    pods = [
        gone,
        pod("a-1", {"app": "a"}),
        pod("a-2", {"app": "a"}, namespace="other"),
        pod("named-1", {"app": "named"}, ports=[{"name": "http", "containerPort": 8080}]),
        pod("named-0", {"app": "named"}, ports=[{"name": "other", "containerPort": 1}]),
        pod("plain-1", {"app": "plain"}),
        pod("far-1", {"app": "far"}),
        pod("notready-1", {"app": "notready"}, ready=False),
        pod("noip", {"app": "plain"}, ip=""),
    ]
    assert local_lb.forwards(services, assigned, pods) == {
        local_lb.Forward("127.77.0.1", 443, "127.0.0.1", 8443),
        local_lb.Forward("127.77.0.2", 80, "127.0.0.1", 8080),
        local_lb.Forward("127.77.0.3", 81, "127.0.0.1", 81),
    }


@given(st.lists(st.sampled_from(["127.9.0.1", "127.9.0.2", "127.9.0.3", None]), max_size=8))
def test_no_address_is_given_twice(requests: list[str | None]) -> None:
    services = [service(f"s{i}", ips=r) for i, r in enumerate(requests)]
    given_out = [a for a in local_lb.allocate(services, [pool("p", "127.9.0.0/30")]).values() if a]
    assert len(given_out) == len(set(given_out))
    automatic = {"127.9.0.1", "127.9.0.2"}  # the network and broadcast addresses are never chosen
    assert set(given_out) <= automatic | {r for r in requests if r}
