"""The cell's agent certificate revocations, kept in the ConfigMap
``lattice-system/lattice-agent-revocations`` as ``{cluster: RFC 3339 time}``.

Every certificate for a listed cluster issued up to that time is refused when its agent opens a
stream (:func:`lattice.domain.agent_identity.revocation_reason`); a stream already open is
closed at the next refresh. ``lattice revoke-agent CLUSTER`` adds an entry. An entry is added
with a JSON merge patch of one key, so concurrent revocations (two replicas, the CLI) do not
overwrite each other. The hub reads the cached copy, which the cell runtime refreshes every
few seconds (its ``agent-revocations`` task), closing the streams it revokes.

An entry that does not parse is logged with its key and ignored (the others still apply).

An entry goes once no certificate it refuses can still be valid: those were issued up to the
revocation and live ``agent_cert_ttl`` (30 days) at most, so :meth:`ConfigMapRevocations.prune`
removes entries older than that plus a day's grace (for clocks that disagree). Without it the
ConfigMap, limited to 1 MiB by the API server, would only grow with every deleted cluster.
"""

from __future__ import annotations

import datetime as dt
import logging

from lattice.adapters.cell_ca import CERTIFICATE_BACKDATE, DEFAULT_AGENT_CERT_TTL
from lattice.domain import agent_identity
from lattice.ports import kube
from lattice.ports.kube import KubeApi, ResourceRef

log = logging.getLogger(__name__)

NAMESPACE = "lattice-system"
CONFIG_MAP = "lattice-agent-revocations"
_REF = ResourceRef("v1", "ConfigMap", CONFIG_MAP, NAMESPACE)
PRUNE_AFTER = DEFAULT_AGENT_CERT_TTL + dt.timedelta(days=1)
"""How old a revocation is when no certificate it refuses can still be valid (with a day's grace)."""


def issued_at(not_before: dt.datetime) -> dt.datetime:
    """When a certificate from a Lattice CA was issued: its notBefore is backdated."""
    return not_before + CERTIFICATE_BACKDATE


class ConfigMapRevocations:
    def __init__(self, api: KubeApi, *, prune_after: dt.timedelta = PRUNE_AFTER) -> None:
        self._api = api
        self._prune_after = prune_after
        self._read: kube.Obj | None = None
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
            self.revoked, self.errors, self._read = {}, [], None
            return
        except kube.KubeError as exc:
            log.warning("cannot read %s/%s: %s (the last copy stays)", NAMESPACE, CONFIG_MAP, exc)
            return
        self._read = obj
        revoked, errors = agent_identity.parse_revocations(obj.get("data") or {})
        messages = [f"ConfigMap {NAMESPACE}/{CONFIG_MAP}: {error}" for error in errors]
        for message in set(messages) - set(self.errors):
            log.error("ignored a revocation: %s", message)
        self.revoked, self.errors = revoked, messages

    async def prune(self, now: dt.datetime) -> tuple[str, ...]:
        """Remove the entries, as last read, that no longer refuse a certificate that can be valid
        (:func:`lattice.domain.agent_identity.prunable_revocations`); returns their clusters.

        The write carries the resourceVersion read, so a revocation written meanwhile (the CLI,
        another replica, the same cluster revoked again) is never lost: the API server refuses
        the write (Conflict), and the next refresh tries again."""
        stale = agent_identity.prunable_revocations(self.revoked, now, self._prune_after)
        if not stale or self._read is None:
            return ()
        data = {k: v for k, v in (self._read.get("data") or {}).items() if k not in stale}
        try:
            self._read = await self._api.replace({**self._read, "data": data})
        except kube.KubeError as exc:  # Conflict included: read again, prune at the next refresh
            log.info("revocations not pruned now: %s", exc)
            return ()
        for cluster in stale:
            self.revoked.pop(cluster, None)
        log.info("pruned expired revocations", extra={"clusters": list(stale)})
        return stale

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
