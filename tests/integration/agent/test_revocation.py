"""Revoked agent certificates: a real cell hub and agent over mTLS, the revocations in a
ConfigMap on a real apiserver, written by ``lattice revoke-agent``."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator

import pytest

from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.revocations import CONFIG_MAP, NAMESPACE, ConfigMapRevocations
from lattice.app import cli
from lattice.ports import kube
from lattice.ports.kube import ResourceRef

from .conftest import Pki, running_agent, running_cell

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

REF = ResourceRef("v1", "ConfigMap", CONFIG_MAP, NAMESPACE)


@pytest.fixture
async def api(control_plane: ControlPlane) -> AsyncIterator[Kr8sKube]:
    api = await Kr8sKube.connect(str(control_plane.kubeconfig))
    with contextlib.suppress(kube.NotFound):
        await api.delete(REF)
    return api


async def _until(predicate, within: float = 20.0) -> None:  # type: ignore[no-untyped-def]
    async with asyncio.timeout(within):
        while not predicate():  # noqa: ASYNC110 - polls state another task changes
            await asyncio.sleep(0.05)


async def test_a_revoked_agent_is_cut_off_refused_with_the_reason_and_a_new_registration_gets_in(
    cell_pki: Pki, api: Kr8sKube, control_plane: ControlPlane
) -> None:
    revocations = ConfigMapRevocations(api)
    await revocations.refresh()
    old = cell_pki.agent_files("v1")
    async with running_cell(cell_pki, revocation=revocations.reason) as cell:
        async with running_agent(old, "v1", cell.port) as running:
            await cell.wait_connected("v1")
            await asyncio.sleep(1.1)  # certificate times have a one-second resolution
            code = await asyncio.to_thread(
                cli.main, ["revoke-agent", "v1", "--kubeconfig", str(control_plane.kubeconfig)]
            )
            assert code == 0
            await revocations.refresh()  # what the cell runtime's task does every few seconds
            assert cell.hub.close_revoked() == 1
            await _until(lambda: "v1" not in cell.hub.connected())
            await _until(lambda: "was revoked at" in (running.runner.last_error or ""))
            assert "PERMISSION_DENIED" in (running.runner.last_error or "")
            assert "must register again" in (running.runner.last_error or "")
            await _until(lambda: cell.hub.refused_revoked >= 2)  # closed, then refused again
            assert "v1" not in cell.hub.connected()

        await asyncio.sleep(1.1)
        fresh = cell_pki.agent_files("v1")  # registered again: a certificate issued after it
        async with running_agent(fresh, "v1", cell.port):
            await cell.wait_connected("v1")
        assert cell.hub.close_revoked() == 0


async def test_a_broken_entry_is_named_and_ignored_and_the_others_apply(
    cell_pki: Pki, api: Kr8sKube, caplog: pytest.LogCaptureFixture
) -> None:
    revocations = ConfigMapRevocations(api)
    now = dt.datetime.now(dt.UTC)
    await revocations.revoke("v2", now + dt.timedelta(minutes=1))
    await api.merge_patch(REF, {"data": {"v3": "yesterday", "Not_A_Name": now.isoformat()}})
    with caplog.at_level(logging.ERROR):
        await revocations.refresh()
    assert set(revocations.revoked) == {"v2"}
    assert any("data.v3" in m and "RFC 3339" in m for m in revocations.errors)
    assert any("data.Not_A_Name" in m for m in revocations.errors)
    assert "ignored a revocation" in caplog.text
    await revocations.revoke("v3", now)  # a fix overwrites the broken entry, nothing else
    await revocations.refresh()
    assert set(revocations.revoked) == {"v2", "v3"}
    assert revocations.reason("v4", now) is None

    async with (
        running_cell(cell_pki, revocation=revocations.reason) as cell,
        running_agent(cell_pki.agent_files("v2"), "v2", cell.port) as running,
    ):
        await _until(lambda: "was revoked at" in (running.runner.last_error or ""))
        assert "v2" not in cell.hub.connected()


async def test_the_cli_names_a_bad_cluster_and_an_unreachable_cell(
    control_plane: ControlPlane,
    tmp_path,
    capsys: pytest.CaptureFixture[str],  # type: ignore[no-untyped-def]
) -> None:
    code = await asyncio.to_thread(
        cli.main, ["revoke-agent", "Bad_Name", "--kubeconfig", str(control_plane.kubeconfig)]
    )
    assert code == 2
    assert "cluster" in capsys.readouterr().err
    broken = control_plane.kubeconfig.read_text().replace("https://", "https://127.0.0.1:1/x", 1)
    (tmp_path / "kubeconfig").write_text(broken)
    code = await asyncio.to_thread(
        cli.main, ["revoke-agent", "v5", "--kubeconfig", str(tmp_path / "kubeconfig")]
    )
    assert code == 1
    assert "cannot write lattice-system/lattice-agent-revocations" in capsys.readouterr().err


async def test_entries_that_can_no_longer_refuse_a_valid_certificate_are_pruned_and_none_is_lost(
    api: Kr8sKube,
) -> None:
    now = dt.datetime.now(dt.UTC).replace(microsecond=0)
    cell = ConfigMapRevocations(api)
    await cell.revoke("gone-long-ago", now - dt.timedelta(days=32))  # its certificates expired
    await cell.revoke("gone-today", now)
    await api.merge_patch(REF, {"data": {"broken": "yesterday"}})  # named at refresh, never pruned
    await cell.refresh()
    assert await cell.prune(now - dt.timedelta(days=2)) == ()  # 30 days and a day's grace: not yet

    # Another writer (the CLI, another replica) revokes after the cell's read: the prune's write,
    # made with the resourceVersion it read, is refused, and nothing is lost.
    await ConfigMapRevocations(api).revoke("gone-meanwhile", now - dt.timedelta(days=40))
    assert await cell.prune(now) == ()
    assert set((await api.get(REF))["data"]) == {"gone-long-ago", "gone-today", "broken", "gone-meanwhile"}

    await cell.refresh()
    assert await cell.prune(now) == ("gone-long-ago", "gone-meanwhile")
    assert set((await api.get(REF))["data"]) == {"gone-today", "broken"}
    assert set(cell.revoked) == {"gone-today"}
    await cell.refresh()
    assert await cell.prune(now) == ()
