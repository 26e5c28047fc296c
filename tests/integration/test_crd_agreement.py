"""The CRD schemas and the operator's validation agree, checked against a real apiserver.

Documents from the fuzz suite's strategies (valid to thoroughly wrong, drawn from the CRD
schemas themselves) are sent to a real kube-apiserver with the Lattice CRDs installed, as a
server-side dry-run create with strict field validation (``kubectl create --dry-run=server
--validate=strict``), and given to the operator's own parsing and validation.

* Anything the operator accepts, the apiserver admits: the schema never refuses a valid spec.
* Anything the apiserver admits that the operator refuses is allowed (the operator checks what
  a schema cannot say, such as cross-field rules); such an object ends in phase Failed with a
  message (``tests/fuzz/test_validation.py::test_plan_cluster``). How many there were is
  reported as a hypothesis event and in the fuzz summary.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import assume, event, given

from lattice.adapters.binaries import Toolchain
from lattice.adapters.controlplane import ControlPlane
from lattice.domain import lattice_service, serde, validation
from lattice.testing.fixtures import ControlPlaneFactory
from tests.fuzz.plugin import fuzz
from tests.fuzz.strategies import cluster_documents, service_documents

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]
API_VERSION = "lattice.dev/v1alpha1"


@pytest.fixture(scope="module")
def control_plane(toolchain: Toolchain, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    factory = ControlPlaneFactory(toolchain, tmp_path_factory.mktemp("crd-agreement"))
    try:
        cp = factory.one()
        cp.install_lattice_crds()
        yield cp
    finally:
        factory.stop_all()


def _sendable(doc: Any, kind: str) -> bool:
    if (
        not isinstance(doc, dict)
        or doc.get("kind") != kind
        or doc.get("apiVersion") != "lattice.dev/v1alpha1"
    ):
        return False
    if not isinstance(doc.get("metadata"), dict) or not isinstance(doc["metadata"].get("name"), str):
        return False
    try:
        json.dumps(doc, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _admitted(cp: ControlPlane, doc: dict[str, Any]) -> tuple[bool, str]:
    """A server-side dry-run create with strict field validation (what ``kubectl create
    --validate=strict`` sends): admitted, or the apiserver's reason."""
    done = subprocess.run(
        [
            str(cp.toolchain.bin_dir / "kubectl"),
            "--kubeconfig",
            str(cp.kubeconfig),
            "create",
            "--dry-run=server",
            "--validate=strict",
            "-o",
            "name",
            "-f",
            "-",
        ],
        input=json.dumps(doc),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return done.returncode == 0, done.stderr.strip()


@given(doc=cluster_documents())
@fuzz("crd_agreement.cluster", examples=80)
def test_the_schema_admits_every_cluster_the_operator_accepts(control_plane: ControlPlane, doc: Any) -> None:
    assume(_sendable(doc, "LatticeCluster"))
    parsed = serde.cluster_from_dict(doc)
    accepted = not isinstance(parsed, list) and not isinstance(validation.validate_cluster(parsed), list)
    admitted, why = _admitted(control_plane, doc)
    event(f"operator {'accepts' if accepted else 'refuses'}, apiserver {'admits' if admitted else 'refuses'}")
    if accepted:
        assert admitted, f"the operator accepts what the CRD schema refuses: {why}\n{json.dumps(doc)}"


@given(doc=service_documents())
@fuzz("crd_agreement.service", examples=80)
def test_the_schema_admits_every_service_the_operator_accepts(control_plane: ControlPlane, doc: Any) -> None:
    assume(_sendable(doc, "LatticeService"))
    doc["metadata"]["namespace"] = "default"
    parsed = lattice_service.service_from_dict(doc)
    accepted = not isinstance(parsed, list) and not isinstance(lattice_service.validate_service(parsed), list)
    admitted, why = _admitted(control_plane, doc)
    event(f"operator {'accepts' if accepted else 'refuses'}, apiserver {'admits' if admitted else 'refuses'}")
    if accepted:
        assert admitted, f"the operator accepts what the CRD schema refuses: {why}\n{json.dumps(doc)}"
