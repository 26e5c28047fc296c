"""The cluster add-ons a cell hands to its children, as ``scripts/build-addons.sh`` builds them.

The directory is ``$LATTICE_ADDONS_DIR`` when set (``bash scripts/build-addons.sh
--print-dir`` prints it), else ``$LATTICE_CACHE/addons/<key>`` with the key computed exactly as
the build script computes it (:func:`addons_key`). It holds, from the pinned Go modules
(``addons/versions.env``; Cilium's version is ``tools/mesh-versions.env``'s):

* ``bin/helm``: helm, built from ``helm.sh/helm/v4``; it renders Cilium's chart;
* ``bin/source-controller``, ``bin/kustomize-controller``: the Flux controllers, which the
  local kubelet stand-in runs for the Flux pods;
* ``cilium/chart/``: Cilium's own Helm chart (``install/kubernetes/cilium`` of the release);
* ``cilium/crds/``: Cilium's CRDs (``pkg/k8s/apis/cilium.io/client/crds``), which the
  cilium-operator registers on a real cluster at start-up;
* ``flux/install.yaml``: the Flux install (namespace, CRDs, RBAC, Services, Deployments) as
  ``kubectl kustomize`` renders the controllers' own ``config/`` with Flux's distribution
  settings.

Nothing falls back to anything: a missing bundle raises :class:`BinariesNotBuiltError` naming
the script. :class:`HelmRenderer` runs ``helm template`` (no cluster is contacted).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs
import yaml

from lattice.adapters.binaries import (
    COMPLETE_MARKER,
    BinariesNotBuiltError,
    cache_root,
    find_repo_root,
    parse_env_file,
)
from lattice.domain import addons, models

BUILD_SCRIPT = "scripts/build-addons.sh"
VERSIONS_FILE = "addons/versions.env"
MESH_VERSIONS_FILE = "tools/mesh-versions.env"
ENV_VAR = "LATTICE_ADDONS_DIR"
RENDER_TIMEOUT_S = 120.0

Obj = dict[str, Any]


class RenderError(RuntimeError):
    """helm could not render a chart; the message carries helm's own words."""


def _load_all(text: str, where: str) -> list[Obj]:
    """The Kubernetes objects of a generated YAML stream (the bundle's files, helm's output).

    Parsed by libyaml (PyYAML's ``CSafeLoader``), not ruamel's pure-Python parser as every
    other YAML here is: a cell loads the 1.3 MB of Cilium's CRDs and Flux's install at each
    start, 0.14 s of CPU this way against 2.3 s. libyaml reads YAML 1.1, as Kubernetes' own
    sigs.k8s.io/yaml does, where ruamel reads 1.2: Cilium's ``defaultMode: 0400`` is 0o400 here
    and was the decimal 400 with ruamel. ``tests/integration/test_addons_bundle.py`` checks
    that every file and rendering gives exactly the objects kubectl gives."""
    out: list[Obj] = []
    try:
        docs = list(yaml.load_all(text, Loader=yaml.CSafeLoader))
    except yaml.YAMLError as exc:
        raise RenderError(f"{where}: not YAML: {exc}") from exc
    for doc in docs:
        if doc is None:
            continue
        if not isinstance(doc, dict) or "kind" not in doc:
            raise RenderError(f"{where}: a document is not a Kubernetes object")
        out.append(doc)
    return out


@attrs.frozen
class AddonsBundle:
    root: Path

    @property
    def helm(self) -> Path:
        return self.root / "bin" / "helm"

    @property
    def cilium_chart(self) -> Path:
        return self.root / "cilium" / "chart"

    def binary(self, name: str) -> Path:
        return self.root / "bin" / name

    def cilium_crds(self) -> list[Obj]:
        """Every Cilium CRD, sorted by file."""
        found: list[Obj] = []
        for path in sorted((self.root / "cilium" / "crds").rglob("*.yaml")):
            found.extend(_load_all(path.read_text(), str(path)))
        return found

    def flux_install(self) -> list[Obj]:
        path = self.root / "flux" / "install.yaml"
        return _load_all(path.read_text(), str(path))

    def render_cilium(
        self,
        cluster_name: str,
        networking: models.NetworkingSpec | None,
        api_server: tuple[str, int],
        kubernetes_version: str,
    ) -> list[Obj]:
        """Cilium for one cluster: its chart rendered with
        :func:`lattice.domain.addons.cilium_values` for that cluster's Kubernetes version."""
        return HelmRenderer(self.helm).render(
            self.cilium_chart,
            release=addons.CILIUM_RELEASE,
            namespace=addons.CILIUM_NAMESPACE,
            values=addons.cilium_values(cluster_name, networking, api_server),
            kube_version=f"v{kubernetes_version.lstrip('v')}",
        )

    def versions(self) -> dict[str, str]:
        """``build-info.txt``'s KEY=VALUE lines (the versions the bundle was built from)."""
        out: dict[str, str] = {}
        for line in (self.root / "bin" / "build-info.txt").read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep and key.isupper():
                out[key.strip()] = value.strip()
        return out


def addons_key(repo_root: Path) -> str:
    """The cache key of an add-ons build; must equal ``bash scripts/build-addons.sh --print-key``
    (a test checks it)."""
    versions = parse_env_file((repo_root / VERSIONS_FILE).read_text())
    names = {BUILD_SCRIPT, MESH_VERSIONS_FILE}
    names.update(
        p.relative_to(repo_root).as_posix() for p in (repo_root / "addons").rglob("*") if p.is_file()
    )
    listing = "".join(
        f"{hashlib.sha256((repo_root / name).read_bytes()).hexdigest()}  {name}\n"
        for name in sorted(names, key=lambda name: name.encode())
    )
    digest = hashlib.sha256(listing.encode()).hexdigest()[:12]
    return (
        f"helm-{versions['HELM_VERSION']}-flux-{versions['FLUX_VERSION']}"
        f"-sc-{versions['FLUX_SOURCE_CONTROLLER_VERSION']}-kc-{versions['FLUX_KUSTOMIZE_CONTROLLER_VERSION']}"
        f"-{digest}"
    )


def locate_addons(repo_root: Path | None = None) -> AddonsBundle:
    env = os.environ.get(ENV_VAR)
    if env:
        root = Path(env)
    else:
        repo = repo_root if repo_root is not None else find_repo_root()
        if repo is None:
            raise BinariesNotBuiltError(
                f"set {ENV_VAR} (`bash {BUILD_SCRIPT} --print-dir` prints it) or run from the "
                "Lattice repository"
            )
        root = cache_root() / "addons" / addons_key(repo)
    if not (root / COMPLETE_MARKER).is_file():
        raise BinariesNotBuiltError(f"the cluster add-ons are not built at {root}: run `bash {BUILD_SCRIPT}`")
    return AddonsBundle(root)


@attrs.define
class HelmRenderer:
    """``helm template``: a chart's objects for these values, as ``helm install`` would create
    them (no cluster is contacted; ``kube_version`` stands for the target cluster's)."""

    helm: Path
    timeout: float = RENDER_TIMEOUT_S

    def render(
        self,
        chart: Path,
        *,
        release: str,
        namespace: str,
        values: Mapping[str, Any],
        kube_version: str | None = None,
        include_crds: bool = False,
    ) -> list[Obj]:
        """The objects in helm's install order; ``include_crds`` adds the chart's ``crds/``."""
        text = self.render_text(
            chart,
            release=release,
            namespace=namespace,
            values=values,
            kube_version=kube_version,
            include_crds=include_crds,
        )
        return _load_all(text, f"helm template {chart.name}")

    def render_text(
        self,
        chart: Path,
        *,
        release: str,
        namespace: str,
        values: Mapping[str, Any],
        kube_version: str | None = None,
        include_crds: bool = False,
    ) -> str:
        """What ``helm template`` prints (:meth:`render`'s arguments)."""
        with tempfile.TemporaryDirectory(prefix="lattice-helm-") as scratch:
            values_file = Path(scratch) / "values.json"  # JSON is YAML: helm reads it as values
            values_file.write_text(json.dumps(values))
            argv: list[str] = [
                str(self.helm),
                "template",
                release,
                str(chart),
                "--namespace",
                namespace,
                "--values",
                str(values_file),
            ]
            if kube_version:
                argv += ["--kube-version", kube_version]
            if include_crds:
                argv.append("--include-crds")
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "HOME": scratch,
                "HELM_CACHE_HOME": f"{scratch}/cache",
                "HELM_CONFIG_HOME": f"{scratch}/config",
                "HELM_DATA_HOME": f"{scratch}/data",
            }
            try:
                done = subprocess.run(  # noqa: S603 - our own pinned helm
                    argv, capture_output=True, text=True, timeout=self.timeout, env=env, check=False
                )
            except (OSError, subprocess.TimeoutExpired) as exc:
                raise RenderError(f"helm template {chart.name}: {exc}") from exc
        if done.returncode != 0:
            raise RenderError(f"helm template {chart.name} failed: {done.stderr.strip()[-2000:]}")
        return done.stdout
