"""``lattice install --via {manifests,helm}``: parsed, defaulted, refused when wrong, and with
helm, refused at once (exit 2, nothing started) when helm or the chart is missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from lattice.app import cli
from lattice.domain import install_plan

REPO = Path(__file__).resolve().parents[3]
MGMT = REPO / "examples" / "install" / "local-mgmt.yaml"


def _parse(*argv: str) -> object:
    return cli.build_parser().parse_args(["install", "-f", "c.yaml", *argv]).via


def test_via_defaults_to_the_manifests() -> None:
    assert _parse() == "manifests"
    assert install_plan.Via(_parse()) is install_plan.Via.MANIFESTS


def test_via_helm_is_parsed() -> None:
    assert install_plan.Via(_parse("--via", "helm")) is install_plan.Via.HELM
    assert install_plan.Via(_parse("--via=manifests")) is install_plan.Via.MANIFESTS


def test_an_unknown_via_names_the_choices(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        _parse("--via", "kustomize")
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert "argument --via: invalid choice: 'kustomize' (choose from 'manifests', 'helm')" in err


def test_the_help_says_the_objects_are_the_same_either_way(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["install", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "--via {manifests,helm}" in out
    assert "the same objects either way" in out


def test_via_helm_without_helm_built_stops_before_anything_starts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LATTICE_ADDONS_DIR", str(tmp_path / "not-built"))
    state = tmp_path / "state"
    rc = cli.main(["install", "-f", str(MGMT), "--via", "helm", "--state-dir", str(state)])
    assert rc == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("lattice install: --via helm: the cluster add-ons are not built")
    assert "bash scripts/build-addons.sh" in err
    assert not state.exists()


def test_via_helm_without_the_chart_names_where_it_looked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = tmp_path / "addons"
    bundle.mkdir()
    (bundle / ".complete").write_text("")
    monkeypatch.setenv("LATTICE_ADDONS_DIR", str(bundle))
    monkeypatch.setenv("LATTICE_CHART_DIR", str(tmp_path / "no-chart"))
    rc = cli.main(["install", "-f", str(MGMT), "--via", "helm", "--dry-run", str(tmp_path / "out")])
    assert rc == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"lattice install: --via helm: no Helm chart at {tmp_path / 'no-chart'}" in err
    assert not (tmp_path / "out").exists()


def test_the_dry_run_renders_through_the_manifests_by_default(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert cli.main(["install", "-f", str(MGMT), "--dry-run", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "00-crds.yaml",
        "10-management-cluster.yaml",
        "20-capi.yaml",
        "30-agent-resource-set.yaml",
        "40-management-operator.yaml",
    ]


def _aws_mgmt(tmp_path: Path) -> Path:
    """The AWS workload example as a root management cell (no cellRef, a parentConfig)."""
    text = (REPO / "examples" / "clusters" / "workload-aws.yaml").read_text()
    text = text.replace("  cellRef: mgmt\n", "  parentConfig:\n    host: cell.example.com\n")
    path = tmp_path / "aws-mgmt.yaml"
    path.write_text(text)
    return path


def test_a_cloud_install_without_credentials_names_the_variables_and_starts_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA-only-half")  # one of a pair is not enough
    state = tmp_path / "state"
    assert cli.main(["install", "-f", str(_aws_mgmt(tmp_path)), "--state-dir", str(state)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (
        "lattice install: no aws credentials: set AWS_ACCESS_KEY_ID+AWS_SECRET_ACCESS_KEY or AWS_PROFILE"
        in err
    )
    assert "use --dry-run DIR to write what would be applied" in err
    assert not state.exists()


def test_a_cloud_install_with_credentials_says_what_this_build_cannot_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("AWS_PROFILE", "platform")
    state = tmp_path / "state"
    assert cli.main(["install", "-f", str(_aws_mgmt(tmp_path)), "--state-dir", str(state)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "installing on aws needs its Cluster API provider controllers running in the bootstrap" in err
    assert "docs/install.md" in err
    assert not state.exists()


def test_a_local_install_without_the_binaries_says_how_to_build_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LATTICE_BIN_DIR", str(tmp_path / "not-built"))
    state = tmp_path / "state"
    assert cli.main(["install", "-f", str(MGMT), "--state-dir", str(state)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert err.startswith("lattice install:")
    assert "scripts/build-k8s.sh" in err
    assert not state.exists()
