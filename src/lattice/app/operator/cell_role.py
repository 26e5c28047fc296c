"""The parts that make an operator a cell: CA, registration webhook, agent hub, coordinator,
the service catalog its children's agents announce to and query (spec 003), and (for provider
type ``local``) the local infrastructure provider.

The cell's CA is persisted in its state directory so that a restarted cell keeps the identity
its children's agents trust.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
from pathlib import Path

from attrs import frozen

from lattice.adapters import agent_hub, pki, tls
from lattice.adapters.addons_bundle import AddonsBundle
from lattice.adapters.agent_hub import AgentHub, CellGrpcServer
from lattice.adapters.cell_ca import CellCertificateAuthority
from lattice.adapters.chart import locate_operator_chart
from lattice.adapters.registration_http import (
    PayloadSettings,
    PayloadUnavailable,
    RegistrationServer,
    registration_app,
)
from lattice.adapters.revocations import ConfigMapRevocations
from lattice.adapters.token_store_secret import SecretTokenStore
from lattice.app import faults, yamlio
from lattice.app.api_proxy import CellApiProxy
from lattice.app.discovery.catalog_service import CatalogService
from lattice.app.discovery.stream import CatalogStreamHandler, every
from lattice.app.operator.child_driver import CellCoordinator
from lattice.app.operator.controller import ClusterController
from lattice.app.operator.mailboxes import AgentStatusMailbox, Wakeups
from lattice.domain import (
    addons,
    agent_payload,
    capi,
    child_capi,
    crds,
    deploy,
    install_plan,
    models,
    serde,
)
from lattice.domain.discovery.cache import DEFAULT_REFRESH_INTERVAL
from lattice.domain.discovery.catalog import ServiceCatalog
from lattice.ports import kube
from lattice.ports.kube import KubeApi, ResourceRef
from lattice.ports.mover import ClusterMover, MoverKind
from lattice.ports.registration import TokenStoreUnavailable

log = logging.getLogger("lattice.cell")

SERVICE_RESYNC_S = 15.0
REVOCATION_REFRESH_S = 5.0
"""How soon a revocation (ConfigMap lattice-system/lattice-agent-revocations) closes open streams."""
CELL_SERVICE_MANAGER = "lattice-cell"


@frozen
class CellSettings:
    host: str
    bootstrap_port: int
    grpc_port: int
    state_dir: Path
    bind_host: str = "127.0.0.1"
    agent_image: str = "ghcr.io/lattice-dev/lattice:0.1.0"
    # Children use the contract-shaped local provider and the real CAPI managers: each is sent
    # the CAPI CRDs to pivot into, and its operator runs its own provider and managers after.
    local_infra: bool = False
    machines_dir: Path | None = None  # where the local provider keeps machines (default: state)
    catalog_refresh: float = DEFAULT_REFRESH_INTERVAL
    """Seconds between the catalog's periodic pushes of what each child depends on."""
    operator_via: install_plan.Via = install_plan.Via.MANIFESTS
    """How the operator a child receives is rendered: the manifests, or the Helm chart."""
    proxy_port: int | None = None
    """The Kubernetes API proxy's HTTPS port (docs/api-proxy.md); None: no proxy."""
    mover: MoverKind = MoverKind.NATIVE
    """How pivots export and import: through the Kubernetes API, or with clusterctl."""

    @property
    def endpoint(self) -> capi.ParentEndpoint:
        return capi.ParentEndpoint(self.host, self.bootstrap_port, self.grpc_port)


def load_or_create_ca(state_dir: Path) -> CellCertificateAuthority:
    cert, key = state_dir / "ca.crt", state_dir / "ca.key"
    if cert.exists() and key.exists():
        authority = pki.CertificateAuthority(
            cert=pki.cert_from_pem(cert.read_bytes()), key=pki.key_from_pem(key.read_bytes())
        )
        return CellCertificateAuthority(authority)
    ca = CellCertificateAuthority.generate("lattice-cell-ca")
    state_dir.mkdir(parents=True, exist_ok=True)
    cert.write_bytes(ca.authority.cert_pem)
    pki.write_private_file(key, ca.authority.key_pem)
    return ca


def _names(host: str) -> tuple[list[str], list[str]]:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return [host, "localhost"], ["127.0.0.1"]
    return ["localhost"], sorted({host, "127.0.0.1"})


class Registrations:
    """Issues a child's bootstrap token and stores it with the CA bundle for its kubeadm."""

    def __init__(self, api: KubeApi, tokens: SecretTokenStore, ca: CellCertificateAuthority) -> None:
        self.api = api
        self.tokens = tokens
        self.ca = ca

    async def ensure(self, cluster_name: str) -> None:
        namespace = models.capi_namespace(cluster_name)
        ref = ResourceRef("v1", "Secret", capi.registration_secret_name(cluster_name), namespace)
        try:
            await self.api.get(ref)
        except kube.NotFound:
            try:
                token = await self.tokens.issue(cluster_name)
            except TokenStoreUnavailable as exc:
                # The reconcile records it (status, Warning event) and retries with backoff.
                raise kube.Unavailable(f"cannot issue the bootstrap token: {exc}") from exc
            await self.api.apply(
                capi.registration_secret(cluster_name, token, self.ca.ca_bundle_pem()), "lattice-operator"
            )
            log.info("issued a bootstrap token", extra={"cluster": cluster_name})


@frozen
class CellParts:
    """The adapters a cell runs on, chosen by the composition root
    (:func:`lattice.app.operator.process.compose_cell`) and handed in whole: the cell's runtime
    constructs none of them, and none is patched after construction."""

    ca: CellCertificateAuthority
    tokens: SecretTokenStore
    revocations: ConfigMapRevocations
    registrations: Registrations
    mover: ClusterMover
    addons: AddonsBundle
    statuses: AgentStatusMailbox
    """The agent hub's status sink, served to the coordinator."""
    wakeups: Wakeups
    """Clusters the ClusterController hands to the coordinator (an unpivot to start)."""


class CellRuntime:
    def __init__(
        self,
        settings: CellSettings,
        controller: ClusterController,
        kubeconfig: Path,
        parts: CellParts,
    ) -> None:
        self.settings = settings
        self.controller = controller
        self.kubeconfig = kubeconfig
        self.parts = parts
        self.ca = parts.ca
        self.tokens = parts.tokens
        self.revocations = parts.revocations
        self._agent_faults = faults.agent_faults()
        self.registrations = parts.registrations
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.grpc: CellGrpcServer | None = None
        self.webhook: RegistrationServer | None = None
        self.api_proxy: CellApiProxy | None = None
        self.coordinator: CellCoordinator | None = None
        self._child_capi_crds: bytes | None = None
        self._service_address: str | None = ""
        self.addons = parts.addons
        cilium_crds = {"apiVersion": "v1", "kind": "List", "items": self.addons.cilium_crds()}
        self._cilium_crds = json.dumps(cilium_crds).encode()
        self._flux = yamlio.dump_all(self.addons.flux_install()).encode()
        self.catalog = CatalogService(
            ServiceCatalog(controller.context.self_name or "cell"), controller.clock
        )
        self.discovery = CatalogStreamHandler(self.catalog)

    @property
    def machines_dir(self) -> Path:
        return self.settings.machines_dir or self.settings.state_dir / "local-infra"

    def agent_args(self, cluster_name: str) -> tuple[str, ...]:
        """Extra flags for a registering child's agent: discovery as its LatticeCluster asks."""
        child = self.controller.clusters.get(None, cluster_name) or {}
        found = agent_payload.discovery_agent_args((child.get("spec") or {}).get("discovery"))
        points = self._agent_faults.get(cluster_name)  # test-only (lattice.app.faults)
        return found if points is None else (*found, "--fault-at", points)

    def _child(self, cluster_name: str) -> models.LatticeCluster:
        raw = self.controller.clusters.get(None, cluster_name)
        if raw is None:
            raise ValueError(f"no LatticeCluster {cluster_name} in this cell")
        parsed = serde.cluster_from_dict(dict(raw))
        if not isinstance(parsed, models.LatticeCluster):
            msg = f"LatticeCluster {cluster_name} does not parse: {parsed}"
            raise ValueError(msg)  # noqa: TRY004 - a spec that does not parse, not a wrong type
        return parsed

    async def registration_addons(self, cluster_name: str) -> list[kube.Obj]:
        """What a registering child installs with its agent: Cilium, rendered by its own chart
        with this cluster's values (``lattice.domain.addons.cilium_values``)."""
        child = self._child(cluster_name)
        api_server = addons.control_plane_endpoint(self.controller.observed(cluster_name))
        if api_server is None:
            raise PayloadUnavailable(
                "the cluster's control-plane endpoint is not known yet (Cluster API Cluster "
                "spec.controlPlaneEndpoint); Cilium needs it to reach the API server"
            )
        started = asyncio.get_running_loop().time()
        rendered = await asyncio.to_thread(
            self.addons.render_cilium,
            cluster_name,
            child.spec.networking,
            api_server,
            child.spec.provider.kubernetes.version,
        )
        log.info(
            "rendered Cilium for a registering child",
            extra={
                "cluster": cluster_name,
                "objects": len(rendered),
                "seconds": round(asyncio.get_running_loop().time() - started, 3),
            },
        )
        return rendered

    def bootstrap_manifests(self, cluster_name: str) -> tuple[bytes, ...]:
        """What a new child applies before its pivot: the Lattice CRDs and its own operator, the
        Cluster API CRDs, Cilium's CRDs with the cluster's LB-IPAM pool and L2 policy, and Flux."""
        endpoint = self.settings.endpoint
        child = self.controller.clusters.get(None, cluster_name) or {}
        spec = child.get("spec") or {}
        network: tuple[kube.Obj, ...] = ()
        try:
            network = addons.network_objects(cluster_name, self._child(cluster_name).spec.networking)
        except ValueError as exc:  # an invalid spec never gets this far; say so if it does
            log.warning("no network objects", extra={"cluster": cluster_name, "error": str(exc)})
        # A local child runs the local provider and the real Cluster API managers itself.
        local = self.settings.local_infra and install_plan.is_local(spec)
        # Its own operator compiles its KubeadmControlPlane exactly as this cell did: with this
        # cell as its parent when it has one (cellRef); a root cluster (the management cluster
        # of `lattice install`) was compiled without, and its parent goes away after the install.
        wanted = install_plan.child_operator(
            cluster_name,
            spec,
            endpoint,
            self.settings.agent_image,
            local_machines_dir=str(self.machines_dir.resolve()) if local else None,
        )
        operator = (
            locate_operator_chart().operator_objects(wanted)
            if self.settings.operator_via is install_plan.Via.HELM
            else wanted.manifests()
        )
        if wanted.options.capi_managers:
            operator = [*operator, *deploy.capi_managers_rbac()]
        capi_crds = () if self._child_capi_crds is None else (self._child_capi_crds,)
        return (
            yamlio.dump_all(crds.all_crds()).encode(),
            *capi_crds,
            yamlio.dump_all(operator).encode(),
            self._cilium_crds,
            *((yamlio.dump_all(list(network)).encode(),) if network else ()),
            self._flux,
        )

    async def _load_child_capi_crds(self) -> None:
        """The CAPI CRDs this cell serves, as each child needs them to pivot into (one JSON list)."""
        found: dict[str, kube.Obj] = {}
        for selector in child_capi.SELECTORS:
            listed = await self.controller.api.list(
                "apiextensions.k8s.io/v1", "CustomResourceDefinition", label_selector=selector
            )
            found.update({str(c["metadata"]["name"]): c for c in listed.items})
        self._child_capi_crds = json.dumps(child_capi.crd_list(found.values())).encode()
        log.info("children get the Cluster API CRDs", extra={"crds": len(found)})

    async def start(self) -> None:
        tls.set_ssl_read_buffer(agent_hub.CELL_SSL_READ_BUFFER)  # memory per agent stream
        await self.tokens.load()
        directory = self.settings.state_dir / "pki"
        dns_names, ips = _names(self.settings.host)
        cert, key, ca_file = self.ca.write_server_files(directory, dns_names=dns_names, ip_addresses=ips)
        files = tls.TlsFiles(cert=cert, key=key, ca=ca_file)
        await self.revocations.refresh()
        hub = AgentHub(
            sink=self.parts.statuses,
            discovery=self.discovery,
            signer=self.ca,
            revocation=self.revocations.reason,
        )
        self.grpc = CellGrpcServer(
            hub,
            tls.server_context(files, require_client_cert=True),
            host=self.settings.bind_host,
            port=self.settings.grpc_port,
        )
        endpoint = self.settings.endpoint
        app = registration_app(
            token_store=self.tokens,
            signer=self.ca,
            payload=PayloadSettings(
                grpc_endpoint=str(endpoint.grpc),
                image=self.settings.agent_image,
                agent_args=self.agent_args,
                addons=self.registration_addons,
            ),
        )
        self.webhook = RegistrationServer(
            app,
            tls.server_context(files, require_client_cert=False, alpn=("http/1.1",)),
            host=self.settings.bind_host,
            port=self.settings.bootstrap_port,
        )
        self.coordinator = CellCoordinator(
            self.controller,
            hub,
            self.parts.mover,
            cell_kubeconfig=self.kubeconfig,
            work_dir=self.settings.state_dir / "pivots",
            bootstrap_manifests=self.bootstrap_manifests,
        )
        self._tasks.append(
            asyncio.create_task(
                self.parts.statuses.serve(self.coordinator.record, self._stop), name="agent-statuses"
            )
        )
        self._tasks.append(
            asyncio.create_task(
                self.parts.wakeups.serve(self.coordinator.kick, self._stop), name="cell-wakeups"
            )
        )
        await self.grpc.start()
        await self.webhook.start()
        if self.settings.proxy_port is not None:
            host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
            self.api_proxy = CellApiProxy(
                hub,
                files,
                kubeconfig=self.kubeconfig,
                url=f"https://{host}:{self.settings.proxy_port}",
                bind_host=self.settings.bind_host,
                port=self.settings.proxy_port,
            )
            await self.api_proxy.start(self.controller.api)
        if self.settings.local_infra:
            await self._load_child_capi_crds()
        self._tasks.append(
            asyncio.create_task(
                every(
                    self.settings.catalog_refresh,
                    lambda: self.discovery.refresh(hub.connected(), hub.send_discovery),
                    self._stop,
                ),
                name="catalog-refresh",
            )
        )
        self._tasks.append(
            asyncio.create_task(every(SERVICE_RESYNC_S, self.expose, self._stop), name="cell-service")
        )

        async def enforce_revocations() -> None:
            await self.revocations.refresh()
            hub.close_revoked()
            await self.revocations.prune(self.controller.clock.now())

        self._tasks.append(
            asyncio.create_task(
                every(REVOCATION_REFRESH_S, enforce_revocations, self._stop), name="agent-revocations"
            )
        )
        # the first export must not wait for the API server to build each CAPI kind's watch cache
        self._tasks.append(asyncio.create_task(self._warm(), name="warm-move-kinds"))
        self.coordinator.resume_all()
        log.info(
            "cell serving",
            extra={
                "webhook_port": self.webhook.port,
                "grpc_port": self.grpc.port,
                "host": self.settings.host,
            },
        )

    async def expose(self) -> dict[str, kube.Obj] | None:
        """Apply this cell's Service (``spec.parentConfig.service``) once its own LatticeCluster
        is here (a child cell's arrives with its pivot); log its address when it changes."""
        name = self.controller.context.self_name
        if not name:
            return None
        try:
            own = self._child(name)
        except ValueError:
            return None
        service = addons.cell_service(name, own.spec)
        if service is None:
            return None
        stored = await self.controller.api.apply(service, CELL_SERVICE_MANAGER)
        address = addons.service_address(stored)
        if address != self._service_address:
            self._service_address = address
            log.info(
                "cell service applied",
                extra={
                    "service": addons.CELL_SERVICE_NAME,
                    "type": stored["spec"]["type"],
                    "address": address or "<pending>",
                    "host": self.settings.host,
                },
            )
        return stored

    async def _warm(self) -> None:
        assert self.coordinator is not None
        warmed = await self.coordinator.warm_move_kinds()
        log.info("listed the kinds clusterctl move lists", extra={"kinds": warmed})

    async def close(self) -> None:
        self._stop.set()
        if self.coordinator is not None:
            await self.coordinator.close()
        if self.api_proxy is not None:
            await self.api_proxy.close()
        if self.webhook is not None:
            await self.webhook.stop()
        if self.grpc is not None:
            await self.grpc.stop()
        await asyncio.gather(*self._tasks, return_exceptions=True)
