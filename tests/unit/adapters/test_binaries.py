"""Unit tests for locating the binaries and CRDs built by scripts/build-k8s.sh."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lattice.adapters import binaries
from lattice.adapters.binaries import BinariesNotBuiltError

REPO = Path(__file__).resolve().parents[3]

VERSIONS_ENV = """\
# comment
KUBERNETES_VERSION=v1.36.3
export KUBERNETES_STAGING_VERSION="v0.36.3"
ETCD_VERSION='v3.6.16'

CAPI_VERSION=v1.14.2
CAPA_VERSION=v2.11.1
CAPG_VERSION=v1.12.0
CAPZ_VERSION=v1.26.0
GO_VERSION=1.26.0
"""


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("LATTICE_BIN_DIR", "LATTICE_CRD_DIR", "LATTICE_REPO_ROOT", "LATTICE_CACHE"):
        monkeypatch.delenv(name, raising=False)


def _fake_repo(root: Path, versions: str = VERSIONS_ENV) -> Path:
    (root / "tools" / "k8s" / "cmd" / "x").mkdir(parents=True)
    (root / "scripts").mkdir()
    (root / "tools" / "versions.env").write_text(versions)
    (root / "scripts" / "build-k8s.sh").write_text("#!/bin/sh\n")
    (root / "tools" / "k8s" / "go.mod").write_text("module x\n")
    (root / "tools" / "k8s" / "go.sum").write_text("")
    (root / "tools" / "k8s" / "cmd" / "x" / "main.go").write_text("package main\n")
    (root / "tools" / "k8s" / "README").write_text("not hashed\n")
    return root


def _fake_build(bin_dir: Path, crd_dir: Path) -> None:
    bin_dir.mkdir(parents=True)
    for name in binaries.BINARIES:
        path = bin_dir / name
        path.write_text("#!/bin/sh\n")
        path.chmod(0o755)
    (bin_dir / ".complete").touch()
    crd_dir.mkdir(parents=True)
    (crd_dir / ".complete").touch()
    (crd_dir / binaries.WEBHOOKS_MARKER).parent.mkdir(parents=True)
    (crd_dir / binaries.WEBHOOKS_MARKER).write_text("")


def test_parse_env_file() -> None:
    values = binaries.parse_env_file(VERSIONS_ENV)
    assert values["KUBERNETES_VERSION"] == "v1.36.3"
    assert values["KUBERNETES_STAGING_VERSION"] == "v0.36.3"
    assert values["ETCD_VERSION"] == "v3.6.16"
    assert len(values) == 8


@pytest.mark.parametrize("line", ["NOEQUALS", "1X=2", "A-B=3"])
def test_parse_env_file_rejects_garbage(line: str) -> None:
    with pytest.raises(ValueError, match="line 1"):
        binaries.parse_env_file(line)


def test_the_repository_versions_are_complete() -> None:
    versions = binaries.read_versions(REPO)
    assert versions.kubernetes.startswith("v1.")
    assert versions.kubernetes_staging == "v0." + versions.kubernetes.removeprefix("v1.")
    assert versions.capi.startswith("v1.")


def test_missing_versions_are_named(tmp_path: Path) -> None:
    root = _fake_repo(tmp_path, "KUBERNETES_VERSION=v1.36.3\n")
    with pytest.raises(BinariesNotBuiltError, match="ETCD_VERSION"):
        binaries.read_versions(root)


def test_find_repo_root(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_repo(tmp_path / "repo")
    deep = root / "tools" / "k8s" / "cmd"
    assert binaries.find_repo_root(deep) == root
    assert binaries.find_repo_root(tmp_path) is None
    monkeypatch.chdir(deep)
    assert binaries.find_repo_root() == root
    monkeypatch.setenv("LATTICE_REPO_ROOT", str(root))
    assert binaries.find_repo_root(tmp_path) == root
    monkeypatch.setenv("LATTICE_REPO_ROOT", str(tmp_path))
    with pytest.raises(BinariesNotBuiltError, match="LATTICE_REPO_ROOT"):
        binaries.find_repo_root()


def test_find_repo_root_from_this_checkout(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Not in a repository: falls back to the module's own path (an editable install).
    monkeypatch.chdir(tmp_path)
    assert binaries.find_repo_root() == REPO


def test_cache_root(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    assert binaries.cache_root() == Path.home() / ".cache" / "lattice"
    monkeypatch.setenv("LATTICE_CACHE", str(tmp_path))
    assert binaries.cache_root() == tmp_path


def test_bin_key_matches_the_build_script() -> None:
    script = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-k8s.sh"), "--print-key"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert binaries.bin_key(REPO) == script.stdout.strip()


def test_bin_key_matches_the_build_script_on_a_fake_repo(tmp_path: Path) -> None:
    root = _fake_repo(tmp_path)
    shutil.copy(REPO / "scripts" / "build-k8s.sh", root / "scripts" / "build-k8s.sh")
    script = subprocess.run(
        ["bash", str(root / "scripts" / "build-k8s.sh"), "--print-key"],
        capture_output=True,
        text=True,
        check=True,
    )
    key = binaries.bin_key(root)
    assert key == script.stdout.strip()
    assert key.startswith("k8s-v1.36.3-etcd-v3.6.16-capi-v1.14.2-")
    (root / "tools" / "k8s" / "README").write_text("changed, but not a Go source\n")
    assert binaries.bin_key(root) == key
    (root / "tools" / "k8s" / "cmd" / "x" / "main.go").write_text("package main // changed\n")
    assert binaries.bin_key(root) != key


def test_crd_key() -> None:
    versions = binaries.Versions.from_env(binaries.parse_env_file(VERSIONS_ENV))
    assert binaries.crd_key(versions) == "capi-v1.14.2-capa-v2.11.1-capg-v1.12.0-capz-v1.26.0"


def test_locate_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_repo(tmp_path / "repo")
    cache = tmp_path / "cache"
    monkeypatch.setenv("LATTICE_CACHE", str(cache))
    versions = binaries.read_versions(root)
    bin_dir = cache / "bin" / binaries.bin_key(root)
    crd_dir = cache / "crds" / binaries.crd_key(versions)
    with pytest.raises(BinariesNotBuiltError, match=r"scripts/build-k8s\.sh"):
        binaries.locate(root)
    _fake_build(bin_dir, crd_dir)
    tools = binaries.locate(root)
    assert tools.bin_dir == bin_dir
    assert tools.crd_dir == crd_dir
    assert tools.versions == versions
    assert tools.kube_apiserver == bin_dir / "kube-apiserver"
    assert tools.kube_controller_manager == bin_dir / "kube-controller-manager"
    assert tools.kubectl == bin_dir / "kubectl"
    assert tools.etcd == bin_dir / "etcd"
    assert tools.clusterctl == bin_dir / "clusterctl"
    with pytest.raises(KeyError, match="unknown binary"):
        tools.binary("kubelet")


def test_locate_names_missing_binaries_and_crds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _fake_repo(tmp_path / "repo")
    bin_dir, crd_dir = tmp_path / "bin", tmp_path / "crds"
    _fake_build(bin_dir, crd_dir)
    monkeypatch.setenv("LATTICE_BIN_DIR", str(bin_dir))
    monkeypatch.setenv("LATTICE_CRD_DIR", str(crd_dir))
    assert binaries.locate(root).bin_dir == bin_dir
    os.chmod(bin_dir / "etcd", 0o644)
    (bin_dir / "clusterctl").unlink()
    with pytest.raises(BinariesNotBuiltError, match="etcd, clusterctl"):
        binaries.locate(root)
    os.chmod(bin_dir / "etcd", 0o755)
    (bin_dir / "clusterctl").write_text("")
    os.chmod(bin_dir / "clusterctl", 0o755)
    # A collection from before the webhook manifests were collected is not enough.
    (crd_dir / binaries.WEBHOOKS_MARKER).unlink()
    with pytest.raises(BinariesNotBuiltError, match="Cluster API CRDs"):
        binaries.locate(root)
    (crd_dir / binaries.WEBHOOKS_MARKER).write_text("")
    assert binaries.locate(root).crd_dir == crd_dir
    (crd_dir / ".complete").unlink()
    with pytest.raises(BinariesNotBuiltError, match="Cluster API CRDs"):
        binaries.locate(root)


def test_locate_outside_the_repository(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(binaries, "find_repo_root", lambda start=None: None)
    with pytest.raises(BinariesNotBuiltError, match="LATTICE_BIN_DIR"):
        binaries.locate()
    bin_dir, cache = tmp_path / "bin", tmp_path / "cache"
    monkeypatch.setenv("LATTICE_BIN_DIR", str(bin_dir))
    monkeypatch.setenv("LATTICE_CACHE", str(cache))
    versions = binaries.Versions.from_env(binaries.parse_env_file(VERSIONS_ENV))
    _fake_build(bin_dir, cache / "crds" / binaries.crd_key(versions))
    with pytest.raises(BinariesNotBuiltError, match=r"cannot find tools/versions\.env"):
        binaries.locate()
    # A build carries its versions in build-info.txt, which is enough outside the repository.
    (bin_dir / "build-info.txt").write_text("key=whatever\n" + VERSIONS_ENV)
    tools = binaries.locate()
    assert tools.versions == versions
    assert tools.crd_dir == cache / "crds" / binaries.crd_key(versions)
