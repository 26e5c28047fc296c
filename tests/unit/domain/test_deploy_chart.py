"""The operator's install, as manifests and as the chart's values; the chart's files agree with
the code (its appVersion, its CRDs, its values, their schema and their documentation).

Rendering the chart with helm is in tests/integration/test_helm_chart.py."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import attrs
import pytest
from ruamel.yaml import YAML

import lattice
from lattice.app import yamlio
from lattice.domain import capi, crds, deploy, install_plan
from lattice.domain.operator_command import OperatorOptions

CHART = Path(__file__).resolve().parents[3] / "charts" / "lattice"


def _yaml(path: Path) -> Any:
    return YAML(typ="safe", pure=True).load(path.read_text())


# ---------------------------------------------------------------- the domain


@pytest.mark.parametrize(
    ("image", "parts"),
    [
        ("ghcr.io/lattice-dev/lattice:0.1.0", ("ghcr.io/lattice-dev/lattice", "0.1.0", "")),
        ("img:1", ("img", "1", "")),
        ("registry.local:5000/team/lattice:v2", ("registry.local:5000/team/lattice", "v2", "")),
        ("r.io/l@sha256:" + "a" * 64, ("r.io/l", "", "sha256:" + "a" * 64)),
        ("r.io:443/l:1.0@sha256:" + "b" * 64, ("r.io:443/l", "1.0", "sha256:" + "b" * 64)),
    ],
)
def test_split_image(image: str, parts: tuple[str, str, str]) -> None:
    assert deploy.split_image(image) == parts


@pytest.mark.parametrize("image", ["lattice", "registry.local:5000/lattice", ":1", "@sha256:ab"])
def test_an_image_without_tag_or_digest_is_refused(image: str) -> None:
    with pytest.raises(ValueError, match="name a tag or a digest"):
        deploy.split_image(image)


def test_the_default_install_is_what_deploy_manifests_prints() -> None:
    assert f"ghcr.io/lattice-dev/lattice:{lattice.__version__}" == deploy.DEFAULT_IMAGE
    assert deploy.OperatorInstall().manifests() == deploy.operator_manifests(deploy.DEFAULT_IMAGE)
    assert deploy.OperatorInstall().chart_values() == {
        "image": {"repository": "ghcr.io/lattice-dev/lattice", "tag": lattice.__version__, "digest": ""},
        "clusterName": "",
        "replicas": 2,
        "extraArgs": [],
        "stateVolume": False,
    }


def test_an_install_gives_its_manifests_and_chart_values() -> None:
    options = OperatorOptions(state_dir=deploy.STATE_DIR, machines_dir="/m", local_infra=True)
    operator = deploy.OperatorInstall(
        image="r.io/l:2", cluster_name="mgmt", replicas=3, options=options, state_volume=True
    )
    assert operator.manifests() == deploy.operator_manifests(
        "r.io/l:2", cluster_name="mgmt", replicas=3, options=options, state_volume=True
    )
    assert operator.chart_values() == {
        "image": {"repository": "r.io/l", "tag": "2", "digest": ""},
        "clusterName": "mgmt",
        "replicas": 3,
        "extraArgs": ["--state-dir", deploy.STATE_DIR, "--machines-dir", "/m", "--local-infra"],
        "stateVolume": True,
    }


@pytest.mark.parametrize("taken", ["kubeconfig", "health_host", "health_port", "cluster_name"])
def test_an_install_refuses_the_flags_its_deployment_sets(taken: str) -> None:
    value = 1 if taken == "health_port" else "x"
    with pytest.raises(ValueError, match=f"OperatorInstall.options: {taken} are set by the install itself"):
        deploy.OperatorInstall(options=OperatorOptions(**{taken: value}))


def _container_args(operator: deploy.OperatorInstall) -> list[str]:
    deployment = next(m for m in operator.manifests() if m["kind"] == "Deployment")
    return list(deployment["spec"]["template"]["spec"]["containers"][0]["args"])


def test_a_child_operator_is_the_cell_its_spec_says_with_its_parent() -> None:
    parent = capi.ParentEndpoint("cell.example.com", 8443, 50051)
    spec: dict[str, Any] = {
        "cellRef": "mgmt",
        "provider": {"type": "local"},
        "parentConfig": {"host": "10.0.0.5", "bootstrapPort": 9443, "grpcPort": 9444},
    }
    operator = install_plan.child_operator("child", spec, parent, "img:1", local_machines_dir="/m")
    assert operator == deploy.OperatorInstall(
        image="img:1",
        cluster_name="child",
        replicas=1,
        options=attrs.evolve(
            install_plan.cell_operator_options(spec, deploy.STATE_DIR),
            parent_endpoint=parent,
            machines_dir="/m",
            local_infra=True,
            capi_managers=True,
        ),
        state_volume=True,
    )
    # The Deployment's args: every flag once, the cell's after the rest, the switches last.
    assert _container_args(operator) == [
        "operator",
        "--health-host",
        "0.0.0.0",
        "--cluster-name",
        "child",
        "--parent-endpoint",
        "cell.example.com:8443:50051",
        "--cell-host",
        "10.0.0.5",
        "--bootstrap-port",
        "9443",
        "--grpc-port",
        "9444",
        "--proxy-port",
        "8444",
        "--bind-host",
        "10.0.0.5",
        "--state-dir",
        deploy.STATE_DIR,
        "--machines-dir",
        "/m",
        "--local-infra",
        "--capi-managers",
    ]
    # A root (no cellRef) without parentConfig: a plain operator, no state volume.
    plain = install_plan.child_operator("leaf", {"provider": {"type": "aws"}}, parent, "img:1")
    assert plain.options == OperatorOptions()
    assert not plain.state_volume
    assert _container_args(plain) == ["operator", "--health-host", "0.0.0.0", "--cluster-name", "leaf"]


# ---------------------------------------------------------------- the chart's files


def test_chart_metadata() -> None:
    chart = _yaml(CHART / "Chart.yaml")
    assert chart["apiVersion"] == "v2"
    assert chart["name"] == deploy.CHART_RELEASE
    assert chart["version"] == "0.1.0"
    assert chart["appVersion"] == lattice.__version__


def test_chart_crds_are_exactly_what_lattice_crds_prints() -> None:
    (path,) = sorted((CHART / "crds").iterdir())
    assert path.read_text() == yamlio.dump_all(crds.all_crds()), (
        f"{path} is stale: lattice crds > {path.relative_to(CHART.parents[1])}"
    )


def _group(sub: dict[str, Any]) -> bool:
    """A group of values (image, cell, ...): an object whose properties are each described;
    other objects (resources, nodeSelector, ...) are one value each."""
    properties = sub.get("properties") or {}
    return bool(properties) and all("description" in p for p in properties.values())


def _value_paths(values: dict[str, Any], schema: dict[str, Any], prefix: str = "") -> list[str]:
    """Every documented value (dotted), from values.yaml."""
    paths = []
    for key, value in values.items():
        sub = schema["properties"][key]
        if isinstance(value, dict) and _group(sub):
            paths += _value_paths(value, sub, f"{prefix}{key}.")
        else:
            paths.append(f"{prefix}{key}")
    return paths


def _schema_keys(schema: dict[str, Any], prefix: str = "") -> set[str]:
    keys = set()
    for key, sub in schema.get("properties", {}).items():
        keys.add(f"{prefix}{key}")
        if _group(sub):
            keys |= _schema_keys(sub, f"{prefix}{key}.")
    return keys


def _commented_keys(text: str) -> set[str]:
    """The dotted paths of the keys in values.yaml right under a comment line."""
    found: set[str] = set()
    stack: list[str] = []
    previous = ""
    for line in text.splitlines():
        stripped = line.strip()
        match = re.match(r"^( *)([A-Za-z][A-Za-z0-9]*):", line)
        if match:
            depth = len(match.group(1)) // 2
            stack = [*stack[:depth], match.group(2)]
            if previous.startswith("#"):
                found.add(".".join(stack))
        if stripped:
            previous = stripped
    return found


def test_every_value_is_in_the_schema_described_commented_and_documented() -> None:
    values = _yaml(CHART / "values.yaml")
    schema = json.loads((CHART / "values.schema.json").read_text())
    assert schema["$schema"] == "http://json-schema.org/draft-07/schema#"
    assert schema["additionalProperties"] is False
    paths = _value_paths(values, schema)
    # every key of values.yaml has a schema entry and the reverse (global aside)
    assert _schema_keys(schema) - {"global"} == {
        p for path in paths for p in (".".join(path.split(".")[: i + 1]) for i in range(path.count(".") + 1))
    }

    assert _group(schema)
    for path in paths:  # every value and every group above it are described
        node = schema
        for key in path.split("."):
            node = node["properties"][key]
            assert "description" in node, f"values.schema.json: {path} has no description"
    commented = _commented_keys((CHART / "values.yaml").read_text())
    assert [p for p in paths if p not in commented] == [], "values.yaml: values without a comment"
    readme = (CHART / "README.md").read_text()
    for path in paths:
        assert f"| `{path}` |" in readme, f"charts/lattice/README.md: {path} is not documented"
