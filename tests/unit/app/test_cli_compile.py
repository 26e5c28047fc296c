from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest

from lattice.app import cli, yamlio
from lattice.app.cmd_compile import _parse, resolve_context

EXAMPLES = sorted((Path(__file__).parents[3] / "examples" / "clusters").glob("*.yaml"))


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    rc = cli.main(argv)
    captured = capsys.readouterr()
    return rc, captured.out, captured.err


def test_compile_all_examples_prints_every_provider(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(["compile", *map(str, EXAMPLES)], capsys)
    assert rc == 0, err
    docs = yamlio.load_documents(out)
    assert isinstance(docs, list)
    kinds = {doc.data["kind"] for doc in docs}
    assert {"DockerCluster", "AWSCluster", "GCPCluster", "AzureCluster"} <= kinds
    assert len(docs) == 8 * len(EXAMPLES)


def test_compile_to_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, err = _run(["compile", "--workload", "-o", str(tmp_path), *map(str, EXAMPLES)], capsys)
    assert rc == 0
    assert out == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "mgmt.yaml",
        "prod-eu-west.yaml",
        "prod-us-west.yaml",
        "prod-westeurope.yaml",
    ]
    assert "CiliumLoadBalancerIPPool" in (tmp_path / "mgmt.yaml").read_text()
    assert "wrote" in err


BAD = """\
apiVersion: lattice.dev/v1alpha1
kind: LatticeCluster
metadata:
  name: Bad_Name
spec:
  cellRef: mgmt
  provider:
    type: docker
    kubernetes:
      version: "1.35"
  nodes:
    controlPlane: 2
    workers: -1
---
apiVersion: lattice.dev/v1alpha1
kind: LatticeCluster
metadata:
  name: second
spec:
  cellRef: mgmt
  provider:
    type: docker
    kubernetes:
      version: "1.35.0"
  nodes:
    contolPlane: 1
    workers: 1
"""


def test_invalid_input_reports_file_line_field_and_reason(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD)
    out_dir = tmp_path / "out"
    rc, out, err = _run(["compile", "-o", str(out_dir), str(path)], capsys)
    assert rc == 1
    assert out == ""
    assert not out_dir.exists()
    lines = err.splitlines()
    assert f"{path}:4: metadata.name: 'Bad_Name' is not a DNS-1123 label" in lines[0]
    assert any(line.startswith(f"{path}:10: spec.provider.kubernetes.version:") for line in lines)
    assert any(line.startswith(f"{path}:12: spec.nodes.controlPlane: must be odd") for line in lines)
    assert any(line.startswith(f"{path}:13: spec.nodes.workers:") for line in lines)
    assert any(line.startswith(f"{path}:26: spec.nodes.contolPlane: unknown field") for line in lines)
    assert any(line.startswith(f"{path}:25: spec.nodes.controlPlane: required") for line in lines)
    assert lines[-1] == "lattice compile: 6 error(s); nothing written"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: [1,\n", ":2:1: invalid YAML"),
        ("", "in.yaml: no LatticeCluster documents in this file"),
        ("- 1\n", "a LatticeCluster must be an object"),
    ],
)
def test_unusable_input(tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str) -> None:
    path = tmp_path / "in.yaml"
    path.write_text(text)
    rc, _, err = _run(["compile", str(path)], capsys)
    assert rc == 1
    assert expected in err


def test_missing_file(capsys: pytest.CaptureFixture[str]) -> None:
    rc, _, err = _run(["compile", "/nonexistent/x.yaml"], capsys)
    assert rc == 1
    assert "/nonexistent/x.yaml: cannot read: No such file or directory" in err


def test_cell_host_for_children_whose_cell_is_elsewhere(capsys: pytest.CaptureFixture[str]) -> None:
    aws = str(EXAMPLES[1])
    rc, _, err = _run(["compile", aws], capsys)
    assert rc == 1
    assert "cell 'mgmt' is not among the input documents; add it or pass --cell-host" in err
    rc, out, _ = _run(["compile", "--cell-host", "cell.example.com:9443", aws], capsys)
    assert rc == 0
    assert "https://cell.example.com:9443/api/clusters/register" in out
    rc, out, _ = _run(["compile", "--cell-host", "cell.example.com", aws], capsys)
    assert "https://cell.example.com:8443/api/clusters/register" in out
    rc, out, _ = _run(["compile", "--cell-host", "[::1]:9443", aws], capsys)
    assert rc == 0
    assert "https://[::1]:9443/api/clusters/register" in out
    rc, _, err = _run(["compile", "--cell-host", "cell:http", aws], capsys)
    assert rc == 1
    assert "--cell-host: 'http' is not a port number" in err


def test_duplicate_names_and_non_cell_parents(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    aws = EXAMPLES[1].read_text()
    leaf = aws.replace("name: prod-us-west", "name: mgmt").replace("cellRef: mgmt", "cellRef: other")
    path = tmp_path / "x.yaml"
    path.write_text(aws + "---\n" + aws + "---\n" + leaf)
    rc, _, err = _run(["compile", "--cell-host", "c", str(path)], capsys)
    assert rc == 1
    assert "duplicate cluster name 'prod-us-west'" in err
    assert "'mgmt' is not a cell: it has no spec.parentConfig" in err


def test_stdin(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(EXAMPLES[0].read_text()))
    rc, out, _ = _run(["compile", "-"], capsys)
    assert rc == 0
    assert "kind: DockerCluster" in out


def test_crds_command(capsys: pytest.CaptureFixture[str]) -> None:
    rc, out, _ = _run(["crds"], capsys)
    assert rc == 0
    assert "name: latticeclusters.lattice.dev" in out


def test_resolve_context_root_has_no_parent() -> None:
    docs = yamlio.load_documents(EXAMPLES[0].read_text())
    assert isinstance(docs, list)
    valid = _parse(docs[0])
    assert not isinstance(valid, list)
    context = resolve_context(valid, [valid], None)
    assert not isinstance(context, Exception)
    assert context.parent is None  # type: ignore[union-attr]


def test_console_script_runs() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "lattice.app.cli", "compile", str(EXAMPLES[0])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "kind: KubeadmControlPlane" in result.stdout
