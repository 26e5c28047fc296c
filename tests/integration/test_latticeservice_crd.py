"""The LatticeService CRD as the real apiserver sees it: accepted, CEL rules enforced, printer
columns and short name work, and what the API server stores parses back with our serde."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML

from lattice.adapters.controlplane import ControlPlane
from lattice.domain import lattice_service

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "examples" / "services" / "cross-cluster.yaml"


def _examples() -> list[dict[str, Any]]:
    return [copy.deepcopy(d) for d in YAML(typ="safe", pure=True).load_all(EXAMPLE.read_text())]


@pytest.fixture
def namespace(cell_control_plane: ControlPlane) -> Iterator[Callable[[str], None]]:
    """Namespaces for this test's services, emptied afterwards: the control plane is shared by
    the session, and a LatticeService left behind is a local service to any LatticeService
    controller that runs on it later (tests/integration/discovery/test_service_controller.py)."""
    created: list[str] = []

    def make(name: str) -> None:
        cell_control_plane.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}}])
        created.append(name)

    yield make
    for name in created:  # the (empty) namespaces stay: a terminating one refuses the next test's
        cell_control_plane.kubectl("delete", "latticeservices", "--all", "-n", name, "--wait=true")


def test_examples_are_accepted_and_read_back(
    cell_control_plane: ControlPlane, namespace: Callable[[str], None]
) -> None:
    namespace("shop")
    cell_control_plane.apply(_examples())
    stored = json.loads(cell_control_plane.kubectl("get", "ls", "-n", "shop", "-o", "json").stdout)
    by_name = {item["metadata"]["name"]: item for item in stored["items"]}
    assert sorted(by_name) == ["api", "frontend"]
    api = lattice_service.service_from_dict(by_name["api"])
    assert isinstance(api, lattice_service.LatticeService), api
    valid = lattice_service.validate_service(api)
    assert isinstance(valid, lattice_service.ValidService), valid
    assert valid.allowed_callers == ("frontend",)
    assert valid.version > 0  # resourceVersion became the announcement version
    # The defaulted protocol is stored.
    assert by_name["frontend"]["spec"]["service"]["ports"]["http"]["protocol"] == "HTTP"


def test_printer_columns(cell_control_plane: ControlPlane, namespace: Callable[[str], None]) -> None:
    namespace("cols")
    doc = _examples()[0]
    doc["metadata"]["namespace"] = "cols"
    cell_control_plane.apply([doc])
    header, row = cell_control_plane.kubectl("get", "ls", "-n", "cols").stdout.splitlines()[:2]
    assert header.split()[:3] == ["NAME", "ENVIRONMENT", "PHASE"]
    assert row.split()[:2] == ["api", "prod"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        pytest.param(
            lambda spec: spec["resources"].update({"*": {"type": "service", "direction": "outbound"}}),
            "'*' means any caller and is only valid with direction inbound",
            id="wildcard-outbound",
        ),
        pytest.param(
            lambda spec: spec["service"]["ports"].update({"web": {"port": 8080}}),
            "port numbers must be unique",
            id="duplicate-port",
        ),
        pytest.param(
            lambda spec: spec["resources"].update({"api": {"type": "service", "direction": "outbound"}}),
            "a service cannot depend on itself",
            id="self-dependency",
        ),
        pytest.param(
            lambda spec: spec["resources"].update({"db": {"type": "database", "direction": "outbound"}}),
            "Unsupported value",
            id="unknown-type",
        ),
    ],
)
def test_cel_and_schema_rules(
    cell_control_plane: ControlPlane, namespace: Callable[[str], None], mutate: Any, message: str
) -> None:
    namespace("rules")
    doc = _examples()[0]
    doc["metadata"]["namespace"] = "rules"
    mutate(doc["spec"])
    result = cell_control_plane.apply([doc], check=False)
    assert result.returncode != 0
    assert message in result.stderr, result.stderr
