from __future__ import annotations

from pathlib import Path

import pytest

from lattice.adapters import mesh_crds
from lattice.adapters.binaries import BinariesNotBuiltError

VERSIONS = {
    "ISTIO_API_VERSION": "v1",
    "CILIUM_VERSION": "v2",
    "GATEWAY_API_VERSION": "v3",
    "EXTERNAL_DNS_VERSION": "v4",
}


def test_the_key_matches_the_fetch_script() -> None:
    assert mesh_crds.mesh_crd_key(VERSIONS) == "mesh-istio-v1-cilium-v2-gwapi-v3-xdns-v4"
    script = (Path(__file__).parents[3] / mesh_crds.FETCH_SCRIPT).read_text()
    assert (
        'KEY="mesh-istio-${ISTIO_API_VERSION}-cilium-${CILIUM_VERSION}-gwapi-${GATEWAY_API_VERSION}-xdns-'
        in script
    )


def test_a_missing_version_is_named() -> None:
    with pytest.raises(ValueError, match="CILIUM_VERSION"):
        mesh_crds.mesh_crd_key({**VERSIONS, "CILIUM_VERSION": ""})


def test_an_unfetched_directory_names_the_script(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LATTICE_MESH_CRD_DIR", str(tmp_path))
    with pytest.raises(BinariesNotBuiltError, match=r"fetch-mesh-crds\.sh"):
        mesh_crds.locate_mesh_crds()


def test_outside_the_repository_without_the_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LATTICE_MESH_CRD_DIR", raising=False)
    monkeypatch.delenv("LATTICE_REPO_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(mesh_crds, "find_repo_root", lambda: None)
    with pytest.raises(BinariesNotBuiltError, match="LATTICE_MESH_CRD_DIR"):
        mesh_crds.locate_mesh_crds()


def test_load_filters_by_name_and_names_what_is_absent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "crds.yaml").write_text(
        "kind: CustomResourceDefinition\nmetadata: {name: xs.example.com}\n---\n"
        "kind: ConfigMap\nmetadata: {name: not-a-crd}\n---\n"
        "kind: CustomResourceDefinition\nmetadata: {name: ys.example.com}\n"
    )
    (tmp_path / ".complete").touch()
    monkeypatch.setenv("LATTICE_MESH_CRD_DIR", str(tmp_path))
    directory = mesh_crds.locate_mesh_crds()
    assert [d["metadata"]["name"] for d in mesh_crds.load_mesh_crds(directory)] == [
        "xs.example.com",
        "ys.example.com",
    ]
    assert [d["metadata"]["name"] for d in mesh_crds.load_mesh_crds(directory, ["ys.example.com"])] == [
        "ys.example.com"
    ]
    with pytest.raises(KeyError, match=r"zs\.example\.com"):
        mesh_crds.load_mesh_crds(directory, ["zs.example.com"])
