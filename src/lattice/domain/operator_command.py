"""The command line that starts ``lattice operator``: one builder for every place that starts
one (the installer's bootstrap operator, the operator Deployment's container, the tests' cells),
from a typed value instead of hand-written flag lists.

The flags are those of :mod:`lattice.app.cmd_operator`; a field left at its default adds no
flag, so the operator's own default applies. Every flag a caller sets is a field: there is no
list of untyped extra flags (a child's cell flags are built by
:func:`lattice.domain.install_plan.child_operator` as fields too).
"""

from __future__ import annotations

from attrs import frozen

from lattice.domain.capi import ParentEndpoint

CLI_MODULE = "lattice.app.cli"


@frozen
class OperatorOptions:
    kubeconfig: str | None = None
    cluster_name: str | None = None
    cell_endpoint: str | None = None
    parent_endpoint: ParentEndpoint | None = None
    """The cell a child's own operator compiles its control plane for."""
    identity: str | None = None
    leader_elect: bool = True
    lease_namespace: str | None = None
    health_host: str | None = None
    health_port: int | None = None
    cell_host: str | None = None
    bootstrap_port: int | None = None
    grpc_port: int | None = None
    proxy_port: int | None = None
    """``None``: the operator's default; 0: the API proxy off."""
    bind_host: str | None = None
    """Where a cell's servers bind (``$(POD_IP)`` in a Deployment: the kubelet expands it)."""
    state_dir: str | None = None
    machines_dir: str | None = None
    local_infra: bool = False
    capi_managers: bool = False
    operator_via: str | None = None


def operator_argv(options: OperatorOptions) -> list[str]:
    """``operator`` and its flags, in a fixed order."""
    valued: tuple[tuple[str, object], ...] = (
        ("--kubeconfig", options.kubeconfig),
        ("--health-host", options.health_host),
        ("--cluster-name", options.cluster_name),
        ("--cell-endpoint", options.cell_endpoint),
        ("--parent-endpoint", options.parent_endpoint),
        ("--identity", options.identity),
        ("--lease-namespace", options.lease_namespace),
        ("--health-port", options.health_port),
        ("--cell-host", options.cell_host),
        ("--bootstrap-port", options.bootstrap_port),
        ("--grpc-port", options.grpc_port),
        ("--proxy-port", options.proxy_port),
        ("--bind-host", options.bind_host),
        ("--state-dir", options.state_dir),
        ("--machines-dir", options.machines_dir),
        ("--operator-via", options.operator_via),
    )
    argv = ["operator"]
    for flag, value in valued:
        if value is not None:
            argv += [flag, str(value)]
    if not options.leader_elect:
        argv.append("--no-leader-elect")
    if options.local_infra:
        argv.append("--local-infra")
    if options.capi_managers:
        argv.append("--capi-managers")
    return argv


def operator_command(python: str, options: OperatorOptions) -> list[str]:
    """The argv of a ``lattice operator`` process run from this Python's installation."""
    return [python, "-m", CLI_MODULE, *operator_argv(options)]
