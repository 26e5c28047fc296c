"""Wiring of the Kubernetes API proxy (docs/api-proxy.md) into the cell and the agent.

* the cell (:class:`CellApiProxy`): the proxy endpoint on its own HTTPS port (``lattice operator
  --proxy-port``), serving ``/clusters/<child>/...`` through the hub's agent streams, with the
  cell's server certificate; it publishes where it listens in the ConfigMap
  ``lattice-system/lattice-api-proxy`` (``url``, ``ca.crt``), which ``lattice kubeconfig`` reads;
* the agent (:func:`agent_executor`): performs proxied requests against its cluster's API
  server (``--kubeconfig``) impersonating the caller, and relays a descendant's request to the
  cell in its own cluster: ``--relay-url``/``--relay-ca``, or else where that cell published
  its endpoint (the same ConfigMap, read on the first relayed request), with the agent's
  ServiceAccount token (``--relay-token-file``).
"""

from __future__ import annotations

import argparse
import logging
import ssl
from pathlib import Path
from typing import Any

from lattice.adapters import tls
from lattice.adapters.agent_hub import AgentHub
from lattice.adapters.api_proxy_agent import ApiProxyExecutor, HttpTarget
from lattice.adapters.api_proxy_http import api_proxy_app, proxy_server, proxy_ssl_context
from lattice.adapters.kube_access_review import KubeAccessReviewer
from lattice.adapters.registration_http import RegistrationServer
from lattice.ports import kube

log = logging.getLogger("lattice.api_proxy")

ENDPOINT_CONFIGMAP = "lattice-api-proxy"
ENDPOINT_NAMESPACE = "lattice-system"
IN_CLUSTER_TOKEN = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
FIELD_MANAGER = "lattice-api-proxy"
CLIENT_CA = kube.ResourceRef("v1", "ConfigMap", "extension-apiserver-authentication", "kube-system")
"""Where the API server publishes the CA of the client certificates it accepts
(``client-ca-file``): delegated authentication as an aggregated API server reads it."""


async def cluster_client_ca(api: kube.KubeApi) -> str | None:
    """The cell cluster's client CA bundle (PEM), None when it publishes none or cannot be read
    (then the proxy accepts bearer tokens only)."""
    try:
        found = await api.get(CLIENT_CA)
    except kube.KubeError as exc:
        log.warning("api proxy: no client certificates (cannot read the cluster's client CA: %s)", exc)
        return None
    ca = (found.get("data") or {}).get("client-ca-file")
    return str(ca) if ca else None


ENDPOINT_NAMESPACE_OBJECT: kube.Obj = {
    "apiVersion": "v1",
    "kind": "Namespace",
    "metadata": {"name": ENDPOINT_NAMESPACE},
}


def endpoint_configmap(url: str, ca_pem: str) -> kube.Obj:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": ENDPOINT_CONFIGMAP, "namespace": ENDPOINT_NAMESPACE},
        "data": {"url": url, "ca.crt": ca_pem},
    }


class CellApiProxy:
    """The cell's proxy endpoint: started with the cell, stopped with it."""

    def __init__(
        self,
        hub: AgentHub,
        files: tls.TlsFiles,
        *,
        kubeconfig: Path | None,
        url: str,
        bind_host: str,
        port: int,
    ) -> None:
        self._hub = hub
        self._files = files
        self._kubeconfig = kubeconfig
        self.url = url
        self._bind_host = bind_host
        self._port = port
        self.server: RegistrationServer | None = None
        self._reviewer: KubeAccessReviewer | None = None

    @property
    def port(self) -> int:
        return self.server.port if self.server is not None else self._port

    async def start(self, api: kube.KubeApi | None = None) -> None:
        target = await HttpTarget.from_kubeconfig(str(self._kubeconfig) if self._kubeconfig else None)
        self._reviewer = KubeAccessReviewer(target)
        client_ca = await cluster_client_ca(api) if api is not None else None
        self.server = proxy_server(
            api_proxy_app(relay=self._hub.proxy, reviewer=self._reviewer),
            proxy_ssl_context(self._files, client_ca),
            host=self._bind_host,
            port=self._port,
        )
        await self.server.start()
        log.info("api proxy serving", extra={"url": self.url, "port": self.server.port})
        if api is not None:
            try:
                # a root cell run by hand may have no lattice-system yet (nothing deployed it)
                await api.apply(ENDPOINT_NAMESPACE_OBJECT, FIELD_MANAGER)
                await api.apply(endpoint_configmap(self.url, self._files.ca.read_text()), FIELD_MANAGER)
            except kube.KubeError as exc:  # lattice kubeconfig then needs --proxy-url
                log.warning("could not publish the api proxy endpoint: %s", exc)

    async def close(self) -> None:
        if self.server is not None:
            await self.server.stop()
            self.server = None
        if self._reviewer is not None:
            await self._reviewer.close()


def add_agent_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "Kubernetes API proxy",
        "perform the requests the cell proxies to this cluster (needs --kubeconfig), impersonating "
        "each caller; relay a descendant's requests to the cell in this cluster",
    )
    group.add_argument(
        "--no-api-proxy", action="store_true", help="refuse proxied requests (answered 501 at the cell)"
    )
    group.add_argument(
        "--relay-url", metavar="URL", help="this cluster's own cell proxy endpoint (a cell's agent)"
    )
    group.add_argument("--relay-ca", type=Path, metavar="FILE", help="CA bundle of --relay-url")
    group.add_argument(
        "--relay-token-file",
        type=Path,
        default=IN_CLUSTER_TOKEN,
        metavar="FILE",
        help="the agent's ServiceAccount token for the relay (re-read for every request); when "
        "the file does not exist, the token of --kubeconfig (a pod run without the projected "
        "token volume at the default path)",
    )


def agent_proxy_errors(args: argparse.Namespace) -> list[str]:
    problems: list[str] = []
    if args.relay_url and not args.relay_url.startswith("https://"):
        problems.append(f"--relay-url {args.relay_url}: must be an https:// URL")
    if args.relay_url and args.relay_ca is None:
        problems.append("--relay-url needs --relay-ca (the CA of the cell's proxy endpoint)")
    return problems


async def agent_executor(
    args: argparse.Namespace, cluster_name: str, api: kube.KubeApi
) -> ApiProxyExecutor | None:
    """The agent's proxy executor for ``lattice agent --kubeconfig``; None with --no-api-proxy."""
    if args.no_api_proxy:
        return None
    target = await HttpTarget.from_kubeconfig(str(args.kubeconfig))
    credentials = RelayCredentials(args.relay_token_file, target.token)
    if args.relay_url:
        relay = HttpTarget(
            base_url=args.relay_url,
            verify=ssl.create_default_context(cafile=str(args.relay_ca)),
            **credentials.target_fields(),
        )
        return ApiProxyExecutor(cluster_name, target, relay=relay)
    return ApiProxyExecutor(cluster_name, target, relay_source=PublishedRelay(api, credentials))


class RelayCredentials:
    """The agent's own token for its cell's proxy: the token file while it exists (re-read for
    every request: a projected token is rotated on disk), else the token of its kubeconfig (a
    pod whose ServiceAccount token is only in its kubeconfig, as the local kubelet runs them)."""

    def __init__(self, token_file: Path, kubeconfig_token: str | None) -> None:
        self.token_file = token_file
        self.kubeconfig_token = kubeconfig_token

    def target_fields(self) -> dict[str, Any]:
        if self.token_file.exists() or not self.kubeconfig_token:
            return {"token_file": self.token_file}
        return {"token": self.kubeconfig_token}


class PublishedRelay:
    """The cell in the agent's own cluster, where it published its endpoint: None when it
    published none (this cluster is not a cell)."""

    def __init__(self, api: kube.KubeApi, credentials: RelayCredentials) -> None:
        self._api = api
        self._credentials = credentials

    async def __call__(self) -> HttpTarget | None:
        try:
            found = await self._api.get(
                kube.ResourceRef("v1", "ConfigMap", ENDPOINT_CONFIGMAP, ENDPOINT_NAMESPACE)
            )
        except kube.NotFound:
            return None
        url, ca = read_endpoint(found)
        if not url or not ca:
            return None
        return HttpTarget(
            base_url=url, verify=ssl.create_default_context(cadata=ca), **self._credentials.target_fields()
        )


def read_endpoint(configmap: dict[str, Any]) -> tuple[str, str]:
    data = configmap.get("data") or {}
    return str(data.get("url") or ""), str(data.get("ca.crt") or "")
