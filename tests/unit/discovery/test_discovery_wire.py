"""Discovery messages <-> lattice.agent.v1 protobuf: round trips through bytes, bad input."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lattice.adapters import discovery_wire as w
from lattice.domain.discovery import messages as m
from lattice.proto.agent.v1 import agent_pb2 as pb
from tests.unit.discovery.factories import announcement

_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=20)
_text = st.text(max_size=30)
_ports = st.builds(
    m.ServicePort,
    name=_names,
    port=st.integers(1, 65535),
    protocol=st.sampled_from(["HTTP", "HTTPS", "GRPC", "TCP"]),
)
_announcements = st.builds(
    m.ServiceAnnouncement,
    environment=_names,
    service_name=_names,
    ports=st.lists(_ports, max_size=3).map(tuple),
    allowed_callers=st.lists(st.one_of(_names, st.just("*")), max_size=3).map(tuple),
    source_cluster=_text,
    qualified_dns_name=_text,
    gateway_endpoint=_text,
    deleted=st.booleans(),
    version=st.integers(-(2**63), 2**63 - 1),
)
_agent_messages: st.SearchStrategy[m.AgentDiscoveryMessage] = st.one_of(
    _announcements,
    st.builds(
        m.ServiceCatalogSync,
        services=st.lists(_announcements, max_size=3).map(tuple),
        full_sync=st.booleans(),
        cluster_name=_text,
    ),
    st.builds(
        m.ServiceQuery,
        query_id=_names,
        environment=_names,
        service_name=_names,
        requesting_service=_text,
    ),
)
_cell_messages: st.SearchStrategy[m.CellDiscoveryMessage] = st.one_of(
    st.builds(
        m.ServiceQueryResponse,
        query_id=_names,
        found=st.just(True),
        service=_announcements,
        bilateral_agreement=st.booleans(),
        error_message=_text,
    ),
    st.builds(
        m.ServiceQueryResponse,
        query_id=_names,
        found=st.just(False),
        service=st.none(),
        bilateral_agreement=st.booleans(),
        error_message=_text,
    ),
    st.builds(
        m.RemoteServiceUpdate,
        services=st.lists(_announcements, max_size=3).map(tuple),
        full_sync=st.booleans(),
    ),
)


@given(_agent_messages)
def test_agent_messages_round_trip_through_bytes(message: m.AgentDiscoveryMessage) -> None:
    encoded = w.agent_message_to_pb("cluster-a", message).SerializeToString()
    decoded = pb.AgentMessage.FromString(encoded)
    assert decoded.cluster_name == "cluster-a"
    assert w.agent_message_from_pb(decoded) == message


@given(_cell_messages)
def test_cell_messages_round_trip_through_bytes(message: m.CellDiscoveryMessage) -> None:
    encoded = w.cell_message_to_pb(message).SerializeToString()
    decoded = pb.CellCommand.FromString(encoded)
    assert decoded.command_id == ""  # discovery messages are not answered
    assert w.cell_message_from_pb(decoded) == message


def test_field_numbers_match_the_spec() -> None:
    agent_fields = pb.AgentMessage.DESCRIPTOR.fields_by_name
    assert agent_fields["service_announcement"].number == 9
    assert agent_fields["catalog_sync"].number == 10
    assert agent_fields["service_query"].number == 11
    cell_fields = pb.CellCommand.DESCRIPTOR.fields_by_name
    assert cell_fields["service_query_response"].number == 6
    assert cell_fields["remote_service_update"].number == 7


def test_payload_kind_of_each_message() -> None:
    ann = announcement("api")
    assert w.agent_message_to_pb("a", ann).WhichOneof("payload") == "service_announcement"
    sync = m.ServiceCatalogSync(services=(ann,), full_sync=True, cluster_name="a")
    assert w.agent_message_to_pb("a", sync).WhichOneof("payload") == "catalog_sync"
    query = m.ServiceQuery("q", "prod", "api", "frontend")
    assert w.agent_message_to_pb("a", query).WhichOneof("payload") == "service_query"
    response = m.ServiceQueryResponse("q", False, error_message="nope")
    assert w.cell_message_to_pb(response).WhichOneof("command") == "service_query_response"
    update = m.RemoteServiceUpdate((ann,))
    assert w.cell_message_to_pb(update).WhichOneof("command") == "remote_service_update"


def test_other_payloads_are_not_discovery() -> None:
    assert w.agent_message_from_pb(pb.AgentMessage(heartbeat=pb.Heartbeat())) is None
    assert w.agent_message_from_pb(pb.AgentMessage()) is None
    assert w.cell_message_from_pb(pb.CellCommand(status_request=pb.StatusRequest())) is None
    assert w.cell_message_from_pb(pb.CellCommand()) is None


def _ann(**fields: object) -> pb.ServiceAnnouncement:
    base: dict[str, object] = {"environment": "prod", "service_name": "api"}
    base.update(fields)
    return pb.ServiceAnnouncement(**base)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (pb.AgentMessage(service_announcement=_ann(environment="")), "service_announcement.environment"),
        (pb.AgentMessage(service_announcement=_ann(service_name="")), "service_announcement.service_name"),
        (
            pb.AgentMessage(service_announcement=_ann(ports=[pb.ServicePort(name="http", port=0)])),
            "service_announcement.ports[0].port",
        ),
        (
            pb.AgentMessage(
                service_announcement=_ann(
                    ports=[pb.ServicePort(name="a", port=80), pb.ServicePort(name="b", port=70000)]
                )
            ),
            "service_announcement.ports[1].port",
        ),
        (
            pb.AgentMessage(catalog_sync=pb.ServiceCatalogSync(services=[_ann(), _ann(service_name="")])),
            "catalog_sync.services[1].service_name",
        ),
        (
            pb.AgentMessage(service_query=pb.ServiceQuery(environment="prod", service_name="api")),
            "service_query.query_id",
        ),
        (
            pb.AgentMessage(service_query=pb.ServiceQuery(query_id="q", service_name="api")),
            "service_query.environment",
        ),
        (
            pb.AgentMessage(service_query=pb.ServiceQuery(query_id="q", environment="prod")),
            "service_query.service_name",
        ),
    ],
)
def test_malformed_agent_messages_are_rejected_with_the_field(message: pb.AgentMessage, field: str) -> None:
    with pytest.raises(w.DiscoveryWireError) as caught:
        w.agent_message_from_pb(message)
    assert caught.value.field == field
    assert field in str(caught.value)
    assert isinstance(caught.value, ValueError)


@pytest.mark.parametrize(
    ("message", "field"),
    [
        (
            pb.CellCommand(service_query_response=pb.ServiceQueryResponse(found=False)),
            "service_query_response.query_id",
        ),
        (
            pb.CellCommand(service_query_response=pb.ServiceQueryResponse(query_id="q", found=True)),
            "service_query_response.service",
        ),
        (
            pb.CellCommand(
                service_query_response=pb.ServiceQueryResponse(
                    query_id="q", found=True, service=_ann(environment="")
                )
            ),
            "service_query_response.service.environment",
        ),
        (
            pb.CellCommand(remote_service_update=pb.RemoteServiceUpdate(services=[_ann(service_name="")])),
            "remote_service_update.services[0].service_name",
        ),
    ],
)
def test_malformed_cell_messages_are_rejected_with_the_field(message: pb.CellCommand, field: str) -> None:
    with pytest.raises(w.DiscoveryWireError) as caught:
        w.cell_message_from_pb(message)
    assert caught.value.field == field


def test_a_not_found_response_may_carry_a_service() -> None:
    response = pb.ServiceQueryResponse(query_id="q", found=False, service=_ann())
    decoded = w.response_from_pb(response)
    assert not decoded.found
    assert decoded.service is not None
    assert decoded.service.key == ("prod", "api")
