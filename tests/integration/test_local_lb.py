"""The load-balancer stand-in against a real API server and real TCP: LB-IPAM's allocation
written to a real Service's status, the address served on loopback and piped to the endpoint
the Ready pod the Service selects, and a released address no longer served."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from lattice.adapters.addons_bundle import locate_addons
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.local_lb import LocalLoadBalancer
from lattice.domain import addons, local_lb
from lattice.ports.kube import ResourceRef
from lattice.testing.fixtures import ControlPlaneFactory

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(120)]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _echo_server() -> tuple[asyncio.Server, int]:
    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        data = await reader.read(100)
        writer.write(b"echo:" + data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def _ask(host: str, port: int) -> bytes:
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"hello")
    await writer.drain()
    answer = await reader.read(100)
    writer.close()
    return answer


def _service(name: str, port: int, target: int, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name, "namespace": "default", "annotations": annotations},
        "spec": {
            "type": "LoadBalancer",
            "selector": {"app": name},
            "ports": [{"name": "tcp", "port": port, "targetPort": "tcp"}],
        },
    }


async def test_addresses_from_the_pool_are_written_and_served(
    control_plane_factory: ControlPlaneFactory,
) -> None:
    cp = control_plane_factory.one()
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    crd = [
        c
        for c in locate_addons().cilium_crds()
        if c["metadata"]["name"] == "ciliumloadbalancerippools.cilium.io"
    ]
    cp.apply(crd)
    server, target = await _echo_server()
    balancer = LocalLoadBalancer(api)
    try:
        await balancer.sync()  # no pool yet: nothing assigned, nothing served
        assert balancer.forwarders == {}
        cp.apply([addons.lb_ip_pool("t", "127.79.0.0/30")])
        front = 40000 + target % 20000
        await api.apply(_service("asks", front, target, **{local_lb.IPS_ANNOTATION: "127.79.0.2"}), "test")
        await api.apply(_service("any", front, target), "test")
        # The pod the stand-in kubelet would run and report: Ready on the host's loopback address.
        cp.apply([{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "default"}}])
        backend = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "backend", "namespace": "default", "labels": {"app": "asks"}},
            "spec": {
                "nodeName": "n1",
                "containers": [
                    {"name": "c", "image": "x", "ports": [{"name": "tcp", "containerPort": target}]}
                ],
            },
        }
        await api.create(backend)
        await api.apply_status(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {"name": "backend", "namespace": "default"},
                "status": {"podIP": "127.0.0.1", "conditions": [{"type": "Ready", "status": "True"}]},
            },
            "test",
        )
        await balancer.sync()
        asks = await api.get(ResourceRef("v1", "Service", "asks", "default"))
        assert asks["status"]["loadBalancer"]["ingress"] == [{"ip": "127.79.0.2", "ipMode": "VIP"}]
        other = await api.get(ResourceRef("v1", "Service", "any", "default"))
        assert other["status"]["loadBalancer"]["ingress"] == [{"ip": "127.79.0.1", "ipMode": "VIP"}]
        assert addons.service_address(asks) == "127.79.0.2"
        assert await _ask("127.79.0.2", front) == b"echo:hello"  # through the stand-in
        assert list(balancer.forwarders) == [local_lb.Forward("127.79.0.2", front, "127.0.0.1", target)]

        await balancer.sync()  # nothing changed: nothing written, the same listener
        await api.delete(ResourceRef("cilium.io/v2", "CiliumLoadBalancerIPPool", "default"))
        await balancer.sync()  # the pool is gone: the addresses are released
        asks = await api.get(ResourceRef("v1", "Service", "asks", "default"))
        assert asks["status"]["loadBalancer"] == {}
        assert balancer.forwarders == {}
        with pytest.raises(ConnectionRefusedError):
            await _ask("127.79.0.2", front)
    finally:
        await balancer._forward(set())
        server.close()
