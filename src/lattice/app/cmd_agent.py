"""``lattice agent``: the workload-cluster agent. Dials out to its parent cell and stays connected.

It opens one outbound mutual-TLS gRPC stream to ``--parent HOST:PORT`` (``[ADDR]:PORT`` for
IPv6) with the client certificate its cluster received at registration, sends AgentReady,
heartbeats, answers the cell's commands and reconnects with jittered exponential backoff. It
never listens on any port.

Commands are executed through ports. Until the Kubernetes adapters are wired in, the agent
either writes what it receives into ``--record-dir`` (manifests and pivot exports, for tests
and inspection), or refuses such commands with a clear message.

Exit codes: 0 after SIGTERM/SIGINT; 2 for a configuration error (flags, certificate files);
3 when ``--require-fips`` is given and no FIPS provider is active.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import random
import signal
import ssl
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import lattice
from lattice.adapters import agent_client, agent_kube, agent_local, agent_renewal, fips, tls
from lattice.adapters.clock import SystemClock
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.mover_native import mover_for
from lattice.app import api_proxy, faults, logs
from lattice.app.discovery.agent_side import AgentDiscoverySettings, AgentDiscoveryWiring
from lattice.app.discovery.coordinator import DEFAULT_QUERY_TIMEOUT
from lattice.domain.agent_identity import cluster_name_errors
from lattice.domain.backoff import Backoff
from lattice.domain.discovery.cache import DEFAULT_REFRESH_INTERVAL
from lattice.domain.discovery.naming import DEFAULT_GATEWAY_PORT, ClusterContext
from lattice.domain.endpoint import Endpoint
from lattice.domain.errors import FieldError
from lattice.domain.heartbeat import HeartbeatPolicy
from lattice.ports.agent import AgentCredentials, CredentialStore, ManifestApplier, PivotImporter
from lattice.ports.mover import MoverKind

EXIT_CONFIG = 2
EXIT_FIPS = 3


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "agent",
        help="run the agent: an outbound gRPC stream to the parent cell",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--parent", required=True, metavar="HOST:PORT", help="the cell's gRPC endpoint (IPv6: [ADDR]:PORT)"
    )
    parser.add_argument("--cluster-name", required=True, help="this cluster's name (as in its certificate)")
    parser.add_argument("--cert", required=True, type=Path, help="client certificate (PEM)")
    parser.add_argument("--key", required=True, type=Path, help="client private key (PEM)")
    parser.add_argument("--ca", required=True, type=Path, help="the cell's CA bundle (PEM)")
    parser.add_argument(
        "--tls-server-name", help="name to verify in the cell's certificate (default: the host)"
    )
    parser.add_argument("--heartbeat-interval", type=float, default=10.0, metavar="SECONDS")
    parser.add_argument("--heartbeat-jitter", type=float, default=0.2, metavar="FRACTION")
    parser.add_argument("--max-missed", type=int, default=3, help="missed heartbeat acks before reconnecting")
    parser.add_argument("--backoff-initial", type=float, default=0.5, metavar="SECONDS")
    parser.add_argument("--backoff-max", type=float, default=30.0, metavar="SECONDS")
    parser.add_argument(
        "--record-dir",
        type=Path,
        help="write applied manifests and pivot exports here instead of refusing them",
    )
    parser.add_argument("--kubernetes-version", default="", help="reported Kubernetes version")
    parser.add_argument(
        "--kubeconfig",
        type=Path,
        help="this cluster's kubeconfig: apply bootstrap manifests and import pivots into it",
    )
    parser.add_argument("--require-fips", action="store_true", help="refuse to start without a FIPS provider")
    api_proxy.add_agent_flags(parser)
    parser.add_argument(
        "--mover",
        choices=[kind.value for kind in MoverKind],
        default=MoverKind.NATIVE.value,
        help="how pivots import and unpivots export the Cluster API objects: through the Kubernetes "
        "API (native, the default) or with the clusterctl binary",
    )
    found = parser.add_argument_group(
        "service discovery",
        "announce this cluster's LatticeServices to the parent and wire remote dependencies "
        "(needs --kubeconfig)",
    )
    found.add_argument(
        "--discovery-base-domain",
        metavar="DOMAIN",
        help="enables discovery: names are <service>.<env>.<cluster>.<DOMAIN>",
    )
    found.add_argument(
        "--gateway-port", type=int, default=DEFAULT_GATEWAY_PORT, help="cross-cluster gateway port"
    )
    found.add_argument(
        "--gateway-host", help="this cluster's gateway DNS name (default gateway.<cluster>.<DOMAIN>)"
    )
    found.add_argument("--gateway-address", help="the gateway's load-balancer address, when known")
    found.add_argument(
        "--discovery-refresh",
        type=float,
        default=DEFAULT_REFRESH_INTERVAL,
        metavar="SECONDS",
        help="full catalog sync and stale-entry refresh interval (default 300)",
    )
    found.add_argument(
        "--query-timeout", type=float, default=DEFAULT_QUERY_TIMEOUT, metavar="SECONDS", help="default 5"
    )
    found.add_argument(
        "--service-resync",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="re-plan the cluster's services at least this often (default 60)",
    )
    parser.add_argument(
        "--tls-read-buffer",
        type=int,
        default=16 * 1024,
        metavar="BYTES",
        help="asyncio TLS read buffer per connection (default 16 KiB)",
    )
    parser.add_argument(
        "--no-certificate-renewal",
        action="store_true",
        help="do not renew the client certificate over the stream (renewal starts at 60-80%% of "
        "its lifetime and saves into the TLS Secrets, or the --cert/--key/--ca files)",
    )
    parser.add_argument("--log-level", default="info")
    # test-only fault points (lattice.app.faults): a cell adds it for LATTICE_AGENT_FAULT_AT
    parser.add_argument("--fault-at", default="", help=argparse.SUPPRESS)
    parser.set_defaults(func=run)


def parse_endpoint(value: str) -> Endpoint:
    """``--parent``: ``HOST:PORT``, an IPv6 address as ``[ADDR]:PORT`` (:meth:`Endpoint.parse`);
    ValueError naming the flag and the reason otherwise."""
    parsed = Endpoint.parse(value, "--parent")
    if isinstance(parsed, FieldError):
        raise ValueError(str(parsed))  # noqa: TRY004 - a bad flag value, not a wrong type
    return parsed


def _error(message: str) -> int:
    print(f"lattice agent: {message}", file=sys.stderr)
    return EXIT_CONFIG


def run(args: argparse.Namespace) -> int:
    logs.configure(args.log_level)
    if args.require_fips:
        report = fips.fips_report()
        if not report.fips_active:
            print(
                "lattice agent: --require-fips: refusing to start: " + "; ".join(report.problems()),
                file=sys.stderr,
            )
            return EXIT_FIPS
    try:
        parent = parse_endpoint(args.parent)
    except ValueError as exc:
        return _error(str(exc))
    for error in cluster_name_errors(args.cluster_name, ("--cluster-name",)):
        return _error(str(error))
    try:
        args.fault = functools.partial(
            faults.hit, points=faults.parse(args.fault_at, faults.AGENT_POINTS, "--fault-at")
        )
    except ValueError as exc:
        return _error(str(exc))
    problems = api_proxy.agent_proxy_errors(args)
    if problems:
        return _error("; ".join(problems))
    try:
        settings = agent_client.AgentSettings(
            cluster_name=args.cluster_name,
            host=parent.host,
            port=parent.port,
            agent_version=f"lattice/{lattice.__version__}",
            tls_server_name=args.tls_server_name,
            heartbeat=HeartbeatPolicy(
                interval=args.heartbeat_interval,
                jitter=args.heartbeat_jitter,
                max_missed=args.max_missed,
            ),
            backoff=Backoff(initial=args.backoff_initial, maximum=args.backoff_max),
        )
        tls.set_ssl_read_buffer(args.tls_read_buffer)
        files = tls.TlsFiles(cert=args.cert, key=args.key, ca=args.ca)
        context = tls.client_context(files)
        credentials = agent_renewal.read_credentials(files)
        agent_renewal.validity(credentials.cert_pem)
    except (ValueError, tls.TlsConfigError) as exc:
        return _error(str(exc))
    try:
        found = discovery_settings(args)
    except ValueError as exc:
        return _error(str(exc))
    if args.kubeconfig is not None:
        asyncio.run(_run_with_cluster(args, settings, context, found, credentials))
        return 0
    applier: ManifestApplier
    importer: PivotImporter
    if args.record_dir is not None:
        applier = agent_local.DirectoryManifestApplier(args.record_dir / "applied")
        importer = agent_local.DirectoryPivotImporter(args.record_dir)
    else:
        applier = importer = agent_local.UnconfiguredApplier()
    runner = agent_client.AgentRunner(
        settings,
        context,
        applier=applier,
        importer=importer,
        probe=agent_local.StaticClusterProbe(args.kubernetes_version),
        renewer=_renewer(args, credentials, agent_renewal.FileCredentialStore(files)),
        fault=args.fault,
    )
    asyncio.run(_run_until_signalled(runner))
    return 0


def _renewer(
    args: argparse.Namespace, credentials: AgentCredentials, store: CredentialStore
) -> agent_renewal.CertificateRenewer | None:
    if args.no_certificate_renewal:
        return None
    return agent_renewal.CertificateRenewer(args.cluster_name, credentials, store, rand=random.random)


def discovery_settings(args: argparse.Namespace) -> AgentDiscoverySettings | None:
    """The discovery flags, checked; None when discovery is off. ValueError names the flag."""
    if not args.discovery_base_domain:
        return None
    problems: list[str] = []
    if args.kubeconfig is None:
        problems.append("--discovery-base-domain needs --kubeconfig (services are read from the cluster)")
    if not 0 < args.gateway_port < 65536:
        problems.append(f"--gateway-port {args.gateway_port}: must be within 1-65535")
    for flag, value in (
        ("--discovery-refresh", args.discovery_refresh),
        ("--query-timeout", args.query_timeout),
        ("--service-resync", args.service_resync),
    ):
        if not value > 0:
            problems.append(f"{flag} {value}: must be a positive number of seconds")
    if problems:
        raise ValueError("; ".join(problems))
    return AgentDiscoverySettings(
        context=ClusterContext(
            cluster_name=args.cluster_name,
            base_domain=args.discovery_base_domain,
            gateway_port=args.gateway_port,
            gateway_host=args.gateway_host,
            gateway_address=args.gateway_address,
        ),
        query_timeout=args.query_timeout,
        refresh_interval=args.discovery_refresh,
        service_resync=args.service_resync,
    )


async def _run_with_cluster(
    args: argparse.Namespace,
    settings: agent_client.AgentSettings,
    context: ssl.SSLContext,
    found: AgentDiscoverySettings | None,
    credentials: AgentCredentials,
) -> None:
    """The agent on a real cluster: its commands act on the cluster's own API server."""
    api = await Kr8sKube.connect(str(args.kubeconfig))
    mover = mover_for(MoverKind(args.mover), api)
    importer = agent_kube.KubePivotImporter(api, mover, args.kubeconfig)
    link = agent_client.ParentLink(args.cluster_name)
    wiring = (
        AgentDiscoveryWiring(api, found, SystemClock(), send=link.send_discovery)
        if found is not None
        else None
    )
    proxy = await api_proxy.agent_executor(args, args.cluster_name, api)
    runner = agent_client.AgentRunner(
        settings,
        context,
        applier=agent_kube.KubeManifestApplier(api),
        importer=importer,
        probe=agent_kube.KubeClusterProbe(api, importer, args.kubernetes_version, args.cluster_name),
        discovery=wiring.handler if wiring is not None else None,
        unpivoter=agent_kube.KubeUnpivoter(api, mover, args.kubeconfig, args.cluster_name),
        renewer=_renewer(args, credentials, agent_renewal.SecretCredentialStore(api)),
        fault=args.fault,
        proxy=proxy,
        link=link,
    )
    await _run_until_signalled(runner, *(() if wiring is None else (wiring.run,)))


async def _run_until_signalled(
    runner: agent_client.AgentRunner, *alongside: Callable[[asyncio.Event], Awaitable[None]]
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(signum, stop.set)
    await asyncio.gather(runner.run(stop), *(task(stop) for task in alongside))
