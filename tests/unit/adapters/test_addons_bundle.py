"""Where the cluster add-ons are and how helm renders a chart (the build itself is the
script's; these tests need no build)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from lattice.adapters import addons_bundle
from lattice.adapters.binaries import BinariesNotBuiltError

REPO = Path(__file__).parents[3]


def test_the_key_matches_the_build_script() -> None:
    script = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-addons.sh"), "--print-key"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert addons_bundle.addons_key(REPO) == script.stdout.strip()


def test_the_key_follows_every_addons_file(tmp_path: Path) -> None:
    root = tmp_path / "repo"
    shutil.copytree(REPO / "addons", root / "addons")
    (root / "scripts").mkdir()
    (root / "tools").mkdir()
    shutil.copy(REPO / "scripts" / "build-addons.sh", root / "scripts")
    shutil.copy(REPO / "tools" / "mesh-versions.env", root / "tools")
    key = addons_bundle.addons_key(root)
    script = subprocess.run(
        ["bash", str(root / "scripts" / "build-addons.sh"), "--print-key"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert key == script.stdout.strip()
    (root / "addons" / "NOTE").write_text("any file under addons/ counts\n")
    assert addons_bundle.addons_key(root) != key


def test_locate_names_the_script_when_nothing_is_built(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("LATTICE_ADDONS_DIR", str(tmp_path))
    with pytest.raises(BinariesNotBuiltError, match=r"run `bash scripts/build-addons.sh`"):
        addons_bundle.locate_addons()
    monkeypatch.delenv("LATTICE_ADDONS_DIR")
    monkeypatch.setenv("LATTICE_CACHE", str(tmp_path))
    with pytest.raises(BinariesNotBuiltError, match=str(tmp_path / "addons" / "helm-")):
        addons_bundle.locate_addons(REPO)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(addons_bundle, "find_repo_root", lambda: None)
    with pytest.raises(BinariesNotBuiltError, match="set LATTICE_ADDONS_DIR"):
        addons_bundle.locate_addons()


def test_a_bundle_reads_its_files(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    (tmp_path / "bin" / "build-info.txt").write_text("key=k\nhelm: x v1\nHELM_VERSION=v4.2.4\n")
    (tmp_path / "cilium" / "crds" / "v2").mkdir(parents=True)
    (tmp_path / "cilium" / "crds" / "v2" / "a.yaml").write_text("kind: CustomResourceDefinition\n---\n")
    (tmp_path / "flux").mkdir()
    (tmp_path / "flux" / "install.yaml").write_text("- not an object\n")
    bundle = addons_bundle.AddonsBundle(tmp_path)
    assert bundle.versions() == {"HELM_VERSION": "v4.2.4"}
    assert bundle.cilium_crds() == [{"kind": "CustomResourceDefinition"}]
    assert bundle.binary("helm") == bundle.helm == tmp_path / "bin" / "helm"
    with pytest.raises(addons_bundle.RenderError, match="not a Kubernetes object"):
        bundle.flux_install()


def _fake_helm(tmp_path: Path, body: str) -> Path:
    helm = tmp_path / "helm"
    helm.write_text(f"#!/bin/sh\n{body}\n")
    helm.chmod(0o755)
    return helm


def test_helm_failures_carry_helms_words(tmp_path: Path) -> None:
    """A stand-in for helm's exit paths only: the real helm renders the real chart in the
    integration tests (tests/integration/agent/test_manifest_applier.py)."""
    failing = addons_bundle.HelmRenderer(_fake_helm(tmp_path, 'echo "Error: bad values" >&2; exit 1'))
    with pytest.raises(addons_bundle.RenderError, match="helm template chart failed: Error: bad values"):
        failing.render(tmp_path / "chart", release="r", namespace="n", values={})
    missing = addons_bundle.HelmRenderer(tmp_path / "no-helm")
    with pytest.raises(addons_bundle.RenderError, match="helm template chart: "):
        missing.render(tmp_path / "chart", release="r", namespace="n", values={})
    args = tmp_path / "args"
    echoing = addons_bundle.HelmRenderer(
        _fake_helm(tmp_path, f'echo "$@" > {args}; printf -- "---\\nkind: A\\nmetadata: {{name: a}}\\n"')
    )
    out = echoing.render(
        tmp_path / "chart", release="r", namespace="n", values={"a": 1}, kube_version="v1.36.3"
    )
    assert out == [{"kind": "A", "metadata": {"name": "a"}}]
    assert args.read_text().split()[-2:] == ["--kube-version", "v1.36.3"]
    assert "--values" in args.read_text().split()
