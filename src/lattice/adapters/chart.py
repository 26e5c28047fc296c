"""The operator's own Helm chart (``charts/lattice``), rendered by ``helm template``.

The chart renders the objects :mod:`lattice.domain.deploy` makes (its CRDs are those of
:mod:`lattice.domain.crds`, in ``crds/``): :meth:`OperatorChart.operator_objects` renders it
with :meth:`lattice.domain.deploy.OperatorInstall.chart_values`. helm is the add-ons bundle's
(built from its Go module by ``scripts/build-addons.sh``); no cluster is contacted and no Helm
release is made: the caller applies the objects as it applies the manifests.

The chart is ``$LATTICE_CHART_DIR`` when set, else ``charts/lattice`` of the repository.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from lattice.adapters.addons_bundle import RENDER_TIMEOUT_S, HelmRenderer, locate_addons
from lattice.adapters.binaries import find_repo_root
from lattice.domain import deploy

CHART_PATH = "charts/lattice"
ENV_VAR = "LATTICE_CHART_DIR"
CRD_KIND = "CustomResourceDefinition"

Obj = dict[str, Any]


class ChartNotFoundError(RuntimeError):
    """No chart where it was looked for; the message says where and how to point at one."""


def locate_chart(repo_root: Path | None = None) -> Path:
    env = os.environ.get(ENV_VAR)
    if env:
        chart = Path(env)
    else:
        repo = repo_root if repo_root is not None else find_repo_root()
        if repo is None:
            raise ChartNotFoundError(f"set {ENV_VAR} to the Lattice chart or run from the Lattice repository")
        chart = repo / CHART_PATH
    if not (chart / "Chart.yaml").is_file():
        raise ChartNotFoundError(f"no Helm chart at {chart} (no Chart.yaml); set {ENV_VAR} to charts/lattice")
    return chart


@attrs.frozen
class OperatorChart:
    helm: Path
    chart: Path
    timeout: float = RENDER_TIMEOUT_S

    def render(self, values: Mapping[str, Any], *, include_crds: bool = False) -> list[Obj]:
        """``helm template`` with ``values`` over the chart's defaults: its objects in helm's
        install order (Namespace and CRDs first)."""
        return HelmRenderer(self.helm, self.timeout).render(
            self.chart,
            release=deploy.CHART_RELEASE,
            namespace=deploy.NAMESPACE,
            values=values,
            include_crds=include_crds,
        )

    def operator_objects(self, install: deploy.OperatorInstall) -> list[Obj]:
        """The Namespace, RBAC and Deployment: what ``install.manifests()`` makes."""
        return self.render(install.chart_values())

    def crds(self) -> list[Obj]:
        """The chart's CRDs (``crds/``), as ``helm install`` creates them."""
        return [o for o in self.render({}, include_crds=True) if o["kind"] == CRD_KIND]


def locate_operator_chart() -> OperatorChart:
    """The chart with the add-ons bundle's helm; raises
    :class:`~lattice.adapters.binaries.BinariesNotBuiltError` when helm is not built and
    :class:`ChartNotFoundError` when there is no chart."""
    return OperatorChart(helm=locate_addons().helm, chart=locate_chart())
