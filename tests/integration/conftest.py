"""Fixtures of the integration tests that run the real Cluster API managers."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS
from lattice.adapters.capi_managers import CapiManagers
from lattice.adapters.controlplane import ControlPlane
from lattice.testing.fixtures import ControlPlaneFactory


@pytest.fixture
def managed(control_plane_factory: ControlPlaneFactory) -> Iterator[tuple[ControlPlane, CapiManagers]]:
    """A fresh control plane with the CAPI and Lattice CRDs and the three real managers."""
    cp = control_plane_factory.one(controller_manager=True)
    cp.install_capi_crds(LOCAL_CAPI_PROVIDERS)
    cp.install_lattice_crds()
    managers = CapiManagers(cp).start()
    try:
        yield cp, managers
    finally:
        managers.stop()
