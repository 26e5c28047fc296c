"""The one builder of ``lattice operator``'s argv (domain/operator_command): every option becomes
the flag the operator's own parser reads back, and an unset one adds none."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from lattice.app.cli import build_parser
from lattice.domain.capi import ParentEndpoint
from lattice.domain.operator_command import OperatorOptions, operator_argv, operator_command

PARSER = build_parser(("lattice.app.cmd_operator",))

ports = st.none() | st.integers(1, 65535)
paths = st.none() | st.sampled_from(["/var/lib/lattice", "/tmp/x y", "rel/dir"])


def test_defaults_add_no_flag() -> None:
    assert operator_argv(OperatorOptions()) == ["operator"]


def test_the_command_runs_the_cli_module() -> None:
    argv = operator_command("/usr/bin/python3", OperatorOptions(local_infra=True))
    assert argv == ["/usr/bin/python3", "-m", "lattice.app.cli", "operator", "--local-infra"]


def test_a_cells_flags_are_fields_in_a_fixed_order() -> None:
    """A child's cell flags (install_plan.child_operator) come after every other valued flag,
    where the chart's cell.* values put them, and the switches last."""
    argv = operator_argv(
        OperatorOptions(
            cluster_name="mgmt",
            parent_endpoint=ParentEndpoint("fd00::1", 8443, 50051),
            cell_host="10.0.0.5",
            bootstrap_port=9443,
            grpc_port=9051,
            proxy_port=9444,
            bind_host="$(POD_IP)",
            state_dir="/var/lib/lattice",
            machines_dir="/m",
            local_infra=True,
            capi_managers=True,
        )
    )
    assert argv == [
        "operator",
        "--cluster-name",
        "mgmt",
        "--parent-endpoint",
        "[fd00::1]:8443:50051",
        "--cell-host",
        "10.0.0.5",
        "--bootstrap-port",
        "9443",
        "--grpc-port",
        "9051",
        "--proxy-port",
        "9444",
        "--bind-host",
        "$(POD_IP)",
        "--state-dir",
        "/var/lib/lattice",
        "--machines-dir",
        "/m",
        "--local-infra",
        "--capi-managers",
    ]


@given(
    kubeconfig=paths,
    state_dir=paths,
    machines_dir=paths,
    bootstrap_port=ports,
    grpc_port=ports,
    proxy_port=st.none() | st.integers(0, 65535),
    health_port=ports,
    leader_elect=st.booleans(),
    local_infra=st.booleans(),
    capi_managers=st.booleans(),
    cell_host=st.none() | st.sampled_from(["127.0.0.1", "fd00::1", "cell.example.com"]),
    cluster_name=st.none() | st.sampled_from(["mgmt", "child-1"]),
    operator_via=st.none() | st.sampled_from(["manifests", "helm"]),
    bind_host=st.none() | st.sampled_from(["0.0.0.0", "::", "$(POD_IP)", "127.0.0.1"]),
    parent_endpoint=st.none()
    | st.builds(
        ParentEndpoint,
        st.sampled_from(["10.0.0.1", "fd00::1", "cell.example.com"]),
        st.integers(1, 65535),
        st.integers(1, 65535),
    ),
)
def test_the_operator_parses_back_what_was_built(
    kubeconfig: str | None,
    state_dir: str | None,
    machines_dir: str | None,
    bootstrap_port: int | None,
    grpc_port: int | None,
    proxy_port: int | None,
    health_port: int | None,
    leader_elect: bool,
    local_infra: bool,
    capi_managers: bool,
    cell_host: str | None,
    cluster_name: str | None,
    operator_via: str | None,
    bind_host: str | None,
    parent_endpoint: ParentEndpoint | None,
) -> None:
    options = OperatorOptions(
        kubeconfig=kubeconfig,
        state_dir=state_dir,
        machines_dir=machines_dir,
        bootstrap_port=bootstrap_port,
        grpc_port=grpc_port,
        proxy_port=proxy_port,
        health_port=health_port,
        leader_elect=leader_elect,
        local_infra=local_infra,
        capi_managers=capi_managers,
        cell_host=cell_host,
        cluster_name=cluster_name,
        operator_via=operator_via,
        bind_host=bind_host,
        parent_endpoint=parent_endpoint,
        identity="op-1",
        lease_namespace="default",
        health_host="0.0.0.0",
        cell_endpoint="10.0.0.1",
    )
    args = PARSER.parse_args(operator_argv(options))
    defaults = PARSER.parse_args(["operator"])
    for field in ("kubeconfig", "state_dir", "machines_dir", "cluster_name", "cell_host", "bind_host"):
        given_value = getattr(options, field)
        parsed = getattr(args, field)
        assert (None if parsed is None else str(parsed)) == (
            str(getattr(defaults, field))
            if given_value is None and getattr(defaults, field) is not None
            else given_value
        )
    for field in ("bootstrap_port", "grpc_port", "proxy_port", "health_port"):
        given_port = getattr(options, field)
        assert getattr(args, field) == (getattr(defaults, field) if given_port is None else given_port)
    assert args.local_infra is local_infra
    assert args.capi_managers is capi_managers
    assert args.identity == "op-1"
    assert args.lease_namespace == "default"
    assert str(args.cell_endpoint).startswith("10.0.0.1")
    assert args.no_leader_elect is not leader_elect
    assert args.operator_via == (operator_via or defaults.operator_via)
    assert args.parent_endpoint == parent_endpoint
