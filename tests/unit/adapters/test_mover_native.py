"""The native mover's own logic that needs no API server: retrying an unavailable server, and
refusing an unreachable one (the moves themselves: tests/integration/test_mover_oracle.py)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lattice.adapters import mover_native
from lattice.adapters.concurrency import failures_of_all
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


def test_creations_stop_at_the_first_failure_and_every_failure_is_named() -> None:
    """The import creates objects at once (each after its owners): a failure cancels the rest
    (one waiting for a failed owner among them) and every failure that happened is returned,
    nested groups included, for one MoveError to name."""
    finished: list[str] = []

    async def ok() -> None:
        finished.append("ok")

    async def fails(message: str) -> None:
        raise MoveError(message)

    async def never() -> None:
        await asyncio.Event().wait()  # an object waiting for an owner that failed

    async def nested() -> None:
        async with asyncio.TaskGroup() as group:
            group.create_task(fails("creating Machine capi-x/m: 422"))

    assert asyncio.run(failures_of_all([ok()])) == []
    assert finished == ["ok"]
    failures = asyncio.run(failures_of_all([never(), fails("creating Cluster capi-x/x: 403"), nested()]))
    assert {str(f) for f in failures} == {
        "creating Cluster capi-x/x: 403",
        "creating Machine capi-x/m: 422",
    }


class _Refusing:
    """A connection whose every request is refused (only what an export reaches first)."""

    async def list(self, *_: object, **__: object) -> kube.ListResult:
        raise kube.Invalid("refused")


def test_each_export_and_import_closes_the_connection_it_opened(tmp_path: Path) -> None:
    """One connection per export or import, closed after it whether the move failed or not
    (the default one is over aiohttp, which must be closed before its event loop ends)."""
    opened: list[Path] = []
    closed: list[Path] = []

    @contextlib.asynccontextmanager
    async def connect(kubeconfig: Path) -> AsyncIterator[Any]:
        opened.append(kubeconfig)
        try:
            yield _Refusing()
        finally:
            closed.append(kubeconfig)

    mover = NativeMover(connect, retry_delay=0.0)
    with pytest.raises(MoveError, match="exporting namespace capi-x: refused"):
        asyncio.run(mover.export(Path("source"), "capi-x", tmp_path / "out"))
    assert (opened, closed) == ([Path("source")], [Path("source")])
    (tmp_path / "empty").mkdir()
    asyncio.run(mover.import_(Path("target"), tmp_path / "empty"))  # nothing to create
    assert opened == closed == [Path("source"), Path("target")]
