"""What a new cluster receives, weighed and timed on a real control plane (docs/addons.md).

Builds the two payloads a cell sends a new child, with the real pieces: the registration
payload (the agent's objects and Cilium rendered by its chart with helm) and the bootstrap
payload (the Lattice CRDs and operator, the Cluster API CRDs of the local providers, Cilium's
CRDs, the LB-IPAM pool and L2 policy, Flux's install). Then applies the bootstrap payload to a
fresh real kube-apiserver with the agent's applier (dependency order, one wait for the CRDs),
again (idempotent), and, as the baseline, the same objects with ``kubectl apply
--server-side`` (CRDs first, ``kubectl wait --for condition=Established``, then the rest) on a
second fresh control plane, in the same run.

Prints one JSON line per figure: ``{"metric": ..., "value": ..., "unit": ...}``.
Usage (from a clone, after ``bash scripts/build-k8s.sh``, ``bash scripts/build-addons.sh`` and
``bash scripts/python-env.sh --dev``): ``PYTHONPATH=. .venv/bin/python benchmarks/payload.py``.
"""

from __future__ import annotations

import asyncio
import json
import statistics
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from lattice.adapters.addons_bundle import locate_addons
from lattice.adapters.agent_kube import KubeManifestApplier
from lattice.adapters.binaries import locate
from lattice.adapters.capi_crds import LOCAL_CAPI_PROVIDERS, load_providers
from lattice.adapters.controlplane import ControlPlane
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app import yamlio
from lattice.domain import addons, agent_payload, crds, deploy, models

VALUES_ENDPOINT = ("127.0.0.1", 6443)
NETWORKING = models.NetworkingSpec(default=models.AddressPool(cidr="172.18.255.0/28"))


def emit(metric: str, value: float, unit: str) -> None:
    print(json.dumps({"metric": metric, "value": round(value, 4), "unit": unit}), flush=True)


def capi_crds() -> list[dict[str, Any]]:
    yaml = YAML(typ="safe", pure=True)
    out: list[dict[str, Any]] = []
    for provider in load_providers(locate().crd_dir, LOCAL_CAPI_PROVIDERS):
        for path in provider.files:
            out.extend(d for d in yaml.load_all(path.read_text()) if d)
    return out


def main() -> None:
    bundle = locate_addons()
    renders = []
    cilium: list[dict[str, Any]] = []
    for _ in range(5):
        started = time.perf_counter()
        cilium = bundle.render_cilium("bench", NETWORKING, VALUES_ENDPOINT, "1.36.3")
        renders.append(time.perf_counter() - started)
    emit("cilium_render_p50", statistics.median(renders), "s")
    agent = agent_payload.agent_manifests(
        agent_payload.AgentPayloadParams(
            cluster_name="bench",
            grpc_endpoint="127.0.0.1:50051",
            image="ghcr.io/lattice-dev/lattice:0.1.0",
            certificate_pem="-" * 700,
            ca_bundle_pem="-" * 700,
        )
    )
    registration = agent_payload.render_yaml_stream([*agent, *cilium])
    emit("payload_registration_bytes", len(registration.encode()), "bytes")
    emit("payload_registration_objects", len(agent) + len(cilium), "objects")

    lattice_part = [
        *crds.all_crds(),
        *deploy.operator_manifests("ghcr.io/lattice-dev/lattice:0.1.0", replicas=1),
    ]
    capi_part = capi_crds()
    addon_part = [*bundle.cilium_crds(), *addons.network_objects("bench", NETWORKING), *bundle.flux_install()]
    streams = (
        yamlio.dump_all(lattice_part).encode(),
        json.dumps({"apiVersion": "v1", "kind": "List", "items": capi_part}).encode(),
        json.dumps({"apiVersion": "v1", "kind": "List", "items": addon_part[:22]}).encode(),
        yamlio.dump_all(addon_part[22:]).encode(),
    )
    emit("payload_bootstrap_bytes", sum(len(s) for s in streams), "bytes")
    emit("payload_bootstrap_addons_bytes", len(streams[2]) + len(streams[3]), "bytes")
    objects = [*lattice_part, *capi_part, *addon_part]
    emit("payload_bootstrap_objects", len(objects), "objects")

    with tempfile.TemporaryDirectory(prefix="lattice-bench-payload-") as scratch:
        toolchain = locate()
        ours = ControlPlane.create("payload-a", base_dir=Path(scratch), toolchain=toolchain).start()
        theirs = ControlPlane.create("payload-b", base_dir=Path(scratch), toolchain=toolchain).start()
        try:

            async def apply_twice() -> tuple[float, float]:
                api = await Kr8sKube.connect(str(ours.kubeconfig))
                applier = KubeManifestApplier(api)
                started = time.perf_counter()
                await applier.apply(streams)
                first = time.perf_counter() - started
                started = time.perf_counter()
                await applier.apply(streams)
                return first, time.perf_counter() - started

            first, again = asyncio.run(apply_twice())
            emit("payload_apply_agent", first, "s")
            emit("payload_reapply_agent", again, "s")

            ordered = [s.obj for s in addons.apply_steps(objects) if isinstance(s, addons.Apply)]
            definitions = [o for o in ordered if o["kind"] in ("Namespace", "CustomResourceDefinition")]
            rest = [o for o in ordered if o["kind"] not in ("Namespace", "CustomResourceDefinition")]
            kubectl = [str(toolchain.kubectl), f"--kubeconfig={theirs.kubeconfig}"]
            started = time.perf_counter()
            for part in (definitions, rest):
                subprocess.run(
                    [*kubectl, "apply", "--server-side", "--field-manager=bench", "-f", "-"],
                    input=yamlio.dump_all(part),
                    text=True,
                    check=True,
                    capture_output=True,
                )
                if part is definitions:
                    subprocess.run(
                        [*kubectl, "wait", "--for", "condition=Established", "crd", "--all", "--timeout=60s"],
                        check=True,
                        capture_output=True,
                    )
            baseline = time.perf_counter() - started
            emit("payload_apply_kubectl_baseline", baseline, "s")
            emit("payload_apply_agent_vs_kubectl", first / baseline, "ratio")
        finally:
            ours.stop()
            theirs.stop()


if __name__ == "__main__":
    main()
