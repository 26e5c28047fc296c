"""Leader election loop over a Lease (decisions in :mod:`lattice.domain.leader`)."""

from __future__ import annotations

import asyncio
import logging

from attrs import frozen

from lattice.domain import leader
from lattice.ports import kube
from lattice.ports.clock import Clock
from lattice.ports.kube import KubeApi, Obj, ResourceRef

log = logging.getLogger("lattice.leader")
LEASE_API = "coordination.k8s.io/v1"


@frozen
class LeaseConfig:
    namespace: str = "lattice-system"
    name: str = "lattice-operator"
    lease_duration_s: int = 15
    renew_deadline_s: float = 10.0
    retry_period_s: float = 2.0


class LeaderElector:
    def __init__(self, api: KubeApi, identity: str, clock: Clock, config: LeaseConfig) -> None:
        self.api = api
        self.identity = identity
        self.clock = clock
        self.config = config
        self.is_leader = asyncio.Event()
        self.lost = asyncio.Event()
        self._last_renew = 0.0
        self._ref = ResourceRef(LEASE_API, "Lease", config.name, config.namespace)

    async def run(self) -> None:
        """Campaign, then renew; sets ``lost`` (and returns) if leadership cannot be kept."""
        while True:
            try:
                await self._try_once()
            except kube.Conflict:
                log.info("lease changed under us; re-reading", extra={"identity": self.identity})
            except kube.KubeError as exc:
                log.warning("lease update failed", extra={"identity": self.identity, "error": str(exc)})
            if self.is_leader.is_set():
                silent = self.clock.monotonic() - self._last_renew
                if silent > self.config.renew_deadline_s:
                    log.error("leadership lost: lease not renewed in time", extra={"identity": self.identity})
                    self.is_leader.clear()
                    self.lost.set()
                    return
            await asyncio.sleep(self.config.retry_period_s)

    async def _try_once(self) -> None:
        try:
            lease: Obj | None = await self.api.get(self._ref)
        except kube.NotFound:
            lease = None
        decision = leader.decide(
            None if lease is None else lease.get("spec", {}),
            self.identity,
            self.clock.now(),
            self.config.lease_duration_s,
        )
        if isinstance(decision, leader.Wait):
            if self.is_leader.is_set():
                # Someone else holds a valid lease: we must not act as leader any more.
                log.error(
                    "leadership lost: the lease is held by another",
                    extra={"identity": self.identity, "holder": decision.holder},
                )
                self.is_leader.clear()
                self.lost.set()
            return
        if decision.create or lease is None:
            await self.api.create(
                {
                    "apiVersion": LEASE_API,
                    "kind": "Lease",
                    "metadata": {"name": self.config.name, "namespace": self.config.namespace},
                    "spec": decision.spec,
                }
            )
        else:
            await self.api.replace({**lease, "spec": decision.spec})
        self._last_renew = self.clock.monotonic()
        if decision.takeover or not self.is_leader.is_set():
            log.info("became leader", extra={"identity": self.identity, "lease": self.config.name})
        self.is_leader.set()

    async def release(self) -> None:
        if not self.is_leader.is_set():
            return
        try:
            lease = await self.api.get(self._ref)
            if lease.get("spec", {}).get("holderIdentity") == self.identity:
                await self.api.replace({**lease, "spec": leader.released(lease["spec"], self.clock.now())})
                log.info("released leadership", extra={"identity": self.identity})
        except kube.KubeError as exc:
            log.warning("could not release the lease", extra={"error": str(exc)})
        self.is_leader.clear()
