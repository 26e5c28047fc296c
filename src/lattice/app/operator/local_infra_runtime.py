"""What an operator started with ``--local-infra`` runs besides its controller: the
contract-shaped local infrastructure provider and, with ``--capi-managers``, the real Cluster
API managers against its own cluster (the local stand-in for their Deployments: a child that
has pivoted runs its own, as every cluster must after its pivot).

Starting the managers waits for the CAPI CRDs (a child receives them in its bootstrap
manifests); a failure is logged and retried, never fatal to the operator.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import anyio.to_thread
from attrs import frozen

from lattice.adapters.capi_managers import CapiManagers, CapiManagersError
from lattice.adapters.controlplane import ControlPlaneError
from lattice.app.local_infra import LocalInfraProvider

log = logging.getLogger("lattice.local_infra")

MANAGERS_RETRY_S = 5.0


@frozen
class LocalInfraSettings:
    machines_dir: Path  # shared by every provider on this host: its "cloud account"
    state_dir: Path  # the managers' certificates and logs
    capi_managers: bool = False


class LocalInfraRuntime:
    """Runs the provider and the managers the composition root built
    (:func:`lattice.app.operator.process.compose_local_infra`); constructs neither."""

    def __init__(self, provider: LocalInfraProvider, managers: CapiManagers | None) -> None:
        self.provider = provider
        self.managers = managers
        self._stop = asyncio.Event()
        self._managers_up = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._tasks.append(asyncio.create_task(self.provider.run(self._stop), name="local-infra"))
        if self.managers is not None:
            self._tasks.append(asyncio.create_task(self._run_managers(self.managers), name="capi-managers"))
            # Nothing is applied before the managers' webhooks can default and validate it.
            await self._managers_up.wait()

    async def _run_managers(self, managers: CapiManagers) -> None:
        while not self._stop.is_set():
            try:
                await anyio.to_thread.run_sync(managers.start)
            except (CapiManagersError, ControlPlaneError, OSError) as exc:
                log.warning(
                    "the Cluster API managers did not start; retrying", extra={"error": str(exc)[:2000]}
                )
                await anyio.to_thread.run_sync(lambda: managers.stop(unregister=False))
                try:
                    await asyncio.wait_for(self._stop.wait(), MANAGERS_RETRY_S)
                except TimeoutError:
                    continue
            else:
                log.info("the Cluster API managers run against this cluster", extra={"pids": managers.pids()})
                self._managers_up.set()
                return

    async def close(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.managers is not None:
            await anyio.to_thread.run_sync(self.managers.stop)
