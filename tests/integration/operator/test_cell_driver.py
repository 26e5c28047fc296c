"""The cell's driver of a child's runtime flow against a real cell and a real agent: the operator
runs with its cell (the gRPC hub over mutual TLS, its CA under the state directory) against a
real API server, and an agent with a certificate of that CA dials it on loopback.

What the agent does with a command is its own ports' business (the recording doubles of
:mod:`lattice.testing.agents`, which fail on demand); the stream, the hub, the driver and the
status owner are the real ones. Here the agent cannot apply the bootstrap payload, then can; the
pivot then waits for Cluster API (no controllers run here), and says so; deleted then, the
cluster's pivot is cancelled and it is deleted here."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from lattice.adapters import tls
from lattice.adapters.controlplane import ControlPlane, free_port
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app.operator.cell_role import CellSettings, load_or_create_ca
from lattice.testing import agents as agent_doubles
from tests.integration.agent.conftest import Pki, running_agent
from tests.integration.conftest import events_of
from tests.integration.operator.conftest import absent, cluster, eventually, lc_ref, operator

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(180)]

REFUSAL = "applying Namespace lattice-system: forbidden by the test's agent"


def agent_identity(state_dir: Path, name: str) -> tls.TlsFiles:
    """What registration gives a child: its own key, a certificate the cell's CA signed for it
    (the CA the operator created at start), and the bundle that verifies the cell."""
    pki_dir = state_dir / "pki"
    server = tls.TlsFiles(cert=pki_dir / "server.crt", key=pki_dir / "server.key", ca=pki_dir / "ca.crt")
    return Pki(load_or_create_ca(pki_dir), state_dir.parent, server).agent_files(name)


async def test_a_bootstrap_the_agent_cannot_apply_is_shown_and_retried_until_it_can(
    cell_control_plane: ControlPlane, tmp_path: Path
) -> None:
    cp = cell_control_plane
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    state_dir = tmp_path / "cell"
    cell = CellSettings(
        host="127.0.0.1", bootstrap_port=free_port(), grpc_port=free_port(), state_dir=state_dir
    )

    async def status(predicate: Any) -> dict[str, Any] | None:
        found = (await api.get(lc_ref("boot-1"))).get("status") or {}
        return found if predicate(found) else None

    async with operator(cp, cell=cell):
        await api.create(cluster("boot-1", workers=1))
        await eventually(
            lambda: status(lambda s: s.get("phase") == "Provisioning"), within=60, what="Provisioning"
        )
        await eventually(
            lambda: asyncio.to_thread((state_dir / "pki" / "ca.crt").exists), what="the cell's PKI"
        )
        applier = agent_doubles.RecordingManifestApplier(fail_with=REFUSAL)
        async with running_agent(
            agent_identity(state_dir, "boot-1"), "boot-1", cell.grpc_port, applier=applier
        ):
            # Connected: Bootstrapping; the payload is sent and refused, which the status and a
            # Warning Event say, with the agent's words.
            failed = await eventually(
                lambda: status(lambda s: s.get("message", "").startswith("bootstrap payload not applied")),
                within=60,
                what="the refused bootstrap shown",
            )
            assert failed["phase"] == "Bootstrapping"
            assert failed["message"] == f"bootstrap payload not applied: {REFUSAL}"
            bootstrapped = next(c for c in failed["conditions"] if c["type"] == "Bootstrapped")
            assert (bootstrapped["status"], bootstrapped["reason"]) == ("False", "ApplyFailed")
            assert failed["agent"]["connected"] is True

            async def warned() -> bool:
                events = await asyncio.to_thread(events_of, cp, "boot-1")
                return any(e["reason"] == "BootstrapFailed" and REFUSAL in e["message"] for e in events)

            await eventually(warned, what="a BootstrapFailed Event")

            # The agent can apply it now: the driver's next attempt goes through.
            applier.fail_with = None
            done = await eventually(
                lambda: status(lambda s: s.get("phase") == "Pivoting"), within=60, what="bootstrapped"
            )
            bootstrapped = next(c for c in done["conditions"] if c["type"] == "Bootstrapped")
            assert bootstrapped["status"] == "True"
            assert len(applier.applied) == 1, "the payload reached the agent once it could apply it"
            assert all(applier.applied[0])

            # No Cluster API controllers run here, so clusterctl's preflight would refuse the
            # cluster: the pivot waits, and the status and an Event say on what.
            waiting = await eventually(
                lambda: status(lambda s: s.get("message", "").startswith("pivot waits for Cluster API")),
                what="the pivot's wait shown",
            )
            assert waiting["message"] == (
                "pivot waits for Cluster API: Cluster boot-1: the control plane is not initialized yet; "
                "Cluster boot-1: the infrastructure is not provisioned yet"
            )
            assert waiting["pivot"] == {"step": "Exporting", "attempt": 1}
            pivoted = next(c for c in waiting["conditions"] if c["type"] == "Pivoted")
            assert (pivoted["status"], pivoted["reason"]) == ("False", "WaitingForClusterAPI")

            async def told() -> bool:
                events = await asyncio.to_thread(events_of, cp, "boot-1")
                return any(e["reason"] == "PivotWaiting" for e in events)

            await eventually(told, what="a PivotWaiting Event")

        # Its agent gone, then deleted while its pivot waits: nothing left this cell, so the
        # cell's driver, woken by the deletion, cancels the pivot and the cluster is deleted here,
        # as one never pivoted (it used to wait for the pivot, which waits for Cluster API for
        # ever here).
        await eventually(
            lambda: status(lambda s: (s.get("agent") or {}).get("connected") is False), what="the agent gone"
        )
        await api.delete(lc_ref("boot-1"))

        await eventually(lambda: absent(api, "boot-1"), within=60, what="boot-1 deleted")
        reasons = [e["reason"] for e in await asyncio.to_thread(events_of, cp, "boot-1")]
        assert "PivotCancelled" in reasons
        assert "Deleted" in reasons
        namespaces = {n["metadata"]["name"]: n for n in (await api.list("v1", "Namespace")).items}
        left = namespaces.get("capi-boot-1")
        assert left is None or left["metadata"].get("deletionTimestamp"), "its namespace goes too"
