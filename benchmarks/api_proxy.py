"""The Kubernetes API proxy: latency through one and two levels against direct access, and list
throughput.

Three real control planes (root, mid, leaf), two cells (root's and mid's hub and proxy
endpoint, each with its own CA), two agents over mTLS (mid's to the root, relaying to mid's
cell; leaf's to mid), all on loopback in this one process, on the machine's shared cores. The
client is httpx in the same process: a bearer token through the proxy (TokenReview and
SubjectAccessReview on every request, twice for two levels), the admin client certificate
directly. Figures (one JSON line each):

* ``get_direct_p50/p99``, ``get_proxy1_p50/p99`` (GET one ConfigMap of mid through the root),
  ``get_proxy2_p50/p99`` (of leaf through root and mid), ``get_direct_leaf_p50/p99``, and the
  ratios ``get_proxy1_p50_ratio`` (proxy / direct) and ``get_proxy2_p50_ratio``;
* ``list_direct_objects_per_s``, ``list_proxy1_objects_per_s`` (one list of ``--objects``
  ConfigMaps of ``--object-bytes`` each) and their ratio.

Usage: python benchmarks/api_proxy.py [--requests N] [--objects N] [--object-bytes N]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import ssl
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from lattice.adapters import agent_client, agent_hub, agent_local, cell_ca, pki, tls
from lattice.adapters.api_proxy_agent import ApiProxyExecutor, HttpTarget
from lattice.adapters.controlplane import ControlPlane, free_port, start_control_planes
from lattice.app.api_proxy import CellApiProxy
from lattice.domain import agent
from lattice.domain.backoff import Backoff
from lattice.domain.heartbeat import HeartbeatPolicy
from lattice.testing import agents as agent_doubles
from lattice.testing.agents import InMemoryAgentStatusSink


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 3), "unit": unit}), flush=True)


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(p * len(ordered)))]


def _rbac(kind: str, name: str, **body: Any) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name}, **body}


def _bind(name: str, role: str, namespace: str, account: str) -> dict[str, Any]:
    return _rbac(
        "ClusterRoleBinding",
        name,
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        subjects=[{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
    )


PROXY_ROLE = _rbac(
    "ClusterRole",
    "bench-proxy",
    rules=[{"apiGroups": ["lattice.dev"], "resources": ["latticeclusters/proxy"], "verbs": ["*"]}],
)
IMPERSONATE_ROLE = _rbac(
    "ClusterRole",
    "bench-impersonate",
    rules=[
        {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]},
        {"apiGroups": ["authentication.k8s.io"], "resources": ["*"], "verbs": ["impersonate"]},
    ],
)


class Cell:
    def __init__(self, directory: Path, cp: ControlPlane, name: str) -> None:
        self.cp = cp
        self.ca = cell_ca.CellCertificateAuthority.generate(f"{name}-ca")
        self.directory = directory
        cert, key, bundle = self.ca.write_server_files(
            directory, ip_addresses=["127.0.0.1"], dns_names=["localhost"]
        )
        self.files = tls.TlsFiles(cert=cert, key=key, ca=bundle)
        self.hub = agent_hub.AgentHub(
            sink=InMemoryAgentStatusSink(), heartbeat_policy=HeartbeatPolicy(interval=2)
        )
        self.grpc = agent_hub.CellGrpcServer(
            self.hub, tls.server_context(self.files, require_client_cert=True)
        )
        port = free_port()
        self.proxy = CellApiProxy(
            self.hub,
            self.files,
            kubeconfig=cp.kubeconfig,
            url=f"https://127.0.0.1:{port}",
            bind_host="127.0.0.1",
            port=port,
        )

    def agent_files(self, cluster: str) -> tls.TlsFiles:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self.ca.sign_agent_csr(pki.csr_to_pem(pki.new_csr(key, cluster)).decode(), cluster)
        folder = self.directory / f"agent-{cluster}"
        folder.mkdir()
        (folder / "tls.crt").write_text(cert)
        pki.write_private_file(folder / "tls.key", pki.key_to_pem(key))
        return tls.TlsFiles(cert=folder / "tls.crt", key=folder / "tls.key", ca=self.files.ca)

    async def start(self) -> None:
        await self.grpc.start()
        await self.proxy.start()

    async def stop(self) -> None:
        await self.proxy.close()
        await self.grpc.stop()


@contextlib.asynccontextmanager
async def agent_of(cluster: str, cell: Cell, executor: ApiProxyExecutor) -> AsyncIterator[None]:
    runner = agent_client.AgentRunner(
        agent_client.AgentSettings(
            cluster_name=cluster,
            host="127.0.0.1",
            port=cell.grpc.port,
            heartbeat=HeartbeatPolicy(interval=2),
            backoff=Backoff(initial=0.05, maximum=0.5),
        ),
        tls.client_context(cell.agent_files(cluster)),
        applier=agent_doubles.RecordingManifestApplier(),
        importer=agent_doubles.RecordingPivotImporter(),
        probe=agent_local.StaticClusterProbe("v1", agent.ClusterHealth(ready_nodes=1, total_nodes=1)),
        proxy=executor,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop))
    try:
        async with asyncio.timeout(30):
            while cluster not in cell.hub.connected():  # noqa: ASYNC110 - polls the hub
                await asyncio.sleep(0.05)
        yield
    finally:
        stop.set()
        await task
        await executor.close()


def direct_client(cp: ControlPlane) -> httpx.AsyncClient:
    context = ssl.create_default_context(cafile=str(cp.ca_file))
    context.load_cert_chain(cp.pki_dir / "admin.crt", cp.pki_dir / "admin.key")
    return httpx.AsyncClient(base_url=cp.url, verify=context, timeout=120)


async def timed(calls: int, call: Callable[[], Awaitable[httpx.Response]]) -> list[float]:
    for _ in range(5):  # warm connections and caches
        (await call()).raise_for_status()
    out = []
    for _ in range(calls):
        started = time.perf_counter()
        (await call()).raise_for_status()
        out.append((time.perf_counter() - started) * 1000)
    return out


async def run(args: argparse.Namespace, work: Path) -> None:
    root_cp, mid_cp, leaf_cp = await asyncio.to_thread(
        start_control_planes, 3, base_dir=work / "cps", names=["root", "mid", "leaf"]
    )
    try:
        for cp in (root_cp, mid_cp, leaf_cp):
            cp.kubectl("create", "serviceaccount", "bench", "-n", "default")
        root_cp.apply([PROXY_ROLE, _bind("bench-proxy", "bench-proxy", "default", "bench")])
        mid_cp.kubectl("create", "namespace", "lattice-system")
        mid_cp.kubectl("create", "serviceaccount", "lattice-agent", "-n", "lattice-system")
        mid_cp.apply(
            [
                PROXY_ROLE,
                IMPERSONATE_ROLE,
                _bind("bench-proxy", "bench-proxy", "default", "bench"),
                _bind("bench-admin", "cluster-admin", "default", "bench"),
                _bind("agent-impersonate", "bench-impersonate", "lattice-system", "lattice-agent"),
            ]
        )
        leaf_cp.apply([_bind("bench-admin", "cluster-admin", "default", "bench")])
        payload = "x" * args.object_bytes
        for cp in (mid_cp, leaf_cp):
            cp.kubectl("create", "configmap", "one", "-n", "default", "--from-literal=k=v")
        mid_cp.apply(
            [
                {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": f"o-{i}", "namespace": "default"},
                    "data": {"v": payload},
                }
                for i in range(args.objects)
            ]
        )
        token = root_cp.kubectl("create", "token", "bench", "-n", "default", "--duration=2h").stdout.strip()
        agent_token = work / "agent.token"
        agent_token.write_text(
            mid_cp.kubectl("create", "token", "lattice-agent", "-n", "lattice-system", "--duration=2h").stdout
        )

        (work / "root-pki").mkdir()
        (work / "mid-pki").mkdir()
        root = Cell(work / "root-pki", root_cp, "root")
        mid = Cell(work / "mid-pki", mid_cp, "mid")
        await root.start()
        await mid.start()
        mid_exec = ApiProxyExecutor(
            "mid",
            await HttpTarget.from_kubeconfig(str(mid_cp.kubeconfig)),
            relay=HttpTarget(
                base_url=mid.proxy.url,
                verify=ssl.create_default_context(cafile=str(mid.files.ca)),
                token_file=agent_token,
            ),
        )
        leaf_exec = ApiProxyExecutor("leaf", await HttpTarget.from_kubeconfig(str(leaf_cp.kubeconfig)))
        try:
            async with agent_of("mid", root, mid_exec), agent_of("leaf", mid, leaf_exec):
                proxy = httpx.AsyncClient(
                    base_url=root.proxy.url,
                    verify=ssl.create_default_context(cafile=str(root.files.ca)),
                    headers={"Authorization": f"Bearer {token}"},
                    timeout=120,
                )
                async with proxy, direct_client(mid_cp) as direct_mid, direct_client(leaf_cp) as direct_leaf:
                    one = "/api/v1/namespaces/default/configmaps/one"
                    figures = {
                        "get_direct": await timed(args.requests, lambda: direct_mid.get(one)),
                        "get_proxy1": await timed(args.requests, lambda: proxy.get("/clusters/mid" + one)),
                        "get_direct_leaf": await timed(args.requests, lambda: direct_leaf.get(one)),
                        "get_proxy2": await timed(
                            args.requests, lambda: proxy.get("/clusters/mid/clusters/leaf" + one)
                        ),
                    }
                    for name, values in figures.items():
                        emit(f"{name}_p50", percentile(values, 0.5), "ms")
                        emit(f"{name}_p99", percentile(values, 0.99), "ms")
                    for level, base in (("proxy1", "get_direct"), ("proxy2", "get_direct_leaf")):
                        ratio = percentile(figures[f"get_{level}"], 0.5) / percentile(figures[base], 0.5)
                        emit(f"get_{level}_p50_ratio", ratio, "x direct")
                    listing = "/api/v1/namespaces/default/configmaps"
                    rates = {}
                    for name, call in (
                        ("direct", lambda: direct_mid.get(listing)),
                        ("proxy1", lambda: proxy.get("/clusters/mid" + listing)),
                    ):
                        seconds = min(await timed(args.list_rounds, call)) / 1000
                        rates[name] = args.objects / seconds
                        emit(f"list_{name}_objects_per_s", rates[name], "objects/s")
                    emit("list_proxy1_ratio", rates["proxy1"] / rates["direct"], "x direct")
        finally:
            await mid.stop()
            await root.stop()
    finally:
        for cp in (root_cp, mid_cp, leaf_cp):
            cp.stop()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--requests", type=int, default=300, help="GETs per path (default 300)")
    parser.add_argument("--objects", type=int, default=2000, help="ConfigMaps in the listed namespace")
    parser.add_argument("--object-bytes", type=int, default=1024, help="size of each ConfigMap's value")
    parser.add_argument("--list-rounds", type=int, default=5, help="lists per path (the fastest counts)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="bench-api-proxy-") as tmp:
        asyncio.run(run(args, Path(tmp)))


if __name__ == "__main__":
    main()
