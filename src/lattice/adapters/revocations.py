"""The cell's agent certificate revocations, kept in the ConfigMap
``lattice-system/lattice-agent-revocations`` as ``{cluster: RFC 3339 time}``.

Every certificate for a listed cluster issued up to that time is refused when its agent opens a
stream (:func:`lattice.domain.agent_identity.revocation_reason`); a stream already open is
closed at the next refresh. ``lattice revoke-agent CLUSTER`` adds an entry. An entry is added
with a JSON merge patch of one key, so concurrent revocations (two replicas, the CLI) do not
overwrite each other. The hub reads the cached copy, which the cell runtime refreshes every
few seconds (its ``agent-revocations`` task), closing the streams it revokes.

An entry that does not parse is logged with its key and ignored (the others still apply).
"""

from __future__ import annotations

import datetime as dt
import logging

from lattice.adapters.cell_ca import CERTIFICATE_BACKDATE
from lattice.domain import agent_identity
from lattice.ports import kube
from lattice.ports.kube import KubeApi, ResourceRef

log = logging.getLogger(__name__)

NAMESPACE = "lattice-system"
CONFIG_MAP = "lattice-agent-revocations"
_REF = ResourceRef("v1", "ConfigMap", CONFIG_MAP, NAMESPACE)


def issued_at(not_before: dt.datetime) -> dt.datetime:
    """When a certificate from a Lattice CA was issued: its notBefore is backdated."""
    return not_before + CERTIFICATE_BACKDATE


class ConfigMapRevocations:
    def __init__(self, api: KubeApi) -> None:
        self._api = api
        self.revoked: dict[str, dt.datetime] = {}
        self.errors: list[str] = []

    def reason(self, cluster: str, not_before: dt.datetime) -> str | None:
        """Why the hub refuses ``cluster``'s certificate valid from ``not_before``; None if not."""
        return agent_identity.revocation_reason(cluster, issued_at(not_before), self.revoked.get(cluster))

    async def refresh(self) -> None:
        """Read the ConfigMap; on a read error keep the last copy (and log it)."""
        try:
            obj = await self._api.get(_REF)
        except kube.NotFound:
            self.revoked, self.errors = {}, []
            return
        except kube.KubeError as exc:
            log.warning("cannot read %s/%s: %s (the last copy stays)", NAMESPACE, CONFIG_MAP, exc)
            return
        revoked, errors = agent_identity.parse_revocations(obj.get("data") or {})
        messages = [f"ConfigMap {NAMESPACE}/{CONFIG_MAP}: {error}" for error in errors]
        for message in set(messages) - set(self.errors):
            log.error("ignored a revocation: %s", message)
        self.revoked, self.errors = revoked, messages

    async def revoke(self, cluster: str, at: dt.datetime) -> None:
        """Refuse every certificate of ``cluster`` issued up to ``at`` (kube.KubeError on failure)."""
        errors = list(agent_identity.cluster_name_errors(cluster, ("cluster",)))
        if errors:
            raise ValueError("; ".join(str(e) for e in errors))
        value = at.astimezone(dt.UTC).isoformat()
        try:
            await self._api.merge_patch(_REF, {"data": {cluster: value}})
        except kube.NotFound:
            namespace = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}}
            await self._api.apply(namespace, "lattice-revocations")
            try:
                await self._api.create(
                    {
                        "apiVersion": "v1",
                        "kind": "ConfigMap",
                        "metadata": {"name": CONFIG_MAP, "namespace": NAMESPACE},
                        "data": {cluster: value},
                    }
                )
            except kube.Conflict:  # created meanwhile by another revoker
                await self._api.merge_patch(_REF, {"data": {cluster: value}})
        self.revoked[cluster] = at
