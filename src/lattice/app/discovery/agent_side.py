"""Service discovery inside a ``lattice agent`` process: one object that wires the parts.

:class:`AgentDiscoveryWiring` builds, for a cluster with discovery enabled:

* a :class:`~lattice.app.discovery.stream.StreamParent` that sends over the agent's own stream
  (``send``: the agent's :class:`~lattice.adapters.agent_client.ParentLink`, created before both);
* the :class:`~lattice.app.discovery.coordinator.DiscoveryCoordinator` (cache, 5 s queries);
* the :class:`~lattice.app.discovery.service_controller.ServiceController`, reconciling this
  cluster's LatticeServices into the generated Istio / Cilium / Gateway API / external-dns objects;
* the :class:`~lattice.app.discovery.stream.AgentDiscovery` handler the runner drives
  (full sync on every connect, cache updates on every push, which re-plan the cluster).

:meth:`run` keeps the controller and the periodic reconciliation (full sync and stale refresh
every ``refresh_interval``) going until ``stop`` is set.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable

from attrs import frozen

from lattice.app.discovery.coordinator import (
    DEFAULT_QUERY_TIMEOUT,
    DiscoveryConfig,
    DiscoveryCoordinator,
)
from lattice.app.discovery.service_controller import ServiceController
from lattice.app.discovery.stream import AgentDiscovery, StreamParent, every
from lattice.domain.discovery.cache import DEFAULT_REFRESH_INTERVAL
from lattice.domain.discovery.messages import AgentDiscoveryMessage
from lattice.domain.discovery.naming import ClusterContext
from lattice.ports.clock import Clock
from lattice.ports.kube import KubeApi

Send = Callable[[AgentDiscoveryMessage], Awaitable[None]]


@frozen
class AgentDiscoverySettings:
    context: ClusterContext
    query_timeout: float = DEFAULT_QUERY_TIMEOUT
    refresh_interval: float = DEFAULT_REFRESH_INTERVAL
    service_resync: float = 60.0


class AgentDiscoveryWiring:
    def __init__(self, api: KubeApi, settings: AgentDiscoverySettings, clock: Clock, send: Send) -> None:
        self.settings = settings
        self.parent = StreamParent(send, query_timeout=settings.query_timeout)
        self.coordinator = DiscoveryCoordinator(
            DiscoveryConfig(
                settings.context,
                query_timeout=settings.query_timeout,
                refresh_interval=settings.refresh_interval,
            ),
            self.parent,
            clock,
            lambda: uuid.uuid4().hex,
        )
        self.controller = ServiceController(
            api, self.coordinator, settings.context, resync_s=settings.service_resync
        )
        self.handler = AgentDiscovery(
            self.coordinator,
            self.parent,
            self.controller.local_services,
            self.controller.on_cache_changes,
        )

    async def run(self, stop: asyncio.Event) -> None:
        await asyncio.gather(
            self.controller.run(stop),
            every(self.settings.refresh_interval, self.handler.periodic, stop),
        )
