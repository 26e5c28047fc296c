"""The Kubernetes API proxy end to end on loopback: a real cell API server (TokenReview,
SubjectAccessReview, RBAC), a real cell hub and proxy endpoint over TLS, a real agent over
mTLS performing requests against a real child API server, and the real kubectl as the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import attrs
import httpx
import pytest

from lattice.adapters import api_proxy_agent, tls
from lattice.adapters.api_proxy_http import api_proxy_app, proxy_server
from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_access_review import KubeAccessReviewer
from lattice.app import yamlio
from lattice.domain import agent, api_proxy
from lattice.testing.fixtures import ControlPlaneFactory
from tests.integration.agent.conftest import (
    Cell,
    Pki,
    RunningAgent,
    running_agent,
    running_cell,
    token_kubeconfig,
)

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(240)]

CHILD = "proxied"

PROXY_ROLE = {
    "apiVersion": "rbac.authorization.k8s.io/v1",
    "kind": "ClusterRole",
    "metadata": {"name": "lattice-proxy-test"},
    "rules": [{"apiGroups": ["lattice.dev"], "resources": ["latticeclusters/proxy"], "verbs": ["*"]}],
}


def _binding(kind: str, name: str, role: str, *users: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": {"name": name, **({"namespace": "default"} if kind == "RoleBinding" else {})},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"kind": "ServiceAccount", "name": u, "namespace": "default"} for u in users],
    }


def _role(name: str, verbs: list[str]) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": name},
        "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": verbs}],
    }


@attrs.define
class Proxy:
    cell: Cell
    cp: ControlPlane
    child: ControlPlane
    url: str
    ca: Path
    executor: api_proxy_agent.ApiProxyExecutor
    work: Path
    agent: RunningAgent
    reviewer: KubeAccessReviewer

    def token(self, user: str) -> str:
        return self.cp.kubectl("create", "token", user, "-n", "default", "--duration=1h").stdout.strip()

    def kubeconfig(self, user: str) -> Path:
        config = api_proxy.kubeconfig([CHILD], self.url, self.ca.read_text(), self.token(user))
        path = self.work / f"{user}.kubeconfig"
        path.write_text(yamlio.dump_all([config]))
        return path

    async def kubectl(self, user: str, *args: str, stdin: str | None = None) -> tuple[int, str, str]:
        process = await asyncio.create_subprocess_exec(
            str(self.cp.toolchain.kubectl),
            f"--kubeconfig={self.kubeconfig(user)}",
            f"--cache-dir={self.work / ('cache-' + user)}",
            *args,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 120)
        assert process.returncode is not None
        return process.returncode, out.decode(), err.decode()

    def client(self, user: str | None) -> httpx.AsyncClient:
        context = ssl.create_default_context(cafile=str(self.ca))
        headers = {"Authorization": f"Bearer {self.token(user)}"} if user else {}
        return httpx.AsyncClient(base_url=f"{self.url}/clusters/{CHILD}", verify=context, headers=headers)


@contextlib.asynccontextmanager
async def running_proxy(
    cell_pki: Pki,
    cp: ControlPlane,
    child: ControlPlane,
    work: Path,
    agent_limits: api_proxy.ProxyLimits | None = None,
    agent_kubeconfig: Path | None = None,
) -> AsyncIterator[Proxy]:
    reviewer = KubeAccessReviewer(await api_proxy_agent.HttpTarget.from_kubeconfig(str(cp.kubeconfig)))
    async with running_cell(cell_pki) as cell:
        server = proxy_server(
            api_proxy_app(relay=cell.hub.proxy, reviewer=reviewer),
            tls.server_context(cell_pki.server, require_client_cert=False, alpn=("http/1.1",)),
        )
        await server.start()
        executor = api_proxy_agent.ApiProxyExecutor(
            CHILD,
            await api_proxy_agent.HttpTarget.from_kubeconfig(str(agent_kubeconfig or child.kubeconfig)),
            limits=agent_limits,
        )
        try:
            async with running_agent(cell_pki.agent_files(CHILD), CHILD, cell.port, proxy=executor) as agent:
                await cell.wait_connected(CHILD)
                url = f"https://127.0.0.1:{server.port}"
                yield Proxy(cell, cp, child, url, cell_pki.server.ca, executor, work, agent, reviewer)
        finally:
            await executor.close()
            await reviewer.close()
            await server.stop()


@pytest.fixture
def child(control_plane_factory: ControlPlaneFactory) -> ControlPlane:
    return control_plane_factory.one()


@pytest.fixture
def users(cell_control_plane: ControlPlane, child: ControlPlane) -> None:
    cp = cell_control_plane
    for user in ("alice", "bob", "carol"):
        cp.kubectl("create", "serviceaccount", user, "-n", "default", check=False)
    cp.apply(
        [
            PROXY_ROLE,
            _binding(
                "ClusterRoleBinding", "lattice-proxy-test", PROXY_ROLE["metadata"]["name"], "alice", "carol"
            ),
        ]
    )
    # On the child, alice may read configmaps everywhere and edit them in default; carol nothing.
    child.apply(
        [
            _role("proxy-test-edit", ["get", "list", "watch", "create", "update", "patch", "delete"]),
            _role("proxy-test-view", ["get", "list", "watch"]),
            _binding("RoleBinding", "alice-edit", "proxy-test-edit", "alice"),
            _binding("ClusterRoleBinding", "alice-view", "proxy-test-view", "alice"),
        ]
    )


async def test_kubectl_through_the_proxy(
    cell_pki: Pki, cell_control_plane: ControlPlane, child: ControlPlane, users: None, tmp_path: Path
) -> None:
    async with running_proxy(cell_pki, cell_control_plane, child, tmp_path) as proxy:
        # discovery and get/list: the child's own objects (the cell has no such ConfigMap)
        child.kubectl("create", "configmap", "only-on-child", "-n", "default", "--from-literal=k=v")
        code, out, err = await proxy.kubectl("alice", "get", "configmaps", "-n", "default", "-o", "name")
        assert code == 0, err
        assert "configmap/only-on-child" in out
        code, out, err = await proxy.kubectl("alice", "api-resources", "--api-group=apps", "-o", "name")
        assert code == 0, err
        assert "deployments.apps" in out

        # create (apply), patch, delete, as alice, on the child
        manifest = json.dumps(
            {
                "apiVersion": "v1",
                "kind": "ConfigMap",
                "metadata": {"name": "applied", "namespace": "default"},
                "data": {"a": "1"},
            }
        )
        code, out, err = await proxy.kubectl("alice", "apply", "-f", "-", stdin=manifest)
        assert code == 0, err
        code, out, err = await proxy.kubectl(
            "alice",
            "apply",
            "--server-side",
            "--field-manager=t",
            "--force-conflicts",
            "-f",
            "-",
            stdin=manifest.replace('"1"', '"2"'),
        )
        assert code == 0, err
        assert (
            child.kubectl("get", "cm", "applied", "-n", "default", "-o", "jsonpath={.data.a}").stdout == "2"
        )
        code, _, err = await proxy.kubectl(
            "alice", "patch", "cm", "applied", "-n", "default", "-p", '{"data":{"b":"3"}}'
        )
        assert code == 0, err
        code, _, err = await proxy.kubectl("alice", "delete", "cm", "applied", "-n", "default")
        assert code == 0, err
        assert "applied" not in child.kubectl("get", "cm", "-n", "default", "-o", "name").stdout

        # bob may not use the proxy: the cell's 403
        code, _, err = await proxy.kubectl("bob", "get", "configmaps", "-n", "default")
        assert code != 0
        assert "Forbidden" in err

        # carol may use the proxy but has nothing on the child: the child's own 403 (impersonation)
        code, _, err = await proxy.kubectl("carol", "get", "configmaps", "-n", "default")
        assert code != 0
        assert 'User "system:serviceaccount:default:carol" cannot list resource "configmaps"' in err

        # alice may view but not edit outside default: the child's RBAC decides
        code, _, err = await proxy.kubectl("alice", "create", "configmap", "x", "-n", "kube-system")
        assert code != 0
        assert "forbidden" in err


async def test_status_codes_and_limits(
    cell_pki: Pki, cell_control_plane: ControlPlane, child: ControlPlane, users: None, tmp_path: Path
) -> None:
    limits = api_proxy.ProxyLimits(max_response_body=64 * 1024)  # the agent cuts big answers off
    async with running_proxy(cell_pki, cell_control_plane, child, tmp_path, limits) as proxy:
        async with proxy.client(None) as anonymous:
            answer = await anonymous.get("/api")
            assert answer.status_code == 401
            assert answer.json()["reason"] == "Unauthorized"
            assert proxy.executor.started == 0  # nothing was forwarded
        async with proxy.client("alice") as alice:
            wrong = await alice.get("/api", headers={"Authorization": "Bearer not-a-token"})
            assert wrong.status_code == 401
            huge = await alice.post(
                "/api/v1/namespaces/default/configmaps", content=b"x" * (3 * 1024 * 1024 + 1)
            )
            assert huge.status_code == 413
            assert (await alice.request("OPTIONS", "/api")).status_code == 405
            bad = await alice.get(f"{proxy.url}/clusters/UPPER/api")
            assert bad.status_code == 400
            absent = await alice.get(f"{proxy.url}/clusters/not-connected/api")
            assert absent.status_code == 503
            assert "not connected" in absent.json()["message"]
            version = await alice.get("/version")
            assert version.status_code == 200
            assert "gitVersion" in version.json()
            long_header = await alice.get("/api", headers={"Accept": "x" * 9000})
            assert long_header.status_code == 400
            assert "accept: longer than 8192" in long_header.json()["message"]
            upgrade = await alice.post(
                "/api/v1/namespaces/default/pods/p/exec",
                headers={"Connection": "Upgrade", "Upgrade": "SPDY/3.1"},
            )
            assert upgrade.status_code == 501
            assert "kubectl exec" in upgrade.json()["message"]
            groups_only = await alice.get("/api", headers={"Impersonate-Group": "g"})
            assert groups_only.status_code == 400

            async def chunked() -> AsyncIterator[bytes]:
                for _ in range(4):
                    yield b"x" * (1024 * 1024)

            streamed = await alice.post("/api/v1/namespaces/default/configmaps", content=chunked())
            assert streamed.status_code == 413  # no Content-Length: counted as it arrives
            with pytest.raises(httpx.RemoteProtocolError):
                await alice.get("/openapi/v2")  # over the agent's limit: cut off, not truncated silently
            reviews = proxy.reviewer.reviews
            assert (await alice.get("/version")).status_code == 200
            assert proxy.reviewer.reviews == reviews  # the same token and question: answered from the cache
        async with proxy.client("bob") as bob:
            refused = await bob.get("/api")
            assert refused.status_code == 403
            assert "latticeclusters/proxy" in refused.json()["message"]
            assert "on this cell" in refused.json()["message"]
        async with proxy.client("alice") as alice:
            # alice may not impersonate anyone on the cell
            other = await alice.get("/api", headers={"Impersonate-User": "admin"})
            assert other.status_code == 403
            assert "cannot impersonate" in other.json()["message"]


async def test_watch_streams_and_is_cancelled_when_the_client_goes(
    cell_pki: Pki, cell_control_plane: ControlPlane, child: ControlPlane, users: None, tmp_path: Path
) -> None:
    async with (
        running_proxy(cell_pki, cell_control_plane, child, tmp_path) as proxy,
        proxy.client("alice") as alice,
    ):
        async with alice.stream(
            "GET", "/api/v1/namespaces/default/configmaps", params={"watch": "1"}, timeout=None
        ) as watch:
            assert watch.status_code == 200
            lines = watch.aiter_lines()
            child.kubectl("create", "configmap", "watched", "-n", "default")
            seen: list[str] = []
            async with asyncio.timeout(60):
                async for line in lines:
                    event = json.loads(line)
                    seen.append(event["object"]["metadata"]["name"])
                    if "watched" in seen:
                        break
            assert proxy.executor.open_requests == 1
        # the client went away: the agent's request ends (its connection to the API server closes)
        async with asyncio.timeout(30):
            while proxy.executor.open_requests:  # noqa: ASYNC110 - polls the agent's counter
                await asyncio.sleep(0.05)
        assert proxy.executor.cancelled >= 1
        assert not proxy.cell.hub.proxy.open_count(CHILD)


async def test_heartbeats_continue_while_a_large_list_streams(
    cell_pki: Pki, cell_control_plane: ControlPlane, child: ControlPlane, users: None, tmp_path: Path
) -> None:
    payload = "v" * 200_000
    items = [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": f"big-{i}", "namespace": "default"},
            "data": {"v": payload},
        }
        for i in range(40)
    ]
    child.apply(items)
    async with (
        running_proxy(cell_pki, cell_control_plane, child, tmp_path) as proxy,
        proxy.client("alice") as alice,
        running_agent(cell_pki.agent_files("other"), "other", proxy.cell.port) as other,
        alice.stream("GET", "/api/v1/namespaces/default/configmaps", params={"watch": "1"}) as watch,
    ):
        await proxy.cell.wait_connected("other")
        assert watch.status_code == 200
        beats = len(proxy.agent.rtts)
        pivot = agent.PivotManifests(
            "other", "capi-other", "p-1", (agent.MoveFile("Cluster_capi-other_other.yaml", b"{}"),)
        )
        commands_done = False
        async with alice.stream("GET", "/api/v1/namespaces/default/configmaps") as listing:
            assert listing.status_code == 200
            received = 0
            async for chunk in listing.aiter_bytes():
                received += len(chunk)
                if received > 1024 * 1024 and not commands_done:
                    # while the list and the watch hold the child's stream: a command on that
                    # stream, and a pivot of another child, complete
                    status = await proxy.cell.hub.send_command(CHILD, agent.StatusQuery(), reply_within=30)
                    assert isinstance(status, agent.StatusReport)
                    result = await proxy.cell.hub.send_command("other", pivot, reply_within=30)
                    assert isinstance(result, agent.PivotResult)
                    assert result.success
                    commands_done = True
                await asyncio.sleep(0.05)  # a slow client: the window holds the agent back
        assert commands_done
        assert received > 40 * 200_000
        assert len(proxy.agent.rtts) > beats  # heartbeats were acknowledged meanwhile
        assert [p.pivot_id for p in other.importer.imported] == ["p-1"]
        assert proxy.cell.hub.proxy.violations == 0
        assert proxy.cell.hub.proxy.open_count(CHILD) == 1  # the watch is still open


async def test_the_cell_answers_503_when_it_cannot_review(
    cell_pki: Pki, cell_control_plane: ControlPlane, users: None
) -> None:
    token = cell_control_plane.kubectl("create", "token", "alice", "-n", "default").stdout.strip()
    context = ssl.create_default_context(cafile=str(cell_control_plane.ca_file))
    unreachable = api_proxy_agent.HttpTarget(base_url=f"https://127.0.0.1:{free_port()}", verify=context)
    # alice's own token may not create reviews: the API server refuses the cell's review
    unprivileged = api_proxy_agent.HttpTarget(base_url=cell_control_plane.url, verify=context, token=token)
    for target, reason in ((unreachable, "ConnectError"), (unprivileged, "HTTP 403")):
        reviewer = KubeAccessReviewer(target)
        async with running_cell(cell_pki) as cell:
            server = proxy_server(
                api_proxy_app(relay=cell.hub.proxy, reviewer=reviewer),
                tls.server_context(cell_pki.server, require_client_cert=False, alpn=("http/1.1",)),
            )
            await server.start()
            try:
                async with httpx.AsyncClient(
                    verify=ssl.create_default_context(cafile=str(cell_pki.server.ca))
                ) as client:
                    answer = await client.get(
                        f"https://127.0.0.1:{server.port}/clusters/{CHILD}/api",
                        headers={"Authorization": f"Bearer {token}"},
                    )
                assert answer.status_code == 503
                assert reason in answer.json()["message"]
            finally:
                await server.stop()
                await reviewer.close()


async def test_the_agent_reads_its_rotated_token_again(
    cell_pki: Pki, cell_control_plane: ControlPlane, child: ControlPlane, users: None, tmp_path: Path
) -> None:
    """An agent in a pod authenticates with its ServiceAccount token, which is rotated: a 401 for
    its own credentials makes it read its kubeconfig again and retry, once."""
    child.kubectl("create", "serviceaccount", "lattice-agent", "-n", "default")
    child.apply([_binding("ClusterRoleBinding", "proxy-test-agent", "cluster-admin", "lattice-agent")])
    token = child.kubectl("create", "token", "lattice-agent", "-n", "default").stdout.strip()
    kubeconfig = _token_kubeconfig(tmp_path / "agent.kubeconfig", child, token)
    async with (
        running_proxy(cell_pki, cell_control_plane, child, tmp_path, agent_kubeconfig=kubeconfig) as proxy,
        proxy.client("alice") as alice,
    ):
        assert (await alice.get("/api/v1/namespaces/default/configmaps")).status_code == 200
        proxy.executor.target.token = "a-token-that-expired"
        answer = await alice.get("/api/v1/namespaces/default/configmaps")
        assert answer.status_code == 200, answer.text
        assert proxy.executor.target.token == token

    # the cell's reviews too: its own token rotated, it reads its kubeconfig again
    cp = cell_control_plane
    cp.kubectl("create", "serviceaccount", "lattice-cell", "-n", "default", check=False)
    cp.apply([_binding("ClusterRoleBinding", "proxy-test-cell", "cluster-admin", "lattice-cell")])
    cell_token = cp.kubectl("create", "token", "lattice-cell", "-n", "default").stdout.strip()
    target = await api_proxy_agent.HttpTarget.from_kubeconfig(
        str(_token_kubeconfig(tmp_path / "cell.kubeconfig", cp, cell_token))
    )
    reviewer = KubeAccessReviewer(target)
    try:
        target.token = "a-token-that-expired"
        alice = await reviewer.authenticate(
            cp.kubectl("create", "token", "alice", "-n", "default").stdout.strip()
        )
        assert alice is not None
        assert alice.username == "system:serviceaccount:default:alice"
    finally:
        await reviewer.close()


def _token_kubeconfig(path: Path, cp: ControlPlane, token: str) -> Path:
    path.write_text(json.dumps(token_kubeconfig(cp, token)))
    return path
