"""``lattice operator``: one process = informers + work queue + leader election + HTTP probes.

Shutdown on SIGTERM/SIGINT: stop taking keys, let in-flight reconciles finish (bounded by the
grace period), release the Lease so a standby takes over at once, stop the probe server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import signal
import socket
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import attrs
import uvicorn
from attrs import frozen
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from lattice.adapters.addons_bundle import locate_addons
from lattice.adapters.binaries import locate
from lattice.adapters.capi_managers import CapiManagers, KubeconfigTarget
from lattice.adapters.clock import SystemClock
from lattice.adapters.controlplane import free_port
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.adapters.local_machine_host import LocalMachineHost
from lattice.adapters.mover_native import mover_for
from lattice.adapters.revocations import ConfigMapRevocations
from lattice.adapters.token_store_secret import SecretTokenStore
from lattice.app.local_infra import LocalInfraProvider
from lattice.app.operator.cell_role import (
    CellParts,
    CellRuntime,
    CellSettings,
    Registrations,
    load_or_create_ca,
)
from lattice.app.operator.controller import ClusterController, ControllerConfig
from lattice.app.operator.leader import LeaderElector, LeaseConfig
from lattice.app.operator.local_infra_runtime import LocalInfraRuntime, LocalInfraSettings
from lattice.app.operator.mailboxes import AgentStatusMailbox, Wakeups
from lattice.app.operator.metrics import OperatorMetrics
from lattice.domain import cluster_reconcile
from lattice.ports import kube

log = logging.getLogger("lattice.operator")


@frozen
class OperatorSettings:
    kubeconfig: str | None
    context: cluster_reconcile.OperatorContext
    identity: str
    leader_elect: bool = True
    lease: LeaseConfig = attrs.field(factory=LeaseConfig)
    health_host: str = "127.0.0.1"
    health_port: int = 8081
    workers: int = 4
    resync_s: float = 300.0
    grace_s: float = 10.0
    handle_signals: bool = True  # False when embedded (tests, the local provider)
    cell: CellSettings | None = None  # set: this operator also serves as a cell
    local_infra: LocalInfraSettings | None = None  # set: run the local provider (and managers)


class QuietServer(uvicorn.Server):
    """A uvicorn server that leaves signal handling to the operator's own loop handlers."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        yield


def default_identity() -> str:
    return f"{socket.gethostname()}-{random.randrange(16**6):06x}"  # noqa: S311 - not crypto


def probe_app(
    controller: ClusterController, elector: LeaderElector | None, metrics: OperatorMetrics
) -> Starlette:
    async def healthz(_: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(_: Request) -> Response:
        if not controller.synced:
            return PlainTextResponse("informers not synced", status_code=503)
        return PlainTextResponse("ok")

    async def metrics_endpoint(_: Request) -> Response:
        metrics.leader.set(1 if elector is None or elector.is_leader.is_set() else 0)
        informers = (controller.clusters, *controller.capi, *controller.reports)
        metrics.watch_restarts.set(sum(i.restarts for i in informers))
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    return Starlette(
        routes=[
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/metrics", metrics_endpoint),
        ]
    )


def _kubeconfig_path(kubeconfig: str | None) -> Path:
    if kubeconfig is None:
        raise ValueError("a cell and --local-infra need --kubeconfig (clusterctl and the managers read it)")
    return Path(kubeconfig)


async def connect_with_retry(kubeconfig: str | None, attempts: int = 30, *, lean: bool = False) -> Kr8sKube:
    delay = 0.2
    for attempt in range(1, attempts):
        try:
            return await Kr8sKube.connect(kubeconfig, lean=lean)
        except kube.Unavailable as exc:
            log.warning("API server unavailable; retrying", extra={"error": str(exc), "attempt": attempt})
            await asyncio.sleep(delay)
            delay = min(5.0, delay * 2)
    return await Kr8sKube.connect(kubeconfig, lean=lean)  # the last attempt: its error is the caller's


def compose_cell(settings: CellSettings, api: Kr8sKube) -> CellParts:
    """The real adapters a cell runs on: its CA (kept in its state directory), the bootstrap
    tokens and revocations in Secrets and a ConfigMap, the mover ``--mover`` names (the native one
    on the operator's own connection: the cell moves out of and into its own cluster), the add-ons
    bundle, and the mailboxes between the hub, the controller and the coordinator."""
    ca = load_or_create_ca(settings.state_dir / "pki")
    tokens = SecretTokenStore(api)
    return CellParts(
        ca=ca,
        tokens=tokens,
        revocations=ConfigMapRevocations(api),
        registrations=Registrations(api, tokens, ca),
        mover=mover_for(settings.mover, api),
        addons=locate_addons(),
        statuses=AgentStatusMailbox(),
        wakeups=Wakeups(),
    )


def compose_local_infra(
    settings: LocalInfraSettings, api: Kr8sKube, clock: SystemClock, kubeconfig: Path
) -> LocalInfraRuntime:
    """The local provider on this host's machines directory and, with ``--capi-managers``, the
    real Cluster API managers against this cluster (kubeconfig target)."""
    toolchain = locate()
    provider = LocalInfraProvider(
        api,
        LocalMachineHost(toolchain, settings.machines_dir, clock),
        clock,
        random=random.Random().random,  # noqa: S311 - jitter
        free_port=free_port,
    )
    managers = None
    if settings.capi_managers:
        target = KubeconfigTarget(kubeconfig, toolchain, settings.state_dir / "capi-managers")
        managers = CapiManagers(target, directory=target.dir)
    return LocalInfraRuntime(provider, managers)


async def run_operator(  # noqa: PLR0915 - the composition root reads best as one sequence
    settings: OperatorSettings, stop: asyncio.Event | None = None
) -> int:
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT) if settings.handle_signals else ()

    def on_signal(sig: signal.Signals) -> None:
        log.info("signal received; stopping", extra={"signal": sig.name})
        stop.set()

    for sig in signals:
        loop.add_signal_handler(sig, on_signal, sig)
    # Requests over aiohttp (adapters/kube_http: a quarter of httpx's CPU per request), closed below.
    api = await connect_with_retry(settings.kubeconfig, lean=True)
    clock = SystemClock()
    metrics = OperatorMetrics()
    rng = random.Random()  # noqa: S311 - jitter, not crypto
    parts = compose_cell(settings.cell, api) if settings.cell is not None else None
    controller = ClusterController(
        api,
        settings.context,
        clock,
        random=rng.random,
        metrics=metrics,
        config=ControllerConfig(
            workers=settings.workers, resync_s=settings.resync_s, identity=settings.identity
        ),
        revocations=None if parts is None else parts.revocations,
        before_child_apply=None if parts is None else parts.registrations.ensure,
        on_unpivot=None if parts is None else parts.wakeups.put,
    )
    elector = LeaderElector(api, settings.identity, clock, settings.lease) if settings.leader_elect else None
    server = QuietServer(
        uvicorn.Config(
            probe_app(controller, elector, metrics),
            host=settings.health_host,
            port=settings.health_port,
            log_level="warning",
            lifespan="off",
        )
    )
    tasks = [asyncio.create_task(server.serve())]
    tasks += await controller.start_informers()
    log.info("operator started", extra={"identity": settings.identity, "cell": settings.context.self_name})
    rc = 0
    shutdown = _Shutdown(loop.time)
    cell: CellRuntime | None = None
    infra: LocalInfraRuntime | None = None
    try:
        if elector is not None:
            tasks.append(asyncio.create_task(elector.run()))
            leader_or_stop: list[asyncio.Task[Any]] = [
                asyncio.create_task(elector.is_leader.wait()),
                asyncio.create_task(stop.wait()),
            ]
            await asyncio.wait(leader_or_stop, return_when=asyncio.FIRST_COMPLETED)
            for task in leader_or_stop:
                task.cancel()
        if not stop.is_set() and settings.local_infra is not None:
            infra = compose_local_infra(
                settings.local_infra, api, clock, _kubeconfig_path(settings.kubeconfig)
            )
            await infra.start()
        if not stop.is_set() and settings.cell is not None and parts is not None:
            cell = CellRuntime(settings.cell, controller, _kubeconfig_path(settings.kubeconfig), parts)
            started = loop.time()
            await controller.wait_synced()
            log.info("informers synced", extra={"seconds": round(loop.time() - started, 3)})
            await cell.start()
        if not stop.is_set():
            log.info("starting workers", extra={"identity": settings.identity})
            workers = asyncio.create_task(controller.run_workers())
            waits: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
            if elector is not None:
                waits.append(asyncio.create_task(elector.lost.wait()))
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            for task in waits:
                task.cancel()
            if elector is not None and elector.lost.is_set():
                rc = 1
            controller.stop()
            with shutdown.step("workers"):
                try:
                    await asyncio.wait_for(workers, timeout=settings.grace_s)
                except TimeoutError:
                    log.warning("grace period over; abandoning in-flight reconciles")
    finally:
        if cell is not None:
            with shutdown.step("cell"):
                await cell.close()
        if infra is not None:
            with shutdown.step("local_infra"):
                await infra.close()
        if elector is not None:
            with shutdown.step("lease"):
                await elector.release()
        server.should_exit = True
        for task in tasks[1:]:
            task.cancel()
        with shutdown.step("tasks"):
            await asyncio.gather(*tasks, return_exceptions=True)
        for sig in signals:
            loop.remove_signal_handler(sig)
        await api.close()
        log.info(
            "operator stopped",
            extra={
                "identity": settings.identity,
                "rc": rc,
                **{f"shutdown_{step}_s": seconds for step, seconds in shutdown.seconds.items()},
            },
        )
    return rc


@attrs.define
class _Shutdown:
    """Seconds each shutdown step took, for the "operator stopped" log line: where a slow stop
    went (the in-flight reconciles, the cell's streams, the Cluster API managers)."""

    clock: Callable[[], float]
    seconds: dict[str, float] = attrs.field(factory=dict)

    @contextlib.contextmanager
    def step(self, name: str) -> Generator[None]:
        started = self.clock()
        try:
            yield
        finally:
            self.seconds[name] = round(self.clock() - started, 3)
