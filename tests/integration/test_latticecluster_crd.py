"""The LatticeCluster CRD as the real apiserver and kubectl see it."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from lattice.adapters.controlplane import ControlPlane

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "clusters" / "workload-aws.yaml"


def _example(name: str) -> dict[str, Any]:
    doc: dict[str, Any] = YAML(typ="safe", pure=True).load(EXAMPLE.read_text())
    doc = copy.deepcopy(doc)
    doc["metadata"]["name"] = name
    return doc


def test_provider_type_is_immutable(cell_control_plane: ControlPlane) -> None:
    cluster = _example("immutable-provider")
    cell_control_plane.apply([cluster])
    changed = copy.deepcopy(cluster)
    changed["spec"]["provider"]["type"] = "gcp"
    result = cell_control_plane.apply([changed], check=False)
    assert result.returncode != 0
    assert "provider type is immutable" in result.stderr
    patch = cell_control_plane.kubectl(
        "patch",
        "lc",
        "immutable-provider",
        "--type=merge",
        "-p",
        json.dumps({"spec": {"provider": {"type": "azure"}}}),
        check=False,
    )
    assert patch.returncode != 0
    assert "provider type is immutable" in patch.stderr
    stored = json.loads(cell_control_plane.kubectl("get", "lc", "immutable-provider", "-o", "json").stdout)
    assert stored["spec"]["provider"]["type"] == cluster["spec"]["provider"]["type"]


def test_version_changes_are_checked_by_the_apiserver(cell_control_plane: ControlPlane) -> None:
    """The CEL rules (Kubernetes' semver library): the supported range on create, and no
    downgrade or minor skip on update, each naming the field."""
    cp = cell_control_plane
    outside = _example("version-range")
    outside["spec"]["provider"]["kubernetes"]["version"] = "1.29.0"
    created = cp.apply([outside], check=False)
    assert created.returncode != 0
    assert "spec.provider.kubernetes.version" in created.stderr
    assert "1.29.0 is outside the supported range 1.31 to 1.36" in created.stderr

    cluster = _example("version-moves")
    cluster["spec"]["provider"]["kubernetes"]["version"] = "1.34.2"
    cp.apply([cluster])

    def patch(version: str) -> Any:
        body = {"spec": {"provider": {"kubernetes": {"version": version}}}}
        return cp.kubectl("patch", "lc", "version-moves", "--type=merge", "-p", json.dumps(body), check=False)

    down = patch("v1.34.1")
    assert down.returncode != 0
    assert "downgrading from 1.34.2 to v1.34.1 is not supported" in down.stderr
    skip = patch("1.36.0")
    assert skip.returncode != 0
    assert "skips a minor version" in skip.stderr
    assert patch("1.35.0").returncode == 0
    assert patch("1.35.1").returncode == 0
    stored = json.loads(cp.kubectl("get", "lc", "version-moves", "-o", "json").stdout)
    assert stored["spec"]["provider"]["kubernetes"]["version"] == "1.35.1"


def test_get_shows_printer_columns(cell_control_plane: ControlPlane) -> None:
    cell_control_plane.apply([_example("printed")])
    out = cell_control_plane.kubectl("get", "lc", "printed").stdout
    header, row = out.splitlines()[:2]
    for column in ("NAME", "PHASE", "PROVIDER", "VERSION"):
        assert column in header.split(), header
    assert "printed" in row
    assert "aws" in row.split()
    version = _example("x")["spec"]["provider"]["kubernetes"]["version"]
    assert version in row.split()


def test_explain_shows_descriptions(cell_control_plane: ControlPlane) -> None:
    out = cell_control_plane.kubectl("explain", "latticecluster.spec").stdout
    assert "KIND:       LatticeCluster" in out
    assert "DESCRIPTION:" in out
    description = out.split("DESCRIPTION:", 1)[1].split("FIELDS:", 1)[0].strip()
    assert description, out
    assert "<empty>" not in description
    provider = cell_control_plane.kubectl("explain", "latticecluster.spec.provider.type").stdout
    assert "DESCRIPTION:" in provider
    assert provider.split("DESCRIPTION:", 1)[1].strip()
