"""A grandchild's API through two proxies: root cell -> child's agent -> the child's own cell
-> grandchild's agent -> the grandchild's API server, all real (three API servers, two cells,
two agents over mTLS), with the kubeconfig ``lattice kubeconfig mid/leaf --via`` prints.

The child's agent relays with its own ServiceAccount token and the caller's identity in
``Impersonate-*`` headers; the child's cell lets it act as the caller only because its RBAC
grants ``impersonate``, and then asks its own RBAC whether the caller may reach the grandchild.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from lattice.adapters import api_proxy_agent
from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app import yamlio
from lattice.app.api_proxy import CellApiProxy, agent_executor
from lattice.testing.fixtures import ControlPlaneFactory
from tests.integration.agent.conftest import Pki, running_agent, running_cell, token_kubeconfig

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(300)]


def _rbac(kind: str, name: str, **body: Any) -> dict[str, Any]:
    return {"apiVersion": "rbac.authorization.k8s.io/v1", "kind": kind, "metadata": {"name": name}, **body}


def _bind(name: str, role: str, namespace: str, *accounts: str) -> dict[str, Any]:
    return _rbac(
        "ClusterRoleBinding",
        name,
        roleRef={"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        subjects=[{"kind": "ServiceAccount", "name": a, "namespace": namespace} for a in accounts],
    )


PROXY = _rbac(
    "ClusterRole",
    "relay-test-proxy",
    rules=[{"apiGroups": ["lattice.dev"], "resources": ["latticeclusters/proxy"], "verbs": ["*"]}],
)
IMPERSONATE = _rbac(
    "ClusterRole",
    "relay-test-impersonate",
    rules=[
        {"apiGroups": [""], "resources": ["users", "groups", "serviceaccounts"], "verbs": ["impersonate"]},
        {
            "apiGroups": ["authentication.k8s.io"],
            "resources": ["*"],
            "verbs": ["impersonate"],
        },
    ],
)
CONFIGMAPS = _rbac(
    "ClusterRole",
    "relay-test-configmaps",
    rules=[{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["*"]}],
)


ENDPOINT_READER = _rbac(
    "ClusterRole",
    "relay-test-endpoint",
    rules=[
        {
            "apiGroups": [""],
            "resources": ["configmaps"],
            "resourceNames": ["lattice-api-proxy"],
            "verbs": ["get"],
        }
    ],
)


async def _run(*argv: str, stdin: str | None = None) -> tuple[int, str, str]:
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(process.communicate(stdin.encode() if stdin else None), 120)
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


@contextlib.asynccontextmanager
async def cell_proxy(pki: Pki, cp: ControlPlane, publish: bool) -> AsyncIterator[tuple[Any, CellApiProxy]]:
    async with running_cell(pki) as cell:
        port = free_port()
        proxy = CellApiProxy(
            cell.hub,
            pki.server,
            kubeconfig=cp.kubeconfig,
            url=f"https://127.0.0.1:{port}",
            bind_host="127.0.0.1",
            port=port,
        )
        await proxy.start(await Kr8sKube.connect(str(cp.kubeconfig)) if publish else None)
        try:
            yield cell, proxy
        finally:
            await proxy.close()


async def test_a_grandchild_through_two_cells(
    cell_control_plane: ControlPlane,
    control_plane_factory: ControlPlaneFactory,
    tmp_path: Path,
    cell_pki: Pki,
) -> None:
    root = cell_control_plane
    mid, leaf = control_plane_factory(2, names=["mid", "leaf"])
    mid_pki = Pki.create(tmp_path / "mid-pki", "mid-cell-ca")

    root.kubectl("create", "namespace", "lattice-system", check=False)
    for user in ("alice", "carol"):
        root.kubectl("create", "serviceaccount", user, "-n", "default", check=False)
    root.apply(
        [
            PROXY,
            _bind("relay-test-proxy", "relay-test-proxy", "default", "alice", "carol"),
            ENDPOINT_READER,  # lattice kubeconfig reads where the cell's proxy listens
            _bind("relay-test-endpoint", "relay-test-endpoint", "default", "alice", "carol"),
        ]
    )
    mid.kubectl("create", "namespace", "lattice-system")
    mid.kubectl("create", "serviceaccount", "lattice-agent", "-n", "lattice-system")
    mid.apply(
        [
            PROXY,
            IMPERSONATE,
            _bind("relay-test-proxy", "relay-test-proxy", "default", "alice"),  # not carol
            _bind("relay-test-impersonate", "relay-test-impersonate", "lattice-system", "lattice-agent"),
        ]
    )
    leaf.apply([CONFIGMAPS, _bind("relay-test-configmaps", "relay-test-configmaps", "default", "alice")])
    leaf.kubectl("create", "configmap", "on-the-leaf", "-n", "default")
    agent_token = tmp_path / "mid-agent.token"
    agent_token.write_text(mid.kubectl("create", "token", "lattice-agent", "-n", "lattice-system").stdout)

    async with (
        cell_proxy(cell_pki, root, publish=True) as (root_cell, root_proxy),
        cell_proxy(mid_pki, mid, publish=True) as (mid_cell, _),
    ):
        # mid's agent as `lattice agent --kubeconfig` builds it: no --relay-url, so it finds
        # mid's cell where that cell published its endpoint
        flags = argparse.Namespace(
            no_api_proxy=False,
            kubeconfig=mid.kubeconfig,
            relay_url=None,
            relay_ca=None,
            relay_token_file=agent_token,
        )
        mid_executor = await agent_executor(flags, "mid", await Kr8sKube.connect(str(mid.kubeconfig)))
        assert mid_executor is not None
        leaf_executor = api_proxy_agent.ApiProxyExecutor(
            "leaf", await api_proxy_agent.HttpTarget.from_kubeconfig(str(leaf.kubeconfig))
        )
        try:
            async with (
                running_agent(cell_pki.agent_files("mid"), "mid", root_cell.port, proxy=mid_executor),
                running_agent(mid_pki.agent_files("leaf"), "leaf", mid_cell.port, proxy=leaf_executor),
            ):
                await root_cell.wait_connected("mid")
                await mid_cell.wait_connected("leaf")
                configs = {}
                for user in ("alice", "carol"):
                    token = root.kubectl("create", "token", user, "-n", "default").stdout.strip()
                    via = tmp_path / f"root-{user}.kubeconfig"
                    via.write_text(yamlio.dump_all([token_kubeconfig(root, token)]))
                    code, out, err = await _run(
                        sys.executable, "-m", "lattice.app.cli", "kubeconfig", "mid/leaf", "--via", str(via)
                    )
                    assert code == 0, err
                    assert f"server: {root_proxy.url}/clusters/mid/clusters/leaf" in out
                    configs[user] = tmp_path / f"{user}-leaf.kubeconfig"
                    configs[user].write_text(out)

                def kubectl(user: str, *args: str) -> list[str]:
                    return [
                        str(root.toolchain.kubectl),
                        f"--kubeconfig={configs[user]}",
                        f"--cache-dir={tmp_path / ('cache-' + user)}",
                        *args,
                    ]

                code, out, err = await _run(*kubectl("alice", "get", "cm", "-n", "default", "-o", "name"))
                assert code == 0, err
                assert "configmap/on-the-leaf" in out
                manifest = {
                    "apiVersion": "v1",
                    "kind": "ConfigMap",
                    "metadata": {"name": "via-two", "namespace": "default"},
                }
                code, _, err = await _run(*kubectl("alice", "apply", "-f", "-"), stdin=json.dumps(manifest))
                assert code == 0, err
                assert "via-two" in leaf.kubectl("get", "cm", "-n", "default", "-o", "name").stdout
                code, _, err = await _run(*kubectl("alice", "delete", "cm", "via-two", "-n", "default"))
                assert code == 0, err

                # carol may reach mid from the root, but mid's cell does not let her reach leaf
                code, _, err = await _run(*kubectl("carol", "get", "cm", "-n", "default"))
                assert code != 0
                assert "Forbidden" in err
                assert mid_executor.started >= 1
                assert leaf_executor.started >= 3  # only alice's requests got that far
        finally:
            await mid_executor.close()
            await leaf_executor.close()
