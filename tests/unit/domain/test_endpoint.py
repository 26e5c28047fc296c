"""One endpoint type: ``HOST:PORT`` read and written in one place, IPv6 in brackets everywhere.

The properties: every valid endpoint is written so that it reads back as itself; text that is
not an endpoint is refused with a reason that names the field, never with an exception. Then
``::1`` at every place that writes a cell's endpoint for someone else to read: the registration
URL in the kubeadm script, the agent's ``--parent``, a child operator's ``--parent-endpoint``.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from lattice.app import cli, cmd_agent, yamlio
from lattice.app.operator.cell_role import CellSettings
from lattice.domain import agent_payload, capi, capi_managers, install_plan, models, serde, validation
from lattice.domain.discovery.naming import gateway_endpoint, parse_gateway_endpoint
from lattice.domain.endpoint import (
    Endpoint,
    host_error,
    is_dns_name,
    is_ip,
    parse_host_ports,
    parse_port,
    split_host_ports,
)
from lattice.domain.errors import FieldError
from lattice.domain.operator_command import operator_argv

ipv4_hosts = st.ip_addresses(v=4).map(str)
ipv6_hosts = st.ip_addresses(v=6).map(str)
dns_hosts = st.from_regex(
    r"[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,20}[a-z0-9])?){0,4}", fullmatch=True
)
hosts = st.one_of(ipv4_hosts, ipv6_hosts, st.just("::1"), dns_hosts)
ports = st.integers(1, 65535)
endpoints = st.builds(Endpoint, hosts, ports)
parents = st.builds(capi.ParentEndpoint, hosts, ports, ports)


# --- writing -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("endpoint", "text"),
    [
        (Endpoint("::1", 50051), "[::1]:50051"),
        (Endpoint("fd00::1", 8443), "[fd00::1]:8443"),
        (Endpoint("10.0.0.1", 1), "10.0.0.1:1"),
        (Endpoint("cell.example.com", 65535), "cell.example.com:65535"),
    ],
)
def test_an_ipv6_host_is_written_in_brackets(endpoint: Endpoint, text: str) -> None:
    assert str(endpoint) == endpoint.authority == text
    assert endpoint.url("https", "/healthz") == f"https://{text}/healthz"
    assert endpoint.url("http") == f"http://{text}"


# --- reading -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[::1]:50051", Endpoint("::1", 50051)),
        ("[fd00::1]:8443", Endpoint("fd00::1", 8443)),
        ("[FD00:0:0::1]:8443", Endpoint("FD00:0:0::1", 8443)),
        ("10.0.0.1:50051", Endpoint("10.0.0.1", 50051)),
        ("localhost:1", Endpoint("localhost", 1)),
        ("cell.example.com:65535", Endpoint("cell.example.com", 65535)),
        ("cell:08443", Endpoint("cell", 8443)),
    ],
)
def test_parse(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text, "--parent") == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cell.example.com", Endpoint("cell.example.com", 8443)),
        ("10.0.0.1", Endpoint("10.0.0.1", 8443)),
        ("::1", Endpoint("::1", 8443)),
        ("[::1]", Endpoint("::1", 8443)),
        ("fd00::1", Endpoint("fd00::1", 8443)),
        ("[fd00::1]:9443", Endpoint("fd00::1", 9443)),
        ("cell:9443", Endpoint("cell", 9443)),
    ],
)
def test_parse_with_a_default_port(text: str, expected: Endpoint) -> None:
    assert Endpoint.parse(text, "--cell-host", default_port=8443) == expected


def test_port_zero_only_where_it_means_pick_a_free_port() -> None:
    assert Endpoint.parse("127.0.0.1:0", "--health-addr", allow_port_zero=True) == Endpoint("127.0.0.1", 0)
    assert Endpoint.parse("[::1]:0", "--health-addr", allow_port_zero=True) == Endpoint("::1", 0)
    assert Endpoint.parse("127.0.0.1:0", "--parent") == FieldError(
        ("--parent",), "'0' is not a port number: it must be a number within 1-65535"
    )
    assert Endpoint.parse("h:65536", "--health-addr", allow_port_zero=True) == FieldError(
        ("--health-addr",), "'65536' is not a port number: it must be a number within 0-65535"
    )


HINT = "write IPv6 addresses as [ADDR]:PORT"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("nowhere", "'nowhere' must be HOST:PORT"),
        ("", "'' must be HOST:PORT"),
        (":50051", "':50051' must be HOST:PORT"),
        ("::1:50051", f"'::1:50051' must be HOST:PORT; {HINT}"),
        ("::1", f"'::1' must be HOST:PORT; {HINT}"),
        ("fd00::1:8443", f"'fd00::1:8443' must be HOST:PORT; {HINT}"),
        ("[::1]", f"'[::1]' must be HOST:PORT; {HINT}"),
        ("host:1:2", f"'host:1:2' must be HOST:PORT; {HINT}"),
        ("[::1:50051", f"'[::1:50051' must be HOST:PORT; {HINT}"),
        ("[::1]50051", f"'[::1]50051' must be HOST:PORT; {HINT}"),
        ("[cell.example.com]:50051", f"'[cell.example.com]:50051' must be HOST:PORT; {HINT}"),
        ("[10.0.0.1]:50051", f"'[10.0.0.1]:50051' must be HOST:PORT; {HINT}"),
        ("[]:50051", f"'[]:50051' must be HOST:PORT; {HINT}"),
        ("host:http", "'http' is not a port number: it must be a number within 1-65535"),
        ("host:70000", "'70000' is not a port number: it must be a number within 1-65535"),
        ("host:", "'' is not a port number: it must be a number within 1-65535"),
        ("[::1]:", "'' is not a port number: it must be a number within 1-65535"),
        ("host:-1", "'-1' is not a port number: it must be a number within 1-65535"),
        ("host:+80", "'+80' is not a port number: it must be a number within 1-65535"),
        ("host: 80", "' 80' is not a port number: it must be a number within 1-65535"),
        ("host:\u0668\u0660", "'\u0668\u0660' is not a port number: it must be a number within 1-65535"),
        ("bad host:1", "'bad host' is neither an IP address nor a DNS name"),
        ("Cell.Example.com:1", "'Cell.Example.com' is neither an IP address nor a DNS name"),
        ("cell_1:1", "'cell_1' is neither an IP address nor a DNS name"),
        ("-cell:1", "'-cell' is neither an IP address nor a DNS name"),
        ("cell.:1", "'cell.' is neither an IP address nor a DNS name"),
        ("cell\n:1", "'cell\\n' is neither an IP address nor a DNS name"),
        (
            "[fe80::1%eth0]:1",
            "'fe80::1%eth0': an IPv6 zone (%eth0) names an interface of one machine; give the address alone",
        ),
    ],
)
def test_what_is_not_an_endpoint_is_refused_with_the_field_and_a_reason(text: str, reason: str) -> None:
    assert Endpoint.parse(text, "--parent") == FieldError(("--parent",), reason)
    assert str(Endpoint.parse(text, "--parent")) == f"--parent: {reason}"


def test_with_a_default_port_the_port_is_optional_and_still_checked() -> None:
    assert Endpoint.parse("cell:1:2", "--cell-host", default_port=8443) == FieldError(
        ("--cell-host",), f"'cell:1:2' must be HOST[:PORT]; {HINT}"
    )
    assert Endpoint.parse("cell:http", "--cell-host", default_port=8443) == FieldError(
        ("--cell-host",), "'http' is not a port number: it must be a number within 1-65535"
    )


@given(endpoints)
@example(Endpoint("::1", 1))
@example(Endpoint("::1", 65535))
@example(Endpoint("::ffff:10.0.0.1", 8443))
@example(Endpoint("10.0.0.1", 8443))
@example(Endpoint("cell.example.com", 50051))
def test_what_is_written_reads_back_as_itself(endpoint: Endpoint) -> None:
    assert Endpoint.parse(str(endpoint), "f") == endpoint
    assert Endpoint.parse(endpoint.authority, "f", default_port=1) == endpoint


@given(hosts, ports)
def test_a_bare_host_takes_the_default_port(host: str, port: int) -> None:
    assert Endpoint.parse(host, "f", default_port=port) == Endpoint(host, port)


@given(ipv6_hosts, ports)
def test_an_ipv6_host_is_never_written_without_brackets(host: str, port: int) -> None:
    text = str(Endpoint(host, port))
    assert text == f"[{host}]:{port}"
    assert Endpoint(host, port).url("https", "/x") == f"https://{text}/x"
    assert ipaddress.ip_address(text[1 : text.index("]")]) == ipaddress.ip_address(host)


@given(st.text(max_size=40))
@example("[")
@example("[]")
@example("[::1]:")
@example(":")
def test_any_text_is_an_endpoint_or_a_reason_and_never_an_exception(text: str) -> None:
    parsed = Endpoint.parse(text, "f")
    if isinstance(parsed, Endpoint):
        assert Endpoint.parse(str(parsed), "f") == parsed
    else:
        assert parsed.path == ("f",)
        assert parsed.reason


# --- the host rule, ports and the splitter ----------------------------------------------------


@pytest.mark.parametrize(
    ("host", "error"),
    [
        ("cell.example.com", None),
        ("localhost", None),
        ("10.0.0.1", None),
        ("::1", None),
        ("fd00::1", None),
        ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 61, None),
        ("a" * 63 + "." + "b" * 63 + "." + "c" * 63 + "." + "d" * 62, "is neither"),
        ("", "is neither"),
        ("[::1]", "is neither"),
        ("fe80::1%eth0", "an IPv6 zone (%eth0)"),
    ],
)
def test_host_error(host: str, error: str | None) -> None:
    found = host_error(host)
    if error is None:
        assert found is None
    else:
        assert found is not None
        assert error in found


def test_is_ip_and_is_dns_name() -> None:
    assert is_ip("10.0.0.1")
    assert is_ip("::1")
    assert not is_ip("cell.example.com")
    assert is_dns_name("cell.example.com")
    assert is_dns_name("10.0.0.1")  # digits are a valid label
    assert not is_dns_name("")
    assert not is_dns_name("::1")
    assert not is_dns_name("cell\n")


@pytest.mark.parametrize(
    ("text", "port"),
    [("1", 1), ("65535", 65535), ("080", 80), ("0", None), ("65536", None), ("", None), ("x", None)],
)
def test_parse_port(text: str, port: int | None) -> None:
    assert parse_port(text) == port


def test_parse_port_zero_when_allowed() -> None:
    assert parse_port("0", allow_zero=True) == 0
    assert parse_port("65536", allow_zero=True) is None


@pytest.mark.parametrize(
    ("text", "split"),
    [
        ("host", ("host", [])),
        ("host:1", ("host", ["1"])),
        ("host:1:2", ("host", ["1", "2"])),
        ("::1", ("::1", [])),
        ("[::1]", ("::1", [])),
        ("[::1]:1", ("::1", ["1"])),
        ("[::1]:1:2", ("::1", ["1", "2"])),
        ("[::1]:", ("::1", [""])),
        ("[::1", None),
        ("[::1]x", None),
        ("[host]:1", None),
        ("", ("", [])),
    ],
)
def test_split_host_ports(text: str, split: tuple[str, list[str]] | None) -> None:
    assert split_host_ports(text) == split


def test_parse_host_ports_fills_in_defaults_after_the_required_ports() -> None:
    form = "HOST:A[:B[:C]]"
    assert parse_host_ports("h:1", "f", form, required=1, defaults=(2, 3)) == ("h", (1, 2, 3))
    assert parse_host_ports("[::1]:1:5", "f", form, required=1, defaults=(2, 3)) == ("::1", (1, 5, 3))
    assert parse_host_ports("h:1:5:6", "f", form, required=1, defaults=(2, 3)) == ("h", (1, 5, 6))
    assert parse_host_ports("h", "f", form, required=1, defaults=(2, 3)) == FieldError(
        ("f",), "'h' must be HOST:A[:B[:C]]"
    )


# --- the cell's endpoint: registration (bootstrap) port and agent stream (gRPC) port -----------


def test_the_cells_endpoint_is_written_host_bootstrap_grpc() -> None:
    cell = capi.ParentEndpoint("::1", 8443, 50051)
    assert str(cell) == "[::1]:8443:50051"
    assert cell.bootstrap == Endpoint("::1", 8443)
    assert cell.grpc == Endpoint("::1", 50051)
    assert str(capi.ParentEndpoint("10.0.0.1")) == "10.0.0.1:8443:50051"
    assert str(capi.ParentEndpoint("cell.example.com", 1, 2)) == "cell.example.com:1:2"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("cell.example.com", capi.ParentEndpoint("cell.example.com", 8443, 50051)),
        ("cell.example.com:9443", capi.ParentEndpoint("cell.example.com", 9443, 50051)),
        ("cell.example.com:9443:9051", capi.ParentEndpoint("cell.example.com", 9443, 9051)),
        ("10.0.0.1", capi.ParentEndpoint("10.0.0.1")),
        ("::1", capi.ParentEndpoint("::1")),
        ("[::1]", capi.ParentEndpoint("::1")),
        ("[::1]:9443", capi.ParentEndpoint("::1", 9443)),
        ("[::1]:9443:9051", capi.ParentEndpoint("::1", 9443, 9051)),
    ],
)
def test_parse_the_cells_endpoint(text: str, expected: capi.ParentEndpoint) -> None:
    assert capi.ParentEndpoint.parse(text, "--parent-endpoint") == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "'' must be HOST[:BOOTSTRAP_PORT[:GRPC_PORT]]"),
        (":1:2", "':1:2' must be HOST[:BOOTSTRAP_PORT[:GRPC_PORT]]"),
        ("h:1:2:3", f"'h:1:2:3' must be HOST[:BOOTSTRAP_PORT[:GRPC_PORT]]; {HINT}"),
        ("::1:8443:50051", f"'::1:8443:50051' must be HOST[:BOOTSTRAP_PORT[:GRPC_PORT]]; {HINT}"),
        ("h:x", "'x' is not a port number: it must be a number within 1-65535"),
        ("h:1:0", "'0' is not a port number: it must be a number within 1-65535"),
        ("bad host", "'bad host' is neither an IP address nor a DNS name"),
    ],
)
def test_what_is_not_a_cells_endpoint_is_refused(text: str, reason: str) -> None:
    assert capi.ParentEndpoint.parse(text, "--parent-endpoint") == FieldError(("--parent-endpoint",), reason)


@given(parents)
@example(capi.ParentEndpoint("::1"))
def test_the_cells_endpoint_reads_back_as_itself(parent: capi.ParentEndpoint) -> None:
    assert capi.ParentEndpoint.parse(str(parent), "f") == parent


# --- ::1 at every place that writes the cell's endpoint ------------------------------------------


def test_registration_url_of_an_ipv6_cell() -> None:
    assert capi.ParentEndpoint("::1").register_url == "https://[::1]:8443/api/clusters/register"
    assert capi.ParentEndpoint("::1", 9443).bootstrap.url("https", capi.REGISTER_PATH) == (
        "https://[::1]:9443/api/clusters/register"
    )
    assert capi.ParentEndpoint("10.0.0.1").register_url == "https://10.0.0.1:8443/api/clusters/register"


def test_the_kubeadm_script_of_a_child_of_an_ipv6_cell_registers_at_a_bracketed_url() -> None:
    examples = Path(__file__).parents[3] / "examples" / "clusters" / "workload-aws.yaml"
    [document] = yamlio.load_documents(examples.read_text())  # type: ignore[misc]
    cluster = serde.cluster_from_dict(yamlio.to_plain(document.data))
    assert isinstance(cluster, models.LatticeCluster)
    valid = validation.validate_cluster(cluster)
    assert isinstance(valid, validation.ValidCluster)
    objects = capi.compile_cluster(valid, capi.CompileContext(parent=capi.ParentEndpoint("::1")))
    [control_plane] = [o for o in objects if o["kind"] == "KubeadmControlPlane"]
    [script] = control_plane["spec"]["kubeadmConfigSpec"]["postKubeadmCommands"]
    assert "url='https://[::1]:8443/api/clusters/register'" in script.splitlines()


def test_the_agent_of_a_child_of_an_ipv6_cell_dials_a_bracketed_parent(tmp_path: Path) -> None:
    cell = CellSettings(host="::1", bootstrap_port=8443, grpc_port=50051, state_dir=tmp_path)
    grpc_endpoint = str(cell.endpoint.grpc)  # what the cell's registration webhook hands out
    assert grpc_endpoint == "[::1]:50051"
    params = agent_payload.AgentPayloadParams(
        cluster_name="w1",
        grpc_endpoint=grpc_endpoint,
        image="lattice:test",
        certificate_pem="",
        ca_bundle_pem="",
    )
    args = agent_payload.agent_args(params)
    parent = args[args.index("--parent") + 1]
    assert parent == "[::1]:50051"
    assert cmd_agent.parse_endpoint(parent) == Endpoint("::1", 50051)


def test_the_agent_refuses_a_bare_ipv6_parent_naming_the_flag() -> None:
    with pytest.raises(ValueError, match=r"^--parent: '::1:50051' must be HOST:PORT; write IPv6"):
        cmd_agent.parse_endpoint("::1:50051")


def test_the_operator_of_a_child_of_an_ipv6_cell_gets_a_bracketed_parent_endpoint(tmp_path: Path) -> None:
    cell = CellSettings(host="::1", bootstrap_port=8443, grpc_port=50051, state_dir=tmp_path)
    options = install_plan.child_operator("c", {"cellRef": "mgmt"}, cell.endpoint, "img:1").options
    args = operator_argv(options)[1:]
    assert args == ["--parent-endpoint", "[::1]:8443:50051"]
    assert install_plan.parent_endpoint({}, cell.endpoint) is None
    parsed = cli.build_parser().parse_args(["operator", *args, "--cell-endpoint", "[fd00::1]:9443"])
    assert parsed.parent_endpoint == cell.endpoint
    assert parsed.cell_endpoint == capi.ParentEndpoint("fd00::1", 9443)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--parent-endpoint", "::1:8443:50051"],
            "'::1:8443:50051' must be HOST[:BOOTSTRAP_PORT[:GRPC_PORT]]",
        ),
        (["--cell-endpoint", "h:x"], "'x' is not a port number"),
        (["--cell-host", "[::1]"], "'[::1]' is neither an IP address nor a DNS name"),
        (["--cell-host", "bad host"], "'bad host' is neither an IP address nor a DNS name"),
    ],
)
def test_the_operator_refuses_a_malformed_endpoint_naming_the_flag(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.build_parser().parse_args(["operator", *argv])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}: {message}" in err


def test_the_operator_takes_an_ipv6_cell_host() -> None:
    assert cli.build_parser().parse_args(["operator", "--cell-host", "::1"]).cell_host == "::1"


def test_local_lb_health_address_in_ipv6() -> None:
    parsed = cli.build_parser().parse_args(["local-lb", "--kubeconfig", "k", "--health-addr", "[::1]:0"])
    assert parsed.health_addr == Endpoint("::1", 0)
    default = cli.build_parser().parse_args(["local-lb", "--kubeconfig", "k"])
    assert default.health_addr == Endpoint("127.0.0.1", 0)


def test_capi_managers_listen_on_a_bracketed_ipv6_address() -> None:
    argv = capi_managers.manager_argv(
        "/bin/m", kubeconfig="/k", cert_dir="/c", host="::1", ports=capi_managers.Ports(1, 2, 3)
    )
    assert "--health-addr=[::1]:2" in argv
    assert "--diagnostics-address=[::1]:3" in argv


def test_gateway_endpoint_of_an_ipv6_gateway() -> None:
    assert gateway_endpoint("::1", 443) == "[::1]:443"
    assert parse_gateway_endpoint("[::1]:443") == ("::1", 443)
    assert parse_gateway_endpoint("[::1]") == ("::1", 443)
    assert parse_gateway_endpoint("::1") == ("::1", 443)
