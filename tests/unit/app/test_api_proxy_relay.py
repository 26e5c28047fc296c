"""The agent's own credentials for relaying to its cell's proxy (lattice.app.api_proxy)."""

from __future__ import annotations

from pathlib import Path

from lattice.app.api_proxy import RelayCredentials


def test_the_token_file_while_it_exists(tmp_path: Path) -> None:
    token = tmp_path / "token"
    token.write_text("projected")
    assert RelayCredentials(token, "from-kubeconfig").target_fields() == {"token_file": token}


def test_the_kubeconfig_token_when_the_file_is_not_there(tmp_path: Path) -> None:
    missing = tmp_path / "token"
    assert RelayCredentials(missing, "from-kubeconfig").target_fields() == {"token": "from-kubeconfig"}
    # nothing else to use: the file, whose absence the request then names
    assert RelayCredentials(missing, None).target_fields() == {"token_file": missing}
