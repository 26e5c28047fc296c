"""``lattice kubeconfig`` and the agent's proxy flags: what they print, and every error naming
its flag (the path through a real cell is in tests/integration/agent/test_api_proxy_relay.py)."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import logging
from pathlib import Path

import pytest

from lattice.app import api_proxy, cli, yamlio


def _cell_kubeconfig(path: Path, token: str | None, server: str = "https://127.0.0.1:1") -> Path:
    user = {"token": token} if token else {"client-certificate-data": "eA=="}
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "cell", "cluster": {"server": server}}],
                "users": [{"name": "other", "user": {}}, {"name": "me", "user": user}],
                "contexts": [{"name": "cell", "context": {"cluster": "cell", "user": "me"}}],
                "current-context": "cell",
            }
        )
    )
    return path


def _printed(capsys: pytest.CaptureFixture[str]) -> dict[str, object]:
    documents = yamlio.load_documents(capsys.readouterr().out)
    assert isinstance(documents, list)
    data = documents[0].data
    assert isinstance(data, dict)
    return data


def test_prints_a_kubeconfig_for_a_grandchild(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    via = _cell_kubeconfig(tmp_path / "cell.kubeconfig", "cell-token")
    ca = tmp_path / "ca.crt"
    ca.write_text("PEM")
    argv = [
        "kubeconfig",
        "mid/leaf",
        "--via",
        str(via),
        "--proxy-url",
        "https://cell:8444",
        "--proxy-ca",
        str(ca),
    ]
    assert cli.main(argv) == 0
    config = _printed(capsys)
    assert config["clusters"] == [
        {
            "name": "leaf",
            "cluster": {
                "server": "https://cell:8444/clusters/mid/clusters/leaf",
                "certificate-authority-data": base64.b64encode(b"PEM").decode(),
            },
        }
    ]
    assert config["users"] == [{"name": "leaf-via-proxy", "user": {"token": "cell-token"}}]
    token = tmp_path / "token"
    token.write_text("from-file\n")
    assert cli.main([*argv, "--token-file", str(token)]) == 0
    assert _printed(capsys)["users"] == [{"name": "leaf-via-proxy", "user": {"token": "from-file"}}]
    assert cli.main([*argv, "--token", "given"]) == 0
    assert _printed(capsys)["users"] == [{"name": "leaf-via-proxy", "user": {"token": "given"}}]


def test_without_a_token_it_says_what_to_add(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    via = _cell_kubeconfig(tmp_path / "cell.kubeconfig", None)
    ca = tmp_path / "ca.crt"
    ca.write_text("PEM")
    rc = cli.main(
        ["kubeconfig", "c", "--via", str(via), "--proxy-url", "https://cell:8444", "--proxy-ca", str(ca)]
    )
    captured = capsys.readouterr()
    assert rc == 0
    assert "has neither a token nor a client certificate" in captured.err
    assert "token:" not in captured.out


def _with_user(path: Path, user: dict[str, str]) -> Path:
    config = json.loads(_cell_kubeconfig(path, "x").read_text())
    config["users"][1]["user"] = user
    path.write_text(json.dumps(config))
    return path


def test_without_a_token_the_client_certificate_of_the_cell_kubeconfig(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("PEM")
    proxy = ["--proxy-url", "https://cell:8444", "--proxy-ca", str(ca)]
    data = _with_user(
        tmp_path / "data.kubeconfig", {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZ"}
    )
    assert cli.main(["kubeconfig", "c", "--via", str(data), *proxy]) == 0
    expected = {"client-certificate-data": "Q0VSVA==", "client-key-data": "S0VZ"}
    assert _printed(capsys)["users"] == [{"name": "c-via-proxy", "user": expected}]
    # files named relative to the kubeconfig, as kubectl reads them
    (tmp_path / "admin.crt").write_bytes(b"CERT")
    (tmp_path / "admin.key").write_bytes(b"KEY")
    files = _with_user(
        tmp_path / "files.kubeconfig", {"client-certificate": "admin.crt", "client-key": "admin.key"}
    )
    assert cli.main(["kubeconfig", "c", "--via", str(files), *proxy]) == 0
    assert _printed(capsys)["users"] == [{"name": "c-via-proxy", "user": expected}]
    missing = _with_user(
        tmp_path / "missing.kubeconfig", {"client-certificate": "nope.crt", "client-key": "k"}
    )
    assert cli.main(["kubeconfig", "c", "--via", str(missing), *proxy]) == 2
    assert "cannot read the user's client certificate" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["Bad_Name"], "CLUSTER.0: must be lowercase"),
        (["a//b"], "CLUSTER.1: must not be empty"),
        (["c", "--proxy-url", "https://cell:8444"], "--proxy-url needs --proxy-ca"),
    ],
)
def test_errors_name_the_argument(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    via = _cell_kubeconfig(tmp_path / "cell.kubeconfig", "t")
    assert cli.main(["kubeconfig", args[0], "--via", str(via), *args[1:]]) == 2
    assert message in capsys.readouterr().err


def test_unreadable_or_wrong_via(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["kubeconfig", "c", "--via", str(tmp_path / "missing")]) == 2
    assert "--via" in capsys.readouterr().err
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n- b\n")
    assert cli.main(["kubeconfig", "c", "--via", str(listed)]) == 2
    assert "not a kubeconfig" in capsys.readouterr().err


def test_an_unreachable_cell_says_how_to_go_on(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    via = _cell_kubeconfig(tmp_path / "cell.kubeconfig", "t", server="https://127.0.0.1:1")
    assert cli.main(["kubeconfig", "c", "--via", str(via)]) == 1
    err = capsys.readouterr().err
    assert "lattice-system/lattice-api-proxy" in err
    assert "--proxy-url and --proxy-ca" in err


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (
            ["--relay-url", "http://cell:8444", "--relay-ca", "ca.crt"],
            "--relay-url http://cell:8444: must be an https:// URL",
        ),
        (["--relay-url", "https://cell:8444"], "--relay-url needs --relay-ca"),
    ],
)
def test_agent_relay_flags_are_checked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], message: str
) -> None:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        rc = _agent(tmp_path, flags)
    finally:  # lattice agent configures logging onto this test's captured stderr: undo it
        root.handlers[:], root.level = handlers, level
    assert rc == 2
    assert message in capsys.readouterr().err


def _agent(tmp_path: Path, flags: list[str]) -> int:
    return cli.main(
        [
            "agent",
            "--parent",
            "cell:50051",
            "--cluster-name",
            "mid",
            "--cert",
            str(tmp_path / "c"),
            "--key",
            str(tmp_path / "k"),
            "--ca",
            str(tmp_path / "ca"),
            *flags,
        ]
    )


def test_no_api_proxy_means_no_executor() -> None:
    flags = argparse.Namespace(no_api_proxy=True)
    assert asyncio.run(api_proxy.agent_executor(flags, "c", None)) is None  # type: ignore[arg-type]
