"""The operator reads what the real controllers report: a compiled KubeadmControlPlane that the
real CABPK cannot render (here its registration ``files`` entry names a Secret that no cell has
issued) shows on the LatticeCluster as ``ProvisioningHealthy=False`` with CABPK's own message,
and as a Warning Event, instead of a silent wait."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from lattice.adapters.capi_managers import CapiManagers
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from tests.integration.conftest import events_of, local_infra
from tests.integration.operator.conftest import CELL, eventually, lc_ref, operator

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(300)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_bootstrap_data_cabpk_cannot_render_is_reported(
    managed: tuple[ControlPlane, CapiManagers], tmp_path: Path
) -> None:
    cp, _ = managed
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    async with local_infra(cp, tmp_path / "machines") as host, operator(cp, context=CELL):
        await api.create(
            {
                "apiVersion": "lattice.dev/v1alpha1",
                "kind": "LatticeCluster",
                "metadata": {"name": "broken"},
                "spec": {
                    "cellRef": "mgmt",
                    "provider": {"type": "local", "kubernetes": {"version": "1.36.3"}},
                    "nodes": {"controlPlane": 1, "workers": 0},
                },
            }
        )

        async def reported() -> dict[str, Any] | None:
            lc = await api.get(lc_ref("broken"))
            for cond in (lc.get("status") or {}).get("conditions") or []:
                if cond["type"] == "ProvisioningHealthy" and cond["status"] == "False":
                    return dict(cond)
            return None

        health = await eventually(reported, within=180, what="ProvisioningHealthy=False")
        assert health["reason"] == "BootstrapDataFailed"
        assert "Failed to prepare spec.files" in health["message"]
        assert "broken-lattice-registration" in health["message"]
        lc = await api.get(lc_ref("broken"))
        assert lc["status"]["phase"] == "Provisioning"
        assert lc["status"]["message"] == health["message"]

        events = events_of(cp, "broken")
        warnings = [e for e in events if e["type"] == "Warning"]
        assert [e["reason"] for e in warnings] == ["BootstrapDataFailed"]
        assert "Failed to prepare spec.files" in warnings[0]["message"]
        assert host.machines() == [], "no machine boots without bootstrap data"
