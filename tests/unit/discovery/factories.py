"""Builders for discovery tests: LatticeService documents, validated services, announcements."""

from __future__ import annotations

import datetime as dt
from typing import Any

from lattice.domain import lattice_service
from lattice.domain.discovery.catalog import CatalogEntry
from lattice.domain.discovery.messages import ServiceAnnouncement, ServicePort
from lattice.domain.discovery.naming import ClusterContext

T0 = dt.datetime(2026, 1, 1, tzinfo=dt.UTC)
BASE_DOMAIN = "lattice.example.com"


def service_doc(
    name: str,
    *,
    namespace: str = "shop",
    environment: str = "prod",
    ports: dict[str, Any] | None = None,
    outbound: tuple[str, ...] = (),
    inbound: tuple[str, ...] = (),
    both: tuple[str, ...] = (),
    resource_version: str | None = "1",
) -> dict[str, Any]:
    resources: dict[str, Any] = {}
    for direction, names in (("outbound", outbound), ("inbound", inbound), ("both", both)):
        for other in names:
            resources[other] = {"type": "service", "direction": direction}
    spec: dict[str, Any] = {"environment": environment}
    if ports is not None:
        spec["service"] = {"ports": ports}
    if resources:
        spec["resources"] = resources
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if resource_version is not None:
        metadata["resourceVersion"] = resource_version
    return {
        "apiVersion": "lattice.dev/v1alpha1",
        "kind": "LatticeService",
        "metadata": metadata,
        "spec": spec,
    }


def valid(doc: dict[str, Any]) -> lattice_service.ValidService:
    parsed = lattice_service.service_from_dict(doc)
    assert isinstance(parsed, lattice_service.LatticeService), parsed
    result = lattice_service.validate_service(parsed)
    assert isinstance(result, lattice_service.ValidService), result
    return result


def svc(name: str, **kwargs: Any) -> lattice_service.ValidService:
    return valid(service_doc(name, **kwargs))


HTTP = {"http": {"port": 8080, "protocol": "HTTP"}}


def announcement(
    name: str,
    *,
    cluster: str = "cluster-a",
    environment: str = "prod",
    allowed: tuple[str, ...] = ("*",),
    version: int = 1,
    ports: tuple[ServicePort, ...] = (ServicePort("http", 8080, "HTTP"),),
    gateway: str | None = None,
    deleted: bool = False,
) -> ServiceAnnouncement:
    return ServiceAnnouncement(
        environment=environment,
        service_name=name,
        ports=ports,
        allowed_callers=allowed,
        source_cluster=cluster,
        qualified_dns_name=f"{name}.{environment}.{cluster}.{BASE_DOMAIN}",
        gateway_endpoint=gateway or f"gateway.{cluster}.{BASE_DOMAIN}:443",
        deleted=deleted,
        version=version,
    )


def entry(name: str, **kwargs: Any) -> CatalogEntry:
    return CatalogEntry.from_announcement(announcement(name, **kwargs), T0)


def context(cluster: str = "cluster-b", **kwargs: Any) -> ClusterContext:
    return ClusterContext(cluster_name=cluster, base_domain=BASE_DOMAIN, **kwargs)
