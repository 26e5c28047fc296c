"""A TokenStore that survives restarts and replicas: the token table lives in a Kubernetes Secret.

Only SHA-256 digests and states are stored (never a token), in the Secret
``lattice-system/lattice-bootstrap-tokens``. The Secret, not the process, is the source of
truth. Every operation is a read-modify-write of it (the transition rules are
:mod:`lattice.domain.tokens`):

1. read the Secret and its ``resourceVersion``;
2. compute the transition on what was read;
3. write it back only if it changed, with that ``resourceVersion`` (a create when there is no
   Secret yet); a conflict (another replica, or a restarted cell, wrote meanwhile) starts again
   from 1, at most :data:`MAX_ATTEMPTS` times.

So a restarted cell, or a second replica, sees every token issued and every lease taken, and a
token is spent at most once across all of them. The process-local table
(:attr:`SecretTokenStore.table`) changes only after a write succeeded: a failed write raises
:class:`~lattice.ports.registration.TokenStoreUnavailable` (the webhook answers 503) and leaves
the stored token exactly as it was, still usable.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import datetime as dt
import json
from typing import Any

from lattice.adapters.token_store_memory import InMemoryTokenStore, R, Step
from lattice.domain import tokens
from lattice.ports import kube
from lattice.ports.kube import KubeApi, ResourceRef
from lattice.ports.registration import TokenStore, TokenStoreUnavailable

NAMESPACE = "lattice-system"
SECRET = "lattice-bootstrap-tokens"  # noqa: S105 - a Secret's name
KEY = "tokens.json"
FIELD_MANAGER = "lattice-token-store"
MAX_ATTEMPTS = 8
_REF = ResourceRef("v1", "Secret", SECRET, NAMESPACE)


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
    """The stored table; ValueError naming the record and field when it does not parse."""
    data: Any = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("the token table must be a JSON object keyed by cluster name")  # noqa: TRY004 - stored data, reported as a parse error
    records = {}
    for name, r in data.items():
        try:
            lease_expires = r.get("leaseExpiresAt")
            records[name] = tokens.TokenRecord(
                cluster_name=name,
                digest=str(r["digest"]),
                issued_at=dt.datetime.fromisoformat(r["issuedAt"]),
                expires_at=dt.datetime.fromisoformat(r["expiresAt"]),
                state=tokens.TokenState(r["state"]),
                lease_id=r.get("leaseId"),
                lease_expires_at=None if lease_expires is None else dt.datetime.fromisoformat(lease_expires),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"record {name!r}: {type(exc).__name__}: {exc}") from exc
    return tokens.TokenTable(records)


class SecretTokenStore(InMemoryTokenStore):
    def __init__(self, api: KubeApi, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._api = api
        self._lock = asyncio.Lock()
        self._namespace_ensured = False

    async def load(self) -> None:
        """Read the stored table (a cell's start: it shows what earlier runs issued)."""
        self._table, _ = await self._read()

    async def _read(self) -> tuple[tokens.TokenTable, str | None]:
        try:
            secret = await self._api.get(_REF)
        except kube.NotFound:
            return tokens.TokenTable(), None
        except kube.KubeError as exc:
            raise TokenStoreUnavailable(f"cannot read the token table: {exc}") from exc
        version = (secret.get("metadata") or {}).get("resourceVersion")
        encoded = (secret.get("data") or {}).get(KEY)
        if not encoded:
            return tokens.TokenTable(), version
        try:
            table = table_from_json(base64.b64decode(encoded, validate=True).decode())
        except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
            raise TokenStoreUnavailable(
                f"the token table in Secret {NAMESPACE}/{SECRET} key {KEY} does not parse: {exc}"
            ) from exc
        return table, version

    async def _write(self, table: tokens.TokenTable, version: str | None) -> None:
        metadata: dict[str, Any] = {"name": SECRET, "namespace": NAMESPACE}
        body: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata,
            "type": "Opaque",
            "data": {KEY: base64.b64encode(table_to_json(table).encode()).decode()},
        }
        if version is not None:
            metadata["resourceVersion"] = version
            await self._api.replace(body)
            return
        if not self._namespace_ensured:
            await self._api.apply(
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}, FIELD_MANAGER
            )
            self._namespace_ensured = True
        await self._api.create(body)

    async def _transition(self, step: Step[R]) -> R:
        async with self._lock:
            for _ in range(MAX_ATTEMPTS):
                table, version = await self._read()
                changed, result = step(table)
                if changed == table:
                    self._table = table
                    return result
                try:
                    await self._write(changed, version)
                except kube.Conflict:
                    continue  # someone else wrote since our read: decide again on theirs
                except kube.KubeError as exc:
                    raise TokenStoreUnavailable(f"cannot write the token table: {exc}") from exc
                self._table = changed
                return result
            raise TokenStoreUnavailable(
                f"the token table changed under every one of {MAX_ATTEMPTS} attempts to write it"
            )


_conforms: type[TokenStore] = SecretTokenStore
