"""What ``lattice compile`` produces is accepted by the real apiserver and the real CAPI CRDs.

The compiler runs as a user runs it (the CLI in a subprocess), over every example at once
(children find their cell among the inputs). Each cluster's Namespace is created for real,
then the whole stream goes through ``kubectl apply --server-side --dry-run=server``: schema,
CEL rules and defaulting of the pinned Cluster API CRDs all apply.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from lattice.adapters.controlplane import ControlPlane

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples" / "clusters").glob("*.yaml"))


def _lattice(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "lattice.app.cli", *args],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, f"lattice {' '.join(args)}:\n{result.stderr}"
    return result.stdout


def _documents(text: str) -> list[dict[str, Any]]:
    return [doc for doc in YAML(typ="safe", pure=True).load_all(text) if doc]


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 2, "examples/clusters/ should hold the example clusters"


def test_compiled_examples_pass_server_side_dry_run(cell_control_plane: ControlPlane) -> None:
    stream = _lattice("compile", *map(str, EXAMPLES))
    docs = _documents(stream)
    namespaces = [d for d in docs if d["kind"] == "Namespace"]
    assert namespaces, "every compiled cluster starts with its Namespace"
    assert all(ns["metadata"]["name"].startswith("capi-") for ns in namespaces)
    cell_control_plane.apply(namespaces)
    result = cell_control_plane.apply(stream, dry_run=True, check=False)
    assert result.returncode == 0, result.stderr
    assert len(result.objects) == len(docs)
    # Every CAPI object sits in its cluster's capi-<name> namespace.
    for doc in docs:
        if doc["kind"] != "Namespace":
            assert doc["metadata"]["namespace"].startswith("capi-"), doc["metadata"]


@pytest.mark.parametrize("example", [p.name for p in EXAMPLES])
def test_each_example_is_a_valid_latticecluster(cell_control_plane: ControlPlane, example: str) -> None:
    result = cell_control_plane.apply(
        (REPO / "examples" / "clusters" / example).read_text(), dry_run=True, check=False
    )
    assert result.returncode == 0, result.stderr
    assert [o["kind"] for o in result.objects] == ["LatticeCluster"]


def test_the_generated_crds_are_accepted(cell_control_plane: ControlPlane) -> None:
    crds = _documents(_lattice("crds"))
    assert crds
    result = cell_control_plane.apply(_lattice("crds"), dry_run=True)
    assert len(result.objects) == len(crds)
    for crd in crds:
        status = cell_control_plane.kubectl(
            "get",
            "crd",
            crd["metadata"]["name"],
            "-o",
            "jsonpath={.status.conditions[?(@.type=='Established')].status}",
        )
        assert status.stdout == "True"
