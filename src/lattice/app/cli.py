"""The ``lattice`` command line: a thin dispatcher over one module per subcommand.

Each command module exposes ``register(subparsers) -> None``; it adds its parser and sets
``func`` to a callable ``(argparse.Namespace) -> int``. ``main`` never lets an exception
escape as a traceback for user errors: commands return exit codes.
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
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="lattice",
        description="Self-managing Kubernetes clusters: compile, operate, pivot.",
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    subparsers.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    result: int = args.func(args)
    return result


if __name__ == "__main__":  # pragma: no cover - exercised through the console script
    raise SystemExit(main())
