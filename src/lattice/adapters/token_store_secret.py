"""A TokenStore that survives restarts: the token table lives in a Kubernetes Secret.

Only SHA-256 digests and states are stored (never a token), in the Secret
``lattice-system/lattice-bootstrap-tokens``. The in-process table stays the source of truth
between writes (see :class:`InMemoryTokenStore` for the transition rules); every transition is
written back, in order, before the call returns, so a restarted cell sees every token it issued.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
from typing import Any

from lattice.adapters.token_store_memory import InMemoryTokenStore
from lattice.domain import tokens
from lattice.ports import kube
from lattice.ports.kube import KubeApi, ResourceRef
from lattice.ports.registration import TokenStore, TokenStoreUnavailable

NAMESPACE = "lattice-system"
SECRET = "lattice-bootstrap-tokens"  # noqa: S105 - a Secret's name
KEY = "tokens.json"
FIELD_MANAGER = "lattice-token-store"


def table_to_json(table: tokens.TokenTable) -> str:
    def iso(value: dt.datetime | None) -> str | None:
        return None if value is None else value.isoformat()

    return json.dumps(
        {
            name: {
                "digest": r.digest,
                "issuedAt": iso(r.issued_at),
                "expiresAt": iso(r.expires_at),
                "state": r.state.value,
                "leaseId": r.lease_id,
                "leaseExpiresAt": iso(r.lease_expires_at),
            }
            for name, r in sorted(table.records.items())
        },
        sort_keys=True,
    )


def table_from_json(text: str) -> tokens.TokenTable:
    data: dict[str, Any] = json.loads(text)
    records = {}
    for name, r in data.items():
        lease_expires = r.get("leaseExpiresAt")
        records[name] = tokens.TokenRecord(
            cluster_name=name,
            digest=r["digest"],
            issued_at=dt.datetime.fromisoformat(r["issuedAt"]),
            expires_at=dt.datetime.fromisoformat(r["expiresAt"]),
            state=tokens.TokenState(r["state"]),
            lease_id=r.get("leaseId"),
            lease_expires_at=None if lease_expires is None else dt.datetime.fromisoformat(lease_expires),
        )
    return tokens.TokenTable(records)


class SecretTokenStore(InMemoryTokenStore):
    def __init__(self, api: KubeApi, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._api = api
        self._write_lock = asyncio.Lock()

    async def load(self) -> None:
        try:
            secret = await self._api.get(ResourceRef("v1", "Secret", SECRET, NAMESPACE))
        except kube.NotFound:
            return
        except kube.KubeError as exc:
            raise TokenStoreUnavailable(f"cannot read the token table: {exc}") from exc
        encoded = (secret.get("data") or {}).get(KEY)
        if encoded:
            self._table = table_from_json(base64.b64decode(encoded).decode())

    async def _persist(self) -> None:
        async with self._write_lock:
            body = {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": SECRET, "namespace": NAMESPACE},
                "type": "Opaque",
                "data": {KEY: base64.b64encode(table_to_json(self._table).encode()).decode()},
            }
            try:
                await self._api.apply(
                    {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}, FIELD_MANAGER
                )
                await self._api.apply(body, FIELD_MANAGER)
            except kube.KubeError as exc:
                raise TokenStoreUnavailable(f"cannot write the token table: {exc}") from exc

    async def issue(self, cluster_name: str, ttl: dt.timedelta = tokens.DEFAULT_TOKEN_TTL) -> str:
        token = await super().issue(cluster_name, ttl)
        await self._persist()
        return token

    async def lease(self, cluster_name: str, presented: str) -> tokens.Lease | tokens.Rejection:
        result = await super().lease(cluster_name, presented)
        if isinstance(result, tokens.Lease):
            await self._persist()
        return result

    async def commit(self, lease: tokens.Lease) -> tokens.CommitResult:
        result = await super().commit(lease)
        await self._persist()
        return result

    async def release(self, lease: tokens.Lease) -> None:
        await super().release(lease)
        await self._persist()

    async def revoke(self, cluster_name: str) -> None:
        await super().revoke(cluster_name)
        await self._persist()


_conforms: type[TokenStore] = SecretTokenStore
