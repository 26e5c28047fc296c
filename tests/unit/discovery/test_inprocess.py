from __future__ import annotations

import pytest

from lattice.app.discovery.catalog_service import CatalogService
from lattice.app.discovery.inprocess import InProcessHub
from lattice.domain.discovery.catalog import ServiceCatalog
from lattice.domain.discovery.messages import RemoteServiceUpdate, ServiceCatalogSync, ServiceQuery
from lattice.ports.discovery import ParentChannel, ParentUnavailable
from tests.unit.discovery.factories import announcement
from tests.unit.discovery.fakes import FakeClock

pytestmark = pytest.mark.anyio


async def test_hub_routes_queries_and_pushes() -> None:
    hub = InProcessHub(CatalogService(ServiceCatalog("cell"), FakeClock()))
    received: list[RemoteServiceUpdate] = []
    b: ParentChannel = hub.attach("cluster-b", received.append)
    a = hub.attach("cluster-a", lambda update: None)
    response = await b.query(ServiceQuery("q1", "prod", "api", "frontend"))
    assert not response.found
    await a.announce(announcement("api"))
    assert [u.services[0].service_name for u in received] == ["api"]
    hub.detach("cluster-b")
    await a.sync(
        ServiceCatalogSync(
            services=(announcement("api", version=2, allowed=("x",)),),
            full_sync=True,
            cluster_name="cluster-a",
        )
    )
    assert len(received) == 1  # detached: pushes dropped
    with pytest.raises(ParentUnavailable):
        await b.query(ServiceQuery("q2", "prod", "api", "frontend"))
