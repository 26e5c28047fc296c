"""The CLI imports only the chosen command's module: ``lattice --help`` and ``lattice compile``
never load the Kubernetes client, the HTTP stack, gRPC or the operator."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from lattice.app import cli

HEAVY = ("kr8s", "httpx", "httpcore", "grpclib", "lattice.app.operator", "lattice.adapters.kube_kr8s")

PROBE = """
import contextlib, io, sys
from lattice.app import cli
out = io.StringIO()
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
    try:
        rc = cli.main(sys.argv[1:])
    except SystemExit as exc:
        rc = exc.code
heavy = sorted({m.split('.')[0] if not m.startswith('lattice') else m for m in sys.modules
                if m.split('.')[0] in ('kr8s', 'httpx', 'httpcore', 'grpclib')
                or m.startswith(('lattice.app.operator', 'lattice.adapters.kube_kr8s'))})
print(rc, ' '.join(heavy) or '-')
print(len(out.getvalue()))
"""


def imported_by(*argv: str) -> tuple[int, set[str], int]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, check=True, timeout=120
    )
    first, second = done.stdout.splitlines()[-2:]
    rc, names = first.split(" ", 1)
    return int(rc), set() if names == "-" else set(names.split()), int(second)


def test_help_imports_no_client_library() -> None:
    rc, heavy, printed = imported_by("--help")
    assert rc == 0
    assert printed > 0
    assert heavy == set()


def test_compile_of_one_file_imports_no_client_library(tmp_path: Path) -> None:
    source = tmp_path / "c.yaml"
    source.write_text(
        "apiVersion: lattice.dev/v1alpha1\nkind: LatticeCluster\nmetadata: {name: w}\n"
        "spec:\n  cellRef: mgmt\n  provider: {type: docker, kubernetes: {version: '1.35.0'}}\n"
        "  nodes: {controlPlane: 1, workers: 1}\n"
    )
    rc, heavy, printed = imported_by("compile", "--cell-host", "10.0.0.1", str(source))
    assert rc == 0
    assert printed > 1000  # the compiled manifests
    assert heavy == set()


def test_the_operator_command_loads_its_module() -> None:
    rc, heavy, _ = imported_by("operator", "--help")
    assert rc == 0
    assert "lattice.adapters.kube_kr8s" in heavy


def registered(parser: argparse.ArgumentParser) -> dict[str, str]:
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {choice.dest: str(choice.help) for choice in action._choices_actions}


def test_each_listed_command_is_registered_by_its_module_with_its_help() -> None:
    for command, (module, help_text) in cli.COMMANDS.items():
        assert module in cli.COMMAND_MODULES, command
        assert registered(cli.build_parser([module])).get(command) == help_text, command


def test_the_overview_lists_every_command_of_every_module() -> None:
    assert registered(cli.overview_parser()) == registered(cli.build_parser())


def test_an_unknown_command_is_refused_with_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        cli.main(["no-such-command"])
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice: 'no-such-command'" in err
    assert "'compile'" in err


def test_a_module_missing_from_the_table_still_serves_its_commands(
    capsys: pytest.CaptureFixture[str],
) -> None:
    table = dict(cli.COMMANDS)
    try:
        del cli.COMMANDS["crds"]
        del cli.COMMANDS["compile"]
        assert cli.main(["crds"]) == 0
    finally:
        cli.COMMANDS.clear()
        cli.COMMANDS.update(table)
    assert "CustomResourceDefinition" in capsys.readouterr().out
