"""The operator's lean client (kr8s authentication, aiohttp requests) against a real
kube-apiserver: every error the server answers is the port's error, a denied request is retried
with reloaded credentials and then reported, and a server that went away is ``Unavailable``
until it is back, on the same client (and the operator's connect retries until it is)."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import anyio
import pytest
from ruamel.yaml import YAML

from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app.operator.process import connect_with_retry
from lattice.ports import kube
from lattice.ports.kube import ResourceRef
from lattice.testing.fixtures import ControlPlaneFactory

pytestmark = [pytest.mark.integration, pytest.mark.anyio]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def config_map(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": data,
    }


async def test_the_servers_answers_are_the_ports_errors(
    control_plane_factory: ControlPlaneFactory, caplog: pytest.LogCaptureFixture
) -> None:
    cp = control_plane_factory.one()
    api = await Kr8sKube.connect(str(cp.kubeconfig), lean=True)
    try:
        created = await api.create(config_map("lean-1", a="1"))
        assert created["data"] == {"a": "1"}
        applied = await api.apply(config_map("lean-1", a="2"), "test")
        assert applied["data"] == {"a": "2"}
        with pytest.raises(kube.Conflict, match="already exists"):
            await api.create(config_map("lean-1"))
        with pytest.raises(kube.NotFound, match="not found"):
            await api.get(ResourceRef("v1", "ConfigMap", "lean-missing", "default"))
        with pytest.raises(kube.Invalid, match="Invalid value"):
            await api.create(config_map("Not_A_Name"))
        assert [o["metadata"]["name"] for o in (await api.list("v1", "ConfigMap", "default")).items].count(
            "lean-1"
        ) == 1

        # The API server goes away: the same client says so, then works again once it is back.
        await asyncio.to_thread(cp.stop_apiserver)
        with pytest.raises(kube.Unavailable, match="GET /api/v1/namespaces/default/configmaps/lean-1"):
            await api.get(ResourceRef("v1", "ConfigMap", "lean-1", "default"))
        # The operator connects with retries: out of attempts, the last error is the caller's;
        # with enough of them, an API server that comes up meanwhile is found.
        with pytest.raises(kube.Unavailable, match="cannot reach the API server"):
            await connect_with_retry(str(cp.kubeconfig), attempts=2, lean=True)
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="lattice.operator"):
            connecting = asyncio.create_task(connect_with_retry(str(cp.kubeconfig), lean=True))
            await asyncio.to_thread(cp.start_apiserver)
            assert (await api.get(ResourceRef("v1", "ConfigMap", "lean-1", "default")))["data"] == {"a": "2"}
            retried = await connecting
        # it did fail while the server was down, and found it once it was up
        assert "API server unavailable; retrying" in caplog.text
        assert (await retried.get(ResourceRef("v1", "ConfigMap", "lean-1", "default")))["data"] == {"a": "2"}
        await retried.close()
    finally:
        await api.close()
        await api.close()  # closing twice is harmless


def _token_kubeconfig(cp: ControlPlane, directory: Path, account: str) -> Path:
    """The control plane's kubeconfig with the admin's certificate replaced by the token of a
    ServiceAccount that has no permissions."""
    cp.kubectl("create", "serviceaccount", account, "-n", "default")
    token = cp.kubectl("create", "token", account, "-n", "default").stdout.strip()
    yaml = YAML(typ="safe")
    config = yaml.load(cp.kubeconfig.read_text())
    for user in config["users"]:
        user["user"] = {"token": token}
    path = directory / f"{account}.kubeconfig"
    with path.open("w") as f:
        yaml.dump(config, f)
    return path


async def test_a_denied_request_is_retried_with_reloaded_credentials_then_reported(
    cell_control_plane: ControlPlane, tmp_path: Path
) -> None:
    kubeconfig = _token_kubeconfig(cell_control_plane, tmp_path, "lean-nobody")
    api = await Kr8sKube.connect(str(kubeconfig), lean=True)
    try:
        with anyio.fail_after(30), pytest.raises(kube.KubeError, match=r"HTTP 403: .*forbidden"):
            await api.get(ResourceRef("v1", "ConfigMap", "anything", "default"))
    finally:
        await api.close()
        cell_control_plane.kubectl("delete", "serviceaccount", "lean-nobody", "-n", "default")
