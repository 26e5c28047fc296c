"""``lattice kubeconfig CLUSTER --via CELL_KUBECONFIG``: a kubeconfig for a cluster through its
cell's Kubernetes API proxy (docs/api-proxy.md).

CLUSTER is a child of the cell, or a path through the tree below it (``child/grandchild``).
The server is the cell's proxy path for it (``https://<cell>/clusters/child/clusters/grandchild``)
as the cell publishes it in the ConfigMap ``lattice-system/lattice-api-proxy`` (``--proxy-url``
and ``--proxy-ca`` instead). The user is a bearer token: ``--token``/``--token-file``, else the
token of the cell kubeconfig's current user (reviewed with TokenReview on the cell), else its
client certificate (the proxy accepts certificates of the cell cluster's client CA, as its API
server does: a kubeadm admin.conf works as it is).

Exit codes: 0 printed; 2 bad arguments; 1 the cell could not be read.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import sys
from pathlib import Path
from typing import Any

from lattice.app import yamlio
from lattice.domain import api_proxy

EXIT_CONFIG = 2
EXIT_UNAVAILABLE = 1


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "kubeconfig",
        help="print a kubeconfig for a cluster through its cell's API proxy",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("cluster", metavar="CLUSTER", help="a child of the cell, or child/grandchild/...")
    parser.add_argument(
        "--via", required=True, type=Path, metavar="CELL_KUBECONFIG", help="the cell's kubeconfig"
    )
    parser.add_argument("--proxy-url", help="the cell's proxy endpoint (default: from the cell's ConfigMap)")
    parser.add_argument("--proxy-ca", type=Path, help="CA bundle of --proxy-url (PEM)")
    token = parser.add_mutually_exclusive_group()
    token.add_argument("--token", help="the bearer token to use (default: the cell kubeconfig's)")
    token.add_argument("--token-file", type=Path, help="read the bearer token from this file")
    parser.set_defaults(func=run)


def _error(message: str, code: int = EXIT_CONFIG) -> int:
    print(f"lattice kubeconfig: {message}", file=sys.stderr)
    return code


def _current_user(kubeconfig: dict[str, Any]) -> dict[str, Any]:
    current = kubeconfig.get("current-context")
    contexts = {c.get("name"): c.get("context") or {} for c in kubeconfig.get("contexts") or []}
    user_name = contexts.get(current, {}).get("user")
    for user in kubeconfig.get("users") or []:
        if user.get("name") == user_name:
            return dict(user.get("user") or {})
    return {}


def _current_token(kubeconfig: dict[str, Any]) -> str | None:
    token = _current_user(kubeconfig).get("token")
    return str(token) if token else None


def _current_certificate(kubeconfig: dict[str, Any], base: Path) -> tuple[str, str] | None:
    """The client certificate and key of the current user (base64, as kubeconfig data), from
    ``client-certificate-data`` or a file ``client-certificate`` (relative to the kubeconfig)."""
    user = _current_user(kubeconfig)
    found: list[str] = []
    for field in ("client-certificate", "client-key"):
        if user.get(f"{field}-data"):
            found.append(str(user[f"{field}-data"]))
        elif user.get(field):
            found.append(base64.b64encode((base / str(user[field])).read_bytes()).decode())
    return (found[0], found[1]) if len(found) == 2 else None


def run(args: argparse.Namespace) -> int:
    errors = api_proxy.route_errors(args.cluster)
    if errors:
        return _error("; ".join(str(e) for e in errors))
    loaded = yamlio.read_documents(args.via)
    if isinstance(loaded, yamlio.YamlError):
        return _error(f"--via {loaded}")
    if len(loaded) != 1 or not isinstance(loaded[0].data, dict):
        return _error(f"--via {args.via}: not a kubeconfig (one YAML mapping)")
    cell_config: dict[str, Any] = loaded[0].data
    if args.proxy_url:
        if args.proxy_ca is None:
            return _error("--proxy-url needs --proxy-ca")
        url, ca = args.proxy_url, args.proxy_ca.read_text()
    else:
        try:
            url, ca = asyncio.run(_published_endpoint(args.via))
        except Exception as exc:
            return _error(
                f"cannot read ConfigMap {_where()} on the cell ({exc}); pass --proxy-url and --proxy-ca",
                EXIT_UNAVAILABLE,
            )
    if args.token is not None:
        token: str | None = args.token
    elif args.token_file is not None:
        token = args.token_file.read_text().strip()
    else:
        token = _current_token(cell_config)
    certificate = None
    if token is None:
        try:
            certificate = _current_certificate(cell_config, args.via.parent)
        except OSError as exc:
            return _error(f"--via {args.via}: cannot read the user's client certificate: {exc}")
        if certificate is None:
            print(
                "lattice kubeconfig: the cell kubeconfig's user has neither a token nor a client "
                "certificate; add one to the printed user (--token): the proxy accepts bearer "
                "tokens the cell's API server can review and client certificates of its client CA",
                file=sys.stderr,
            )
    config = api_proxy.kubeconfig(args.cluster.split("/"), url, ca or None, token, certificate)
    sys.stdout.write(yamlio.dump_all([config]))
    return 0


def _where() -> str:
    from lattice.app.api_proxy import ENDPOINT_CONFIGMAP, ENDPOINT_NAMESPACE  # noqa: PLC0415

    return f"{ENDPOINT_NAMESPACE}/{ENDPOINT_CONFIGMAP}"


async def _published_endpoint(kubeconfig: Path) -> tuple[str, str]:
    from lattice.adapters.kube_kr8s import Kr8sKube  # noqa: PLC0415 - only this path needs kr8s
    from lattice.app.api_proxy import ENDPOINT_CONFIGMAP, ENDPOINT_NAMESPACE, read_endpoint  # noqa: PLC0415
    from lattice.ports.kube import ResourceRef  # noqa: PLC0415

    api = await Kr8sKube.connect(str(kubeconfig))
    found = await api.get(ResourceRef("v1", "ConfigMap", ENDPOINT_CONFIGMAP, ENDPOINT_NAMESPACE))
    url, ca = read_endpoint(found)
    if not url:
        raise ValueError("it has no url")
    return url, ca
