from __future__ import annotations

import logging

import pytest

from lattice.app.discovery.catalog_service import CatalogService, Outgoing
from lattice.domain.discovery.catalog import ServiceCatalog
from lattice.domain.discovery.messages import (
    RemoteServiceUpdate,
    ServiceCatalogSync,
    ServiceQuery,
    ServiceQueryResponse,
)
from tests.unit.discovery.factories import announcement
from tests.unit.discovery.fakes import FakeClock


def service() -> CatalogService:
    return CatalogService(ServiceCatalog("cell"), FakeClock())


def q(name: str, caller: str = "frontend", qid: str = "q1") -> ServiceQuery:
    return ServiceQuery(query_id=qid, environment="prod", service_name=name, requesting_service=caller)


def test_query_answers_and_registers_a_watch() -> None:
    s = service()
    s.handle_agent_message("cluster-a", announcement("api", allowed=("frontend",)))
    (out,) = s.handle_agent_message("cluster-b", q("api"))
    assert out == Outgoing(
        "cluster-b",
        ServiceQueryResponse(
            query_id="q1",
            found=True,
            service=announcement("api", allowed=("frontend",)),
            bilateral_agreement=True,
        ),
    )
    (denied,) = s.handle_agent_message("cluster-b", q("api", caller="intruder", qid="q2"))
    assert isinstance(denied.message, ServiceQueryResponse)
    assert denied.message.found
    assert not denied.message.bilateral_agreement
    assert denied.message.error_message == "api does not allow intruder"
    (missing,) = s.handle_agent_message("cluster-b", q("db", qid="q3"))
    assert missing.message == ServiceQueryResponse(
        query_id="q3", found=False, error_message="service db not found in environment prod"
    )
    assert s.catalog.watched_by("cluster-b") == {("prod", "api"), ("prod", "db")}


def test_changes_are_pushed_to_dependants() -> None:
    s = service()
    s.handle_agent_message("cluster-b", q("api"))  # not there yet, but now watched
    pushes = s.handle_agent_message("cluster-a", announcement("api", version=3))
    assert pushes == [Outgoing("cluster-b", RemoteServiceUpdate(services=(announcement("api", version=3),)))]
    sync = ServiceCatalogSync(services=(), full_sync=True, cluster_name="cluster-a")
    (gone,) = s.handle_agent_message("cluster-a", sync)
    assert isinstance(gone.message, RemoteServiceUpdate)
    assert gone.message.services[0].deleted


def test_disconnect_forgets_without_pushing() -> None:
    s = service()
    s.handle_agent_message("cluster-a", announcement("api"))
    s.handle_agent_message("cluster-b", q("api"))
    events = s.on_disconnect("cluster-a")
    assert len(events) == 1
    assert s.catalog.service_count() == 0
    assert s.refresh("cluster-b") is None


def test_refresh_pushes_watched_services() -> None:
    s = service()
    s.handle_agent_message("cluster-a", announcement("api"))
    s.handle_agent_message("cluster-b", q("api"))
    out = s.refresh("cluster-b")
    assert out is not None
    assert isinstance(out.message, RemoteServiceUpdate)
    assert [a.service_name for a in out.message.services] == ["api"]


def test_rejections_are_logged(caplog: pytest.LogCaptureFixture) -> None:
    s = service()
    with caplog.at_level(logging.WARNING):
        s.handle_agent_message("cluster-b", announcement("api", cluster="cluster-a"))
        s.handle_agent_message("cluster-a", announcement("api", version=1))
        s.handle_agent_message("cluster-a", announcement("api", version=1))  # stale: not worth a warning
    assert [r.getMessage() for r in caplog.records] == [
        "ignored announcement of prod/api from cluster-b: SourceMismatch"
    ]
