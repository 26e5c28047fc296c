"""Pytest fixtures over real Kubernetes control planes (a pytest plugin).

Load it with ``pytest_plugins = ("lattice.testing.fixtures",)`` in a top-level conftest or
``pytest -p lattice.testing.fixtures``. Fixtures:

``toolchain``            the binaries and CRDs built by scripts/build-k8s.sh (an error,
                         never a skip, when they are missing)
``capi_control_plane``   one session-wide control plane with kube-controller-manager and
                         the Cluster API CRDs labelled as ``clusterctl init`` labels them
``cell_control_plane``   the same control plane with the Lattice CRDs installed as well
``control_plane_factory`` starts fresh control planes for one test and stops them after it

When a test fails, the log tails of every running control plane are added to its report.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator, Sequence
from pathlib import Path

import pytest

from lattice.adapters.binaries import Toolchain, locate
from lattice.adapters.capi_managers import live_managers
from lattice.adapters.controlplane import (
    ControlPlane,
    live_control_planes,
    start_control_planes,
)

__all__ = [
    "ControlPlaneFactory",
    "capi_control_plane",
    "cell_control_plane",
    "control_plane_factory",
    "pytest_runtest_makereport",
    "toolchain",
]


@pytest.fixture(scope="session")
def toolchain() -> Toolchain:
    """The real binaries and CRDs; raises (naming the build script) when they are missing."""
    return locate()


@pytest.fixture(scope="session")
def capi_control_plane(
    toolchain: Toolchain, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ControlPlane]:
    """A session-wide control plane (with controller-manager) holding the CAPI CRDs."""
    cp = ControlPlane.create(
        "cell",
        base_dir=tmp_path_factory.mktemp("cell"),
        toolchain=toolchain,
        controller_manager=True,
    )
    cp.start()
    try:
        cp.install_capi_crds()
        yield cp
    finally:
        cp.stop()


@pytest.fixture(scope="session")
def cell_control_plane(capi_control_plane: ControlPlane) -> ControlPlane:
    """The session control plane with the Lattice CRDs (from ``lattice crds``) installed too."""
    capi_control_plane.install_lattice_crds()
    return capi_control_plane


class ControlPlaneFactory:
    """Starts control planes for one test; :meth:`stop_all` stops every one it started."""

    def __init__(self, toolchain: Toolchain, base_dir: Path) -> None:
        self.toolchain = toolchain
        self.base_dir = base_dir
        self.started: list[ControlPlane] = []

    def __call__(
        self,
        count: int = 1,
        *,
        controller_manager: bool = False,
        names: Sequence[str] | None = None,
    ) -> list[ControlPlane]:
        """Start ``count`` control planes at once and wait until all are ready."""
        if names is None:
            names = [f"cp{len(self.started) + i}" for i in range(count)]
        cps = start_control_planes(
            count,
            base_dir=self.base_dir,
            toolchain=self.toolchain,
            controller_manager=controller_manager,
            names=names,
        )
        self.started.extend(cps)
        return cps

    def one(self, *, controller_manager: bool = False) -> ControlPlane:
        return self(1, controller_manager=controller_manager)[0]

    def stop_all(self) -> None:
        for cp in self.started:
            cp.stop()


@pytest.fixture
def control_plane_factory(toolchain: Toolchain, tmp_path: Path) -> Iterator[ControlPlaneFactory]:
    """Start fresh control planes in this test (under its tmp_path); all stop after it."""
    factory = ControlPlaneFactory(toolchain, tmp_path / "control-planes")
    try:
        yield factory
    finally:
        factory.stop_all()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """Add the log tails of the control planes and Cluster API managers still running to the
    report of a failed test."""
    report = yield
    if report.failed:
        for cp in live_control_planes():
            report.sections.append((f"control plane {cp.name} logs", cp.log_tails(60)))
        for managers in live_managers():
            report.sections.append((f"Cluster API managers in {managers.dir}", managers.log_tails(60)))
    return report
