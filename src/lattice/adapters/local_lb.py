"""``lattice local-lb``: the load-balancer stand-in of a local cluster (an honest stand-in).

The stand-in kubelet runs it for Cilium's operator pod, with that pod's ServiceAccount token, so
it acts with exactly the RBAC Cilium's chart gives cilium-operator. Every ``interval`` seconds
it reads the cluster's ``CiliumLoadBalancerIPPool``\\ s, LoadBalancer Services and pods,
decides in :mod:`lattice.domain.local_lb` (LB-IPAM's allocation rules), writes each Service's
``status.loadBalancer`` as Cilium's LB-IPAM would, and listens on every loopback address it
assigned, piping each TCP connection to a Ready pod of the Service (what Cilium's L2
announcements and kube-proxy replacement do on a real network). ``/healthz`` on
``--health-addr`` answers while it runs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from lattice.domain import local_lb
from lattice.ports import kube
from lattice.ports.kube import KubeApi

log = logging.getLogger("lattice.local_lb")

FIELD_MANAGER = "lattice-local-lb"
POOL_API = "cilium.io/v2"
COPY_CHUNK = 64 * 1024


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while chunk := await reader.read(COPY_CHUNK):
            writer.write(chunk)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        with contextlib.suppress(OSError, RuntimeError):
            writer.close()


class Forwarder:
    """One listening socket on ``forward.address:forward.port``, piping to its target."""

    def __init__(self, forward: local_lb.Forward) -> None:
        self.forward = forward
        self.server: asyncio.Server | None = None

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._handle, self.forward.address, self.forward.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            target_reader, target_writer = await asyncio.open_connection(
                self.forward.target_host, self.forward.target_port
            )
        except OSError as exc:
            log.info("no endpoint answers", extra={"target": str(self.forward), "error": str(exc)})
            writer.close()
            return
        await asyncio.gather(_pipe(reader, target_writer), _pipe(target_reader, writer))

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.server.wait_closed(), 2.0)


class LocalLoadBalancer:
    def __init__(self, api: KubeApi) -> None:
        self.api = api
        self.forwarders: dict[local_lb.Forward, Forwarder] = {}

    async def _list(self, api_version: str, kind: str) -> list[kube.Obj]:
        try:
            return list((await self.api.list(api_version, kind)).items)
        except kube.NotFound:  # Cilium's CRDs not installed yet
            return []

    async def sync(self) -> None:
        pools = await self._list(POOL_API, "CiliumLoadBalancerIPPool")
        services = await self._list("v1", "Service")
        pods = await self._list("v1", "Pod")
        assigned = local_lb.allocate(services, pools)
        for service in local_lb.load_balancers(services):
            meta = service["metadata"]
            patch = local_lb.status_patch(service, assigned.get((meta["namespace"], meta["name"])))
            if patch is None:
                continue
            await self.api.apply_status(patch, FIELD_MANAGER)
            log.info(
                "load balancer address",
                extra={
                    "service": f"{meta['namespace']}/{meta['name']}",
                    "address": assigned.get((meta["namespace"], meta["name"])) or "<pending>",
                },
            )
        await self._forward(local_lb.forwards(services, assigned, pods))

    async def _forward(self, wanted: set[local_lb.Forward]) -> None:
        for gone in [f for f in self.forwarders if f not in wanted]:
            await self.forwarders.pop(gone).stop()
            log.info("stopped forwarding", extra={"forward": str(gone)})
        for new in sorted(wanted - set(self.forwarders)):
            forwarder = Forwarder(new)
            try:
                await forwarder.start()
            except OSError as exc:  # the address:port is taken: try again next round
                log.warning("cannot listen", extra={"forward": str(new), "error": str(exc)})
                continue
            self.forwarders[new] = forwarder
            log.info("forwarding", extra={"forward": str(new)})

    async def run(self, stop: asyncio.Event, interval: float) -> None:
        while not stop.is_set():
            try:
                await self.sync()
            except (kube.KubeError, OSError) as exc:
                log.info("sync failed; retrying", extra={"error": str(exc)})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), interval)
        await self._forward(set())
