"""The native mover's own logic that needs no API server: retrying an unavailable server, and
refusing an unreachable one (the moves themselves: tests/integration/test_mover_oracle.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from lattice.adapters import mover_native
from lattice.adapters.mover_native import NativeMover
from lattice.ports import kube
from lattice.ports.mover import MoveError


def test_an_unavailable_server_is_asked_again_then_given_up_on() -> None:
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) < 3:
            raise kube.Unavailable("429 Too Many Requests")
        return "listed"

    async def down() -> str:
        calls.append(1)
        raise kube.Unavailable("connection refused")

    mover = NativeMover(retry_delay=0.0)
    assert asyncio.run(mover._retry("listing", flaky)) == "listed"
    calls.clear()
    with pytest.raises(MoveError, match="listing Cluster: connection refused"):
        asyncio.run(mover._retry("listing Cluster", down))
    assert len(calls) == mover_native.RETRIES


def test_an_unreachable_api_server_is_a_move_error(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        """apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:1", insecure-skip-tls-verify: true}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""
    )
    with pytest.raises(MoveError, match="cannot reach the API server"):
        asyncio.run(NativeMover().export(kubeconfig, "capi-x", tmp_path / "out"))
