"""The Secret-backed token store against a real apiserver: restarts, replicas, failed writes.

A "restart" is a new :class:`SecretTokenStore` on the same apiserver (what a restarted cell
builds); "two replicas" are two stores used at once. A write the apiserver refuses is real: the
Secret is made ``immutable``, so every update of it is rejected (422) until it is recreated.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.token_store_secret import KEY, NAMESPACE, SECRET, SecretTokenStore
from lattice.domain import tokens
from lattice.ports import kube
from lattice.ports.kube import ResourceRef
from lattice.ports.registration import TokenStoreUnavailable

from .conftest import Pki
from .test_registration import openssl_csr, running_webhook

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]

REF = ResourceRef("v1", "Secret", SECRET, NAMESPACE)


@pytest.fixture
async def api(control_plane: ControlPlane) -> AsyncIterator[Kr8sKube]:
    api = await Kr8sKube.connect(str(control_plane.kubeconfig))
    await api.apply({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}, "test")
    with contextlib.suppress(kube.NotFound):
        await api.delete(REF)
    return api


async def _make_immutable(api: Kr8sKube) -> None:
    await api.merge_patch(REF, {"immutable": True})


async def _recreate_writable(api: Kr8sKube) -> None:
    """What an administrator does to repair it: the same data in a Secret that can change."""
    stored = await api.get(REF)
    await api.delete(REF)
    for _ in range(50):
        try:
            await api.get(REF)
        except kube.NotFound:
            break
        await asyncio.sleep(0.1)
    await api.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "type": "Opaque",
            "data": stored["data"],
        }
    )


async def test_a_token_issued_before_a_restart_registers_exactly_once_after_it(
    api: Kr8sKube, cell_pki: Pki, tmp_path: Path
) -> None:
    before = SecretTokenStore(api)
    token = await before.issue("c1")
    stored = await api.get(REF)
    assert token not in base64.b64decode(stored["data"][KEY]).decode()  # digests only

    restarted = SecretTokenStore(api)
    await restarted.load()
    assert restarted.table.get("c1") is not None
    csr, _key = openssl_csr(tmp_path, "c1")
    async with running_webhook(cell_pki, store=restarted) as hook:
        first = await hook.register("c1", token, csr)
        assert first.status_code == 200, first.text
        again = await hook.register("c1", token, csr)
        assert again.status_code == 401
    # and the cell that issued it, still running, sees it spent
    assert await before.lease("c1", token) is tokens.Rejection.CONSUMED


async def test_a_failed_write_answers_503_and_leaves_the_token_usable(
    api: Kr8sKube, cell_pki: Pki, tmp_path: Path
) -> None:
    store = SecretTokenStore(api)
    token = await store.issue("c2")
    await _make_immutable(api)
    csr, _key = openssl_csr(tmp_path, "c2")
    async with running_webhook(cell_pki, store=store) as hook:
        refused = await hook.register("c2", token, csr)
        assert refused.status_code == 503, refused.text
        assert refused.json()["field"] == "Authorization"
        record = store.table.get("c2")
        assert record is not None
        assert record.state is tokens.TokenState.ISSUED
        with pytest.raises(TokenStoreUnavailable, match="cannot write the token table"):
            await store.issue("c3")
        assert store.table.get("c3") is None  # nothing changed in memory either

        await _recreate_writable(api)
        accepted = await hook.register("c2", token, csr)
        assert accepted.status_code == 200, accepted.text
        assert (await hook.register("c2", token, csr)).status_code == 401


async def test_two_replicas_lease_a_token_exactly_once(api: Kr8sKube) -> None:
    one, two = SecretTokenStore(api), SecretTokenStore(api)
    token = await one.issue("c4")
    results = await asyncio.gather(*(store.lease("c4", token) for store in (one, two, one, two)))
    leases = [r for r in results if isinstance(r, tokens.Lease)]
    assert len(leases) == 1, results
    assert all(r is tokens.Rejection.IN_USE for r in results if not isinstance(r, tokens.Lease))
    winner = leases[0]
    # either replica can finish the delivery; the token is then spent for both
    assert await two.commit(winner) is tokens.CommitResult.COMMITTED
    assert await one.lease("c4", token) is tokens.Rejection.CONSUMED
    assert await two.commit(winner) is tokens.CommitResult.LEASE_LOST


async def test_replicas_issuing_for_different_clusters_lose_no_record(api: Kr8sKube) -> None:
    one, two = SecretTokenStore(api), SecretTokenStore(api)
    names = [f"n{i}" for i in range(12)]
    issued = await asyncio.gather(*((one if i % 2 else two).issue(name) for i, name in enumerate(names)))
    reader = SecretTokenStore(api)
    await reader.load()
    assert sorted(reader.table.records) == sorted(names)
    for name, token in zip(names, issued, strict=True):
        assert isinstance(await reader.lease(name, token), tokens.Lease)


async def test_a_table_that_does_not_parse_is_reported_not_raised(
    api: Kr8sKube, cell_pki: Pki, tmp_path: Path
) -> None:
    await api.create(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET, "namespace": NAMESPACE},
            "type": "Opaque",
            "data": {KEY: base64.b64encode(b'{"c5": {"digest": 1}}').decode()},
        }
    )
    store = SecretTokenStore(api)
    with pytest.raises(TokenStoreUnavailable, match=r"does not parse: record 'c5'"):
        await store.load()
    csr, _key = openssl_csr(tmp_path, "c5")
    async with running_webhook(cell_pki, store=store) as hook:
        response = await hook.register("c5", "x" * 43, csr)
        assert response.status_code == 503, response.text
