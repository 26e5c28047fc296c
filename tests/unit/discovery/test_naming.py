from __future__ import annotations

import pytest

from lattice.domain.discovery.messages import ServicePort
from lattice.domain.discovery.naming import (
    announcement_for,
    deletion_for,
    gateway_endpoint,
    is_ip,
    parse_gateway_endpoint,
    qualified_dns_name,
    remote_service_entry_name,
    spiffe_principal,
)
from tests.unit.discovery.factories import HTTP, context, svc


def test_qualified_dns_name_format() -> None:
    assert qualified_dns_name("api", "prod", "cluster-a", "lattice.example.com") == (
        "api.prod.cluster-a.lattice.example.com"
    )
    assert context("cluster-a").qualified_dns_name("prod", "api") == "api.prod.cluster-a.lattice.example.com"


@pytest.mark.parametrize(
    ("endpoint", "expected"),
    [
        ("gateway.cluster-a.lattice.example.com:443", ("gateway.cluster-a.lattice.example.com", 443)),
        ("gw.example.com:8443", ("gw.example.com", 8443)),
        ("gw.example.com", ("gw.example.com", 443)),
        ("gw.example.com:http", ("gw.example.com", 443)),
        ("gw.example.com:0", ("gw.example.com", 443)),
        ("10.0.0.1:9443", ("10.0.0.1", 9443)),
        ("[fd00::1]:8443", ("fd00::1", 8443)),
        ("[fd00::1]", ("fd00::1", 443)),
        ("fd00::1", ("fd00::1", 443)),
    ],
)
def test_parse_gateway_endpoint(endpoint: str, expected: tuple[str, int]) -> None:
    assert parse_gateway_endpoint(endpoint) == expected


def test_gateway_endpoint_round_trips() -> None:
    for host in ("gw.example.com", "10.0.0.1", "fd00::1"):
        assert parse_gateway_endpoint(gateway_endpoint(host, 8443)) == (host, 8443)


def test_names_and_identities() -> None:
    assert is_ip("10.1.2.3")
    assert is_ip("fd00::1")
    assert not is_ip("gw.example.com")
    assert spiffe_principal("cluster.local", "shop", "frontend") == "cluster.local/ns/shop/sa/frontend"
    assert remote_service_entry_name("cluster-a", "api") == "remote-cluster-a-api"


def test_gateway_defaults_and_overrides() -> None:
    default = context("cluster-a")
    assert default.gateway_hostname == "gateway.cluster-a.lattice.example.com"
    assert default.gateway_endpoint == "gateway.cluster-a.lattice.example.com:443"
    custom = context("cluster-a", gateway_host="edge.example.net", gateway_port=8443)
    assert custom.gateway_endpoint == "edge.example.net:8443"


def test_announcement_for_a_local_service() -> None:
    service = svc("api", ports=HTTP, inbound=("frontend", "*"), resource_version="77")
    a = announcement_for(service, context("cluster-a"))
    assert a.key == ("prod", "api")
    assert a.ports == (ServicePort("http", 8080, "HTTP"),)
    assert a.allowed_callers == ("*", "frontend")
    assert a.source_cluster == "cluster-a"
    assert a.qualified_dns_name == "api.prod.cluster-a.lattice.example.com"
    assert a.gateway_endpoint == "gateway.cluster-a.lattice.example.com:443"
    assert (a.deleted, a.version) == (False, 77)
    gone = deletion_for("prod", "api", context("cluster-a"))
    assert (gone.deleted, gone.version, gone.source_cluster) == (True, 0, "cluster-a")
