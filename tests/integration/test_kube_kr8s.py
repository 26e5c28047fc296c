"""The kr8s adapter against a real kube-apiserver: connecting says nothing it should not."""

from __future__ import annotations

import warnings

import anyio
import pytest

from lattice.adapters import kube_kr8s
from lattice.adapters.binaries import Toolchain
from lattice.adapters.controlplane import ControlPlane

pytestmark = pytest.mark.integration


def test_connecting_to_the_tested_minor_does_not_warn(
    cell_control_plane: ControlPlane, toolchain: Toolchain
) -> None:
    """kr8s 0.20.15 knows Kubernetes up to 1.35 and warns on every new client of a newer server;
    the minors Lattice tests on are filtered in one place (``kube_kr8s``), nothing else is."""
    minor = toolchain.versions.kubernetes.removeprefix("v").rsplit(".", 1)[0]
    assert minor in kube_kr8s.TESTED_KUBERNETES_MINORS, (
        f"the control planes run {toolchain.versions.kubernetes}: test kr8s against it, then add "
        f"{minor} to kube_kr8s.TESTED_KUBERNETES_MINORS"
    )

    async def connect() -> None:
        api = await kube_kr8s.Kr8sKube.connect(str(cell_control_plane.kubeconfig))
        await api.list("v1", "Namespace")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        anyio.run(connect)
    assert [str(w.message) for w in caught if "kr8s" in str(w.message)] == []
