"""The ``lattice`` command line: a thin dispatcher over one module per subcommand.

Each command module exposes ``register(subparsers) -> None``; it adds its parser and sets
``func`` to a callable ``(argparse.Namespace) -> int``. ``main`` never lets an exception
escape as a traceback for user errors: commands return exit codes.

Only the chosen command's module is imported: kr8s, httpx, grpclib and the operator take about a
second to import, which ``lattice compile`` and ``lattice --help`` do not need (``COMMANDS``).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# One line per command module; each module owns its flags and its help text.
COMMAND_MODULES: tuple[str, ...] = (
    "lattice.app.cmd_compile",
    "lattice.app.cmd_agent",
    "lattice.app.cmd_fips_check",
    "lattice.app.cmd_operator",
    "lattice.app.cmd_install",
    "lattice.app.cmd_local_kubelet",
    "lattice.app.cmd_local_lb",
    "lattice.app.cmd_kubeconfig",
    "lattice.app.cmd_revoke",
)


# Each command: the module (in COMMAND_MODULES) that registers it, and its one-line help for
# ``lattice --help``. A command missing here still works (every module is imported for it, as
# for an unknown command), only slower; tests/unit/app/test_cli_lazy.py checks each entry
# against what its module registers.
COMMANDS: dict[str, tuple[str, str]] = {
    "compile": ("lattice.app.cmd_compile", "compile LatticeCluster YAML into Cluster API manifests"),
    "crds": ("lattice.app.cmd_compile", "print the Lattice CustomResourceDefinitions"),
    "agent": ("lattice.app.cmd_agent", "run the agent: an outbound gRPC stream to the parent cell"),
    "fips-check": (
        "lattice.app.cmd_fips_check",
        "report the OpenSSL in use and whether a FIPS provider is active",
    ),
    "operator": ("lattice.app.cmd_operator", "run the LatticeCluster operator"),
    "deploy-manifests": (
        "lattice.app.cmd_operator",
        "print the namespace, RBAC and Deployment that install the operator",
    ),
    "revoke-agent": (
        "lattice.app.cmd_revoke",
        "refuse the agent certificates a cluster holds (its cell closes their streams)",
    ),
    "install": ("lattice.app.cmd_install", "create a self-managing management cell"),
    "kubeconfig": (
        "lattice.app.cmd_kubeconfig",
        "print a kubeconfig for a cluster through its cell's API proxy",
    ),
    "demo": ("lattice.app.cmd_install", "a local management cell and two workload clusters"),
    "down": ("lattice.app.cmd_install", "stop everything lattice install/demo started"),
    "local-kubelet": ("lattice.app.cmd_local_kubelet", "(internal) the kubelet stand-in of a local machine"),
    "local-lb": ("lattice.app.cmd_local_lb", "(internal) the load-balancer stand-in of a local cluster"),
}


def _parser() -> tuple[argparse.ArgumentParser, argparse._SubParsersAction[argparse.ArgumentParser]]:
    parser = argparse.ArgumentParser(
        prog="lattice",
        description="Self-managing Kubernetes clusters: compile, operate, pivot.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    return parser, subparsers


def build_parser(modules: Sequence[str] = COMMAND_MODULES) -> argparse.ArgumentParser:
    """The parser of the commands ``modules`` register (all of them by default)."""
    parser, subparsers = _parser()
    for name in modules:
        importlib.import_module(name).register(subparsers)
    return parser


def overview_parser() -> argparse.ArgumentParser:
    """For ``lattice --help``, no command or an unknown one: every command listed in COMMANDS
    by its help alone (nothing imported), plus the commands of modules COMMANDS does not name."""
    parser, subparsers = _parser()
    for command, (_, help_text) in COMMANDS.items():
        subparsers.add_parser(command, help=help_text, add_help=False)
    listed = {module for module, _ in COMMANDS.values()}
    for name in COMMAND_MODULES:
        if name not in listed:
            importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    arguments = list(sys.argv[1:] if argv is None else argv)
    command = arguments[0] if arguments else None
    parser = build_parser([COMMANDS[command][0]]) if command in COMMANDS else overview_parser()
    args = parser.parse_args(arguments)
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover - exercised through the console script
    raise SystemExit(main())
