"""The bootstrap payload against a real API server: every object Lattice sends a new cluster
(Cilium rendered by its own chart with helm, Cilium's CRDs, the cluster's LB-IPAM pool and L2
policy, the Flux install) is accepted by the real apiserver and the real CRDs' schemas, in the
order :func:`lattice.domain.addons.apply_steps` gives, twice (idempotent); a failure names the
object and carries the apiserver's words."""

from __future__ import annotations

import json
import random
from typing import Any

import pytest

from lattice.adapters.addons_bundle import locate_addons
from lattice.adapters.agent_kube import KubeManifestApplier
from lattice.adapters.kube_kr8s import Kr8sKube
from lattice.app import yamlio
from lattice.domain import addons, models
from lattice.ports.agent import ExecutionError
from lattice.ports.kube import ResourceRef
from lattice.testing.fixtures import ControlPlaneFactory

pytestmark = [pytest.mark.integration, pytest.mark.anyio, pytest.mark.timeout(180)]


def _payload() -> list[dict[str, Any]]:
    bundle = locate_addons()
    networking = models.NetworkingSpec(default=models.AddressPool(cidr="172.18.255.0/28"))
    cilium = bundle.render_cilium("pay", networking, ("127.0.0.1", 6443), "1.36.3")
    return [
        *cilium,
        *bundle.cilium_crds(),
        *addons.network_objects("pay", networking),
        *bundle.flux_install(),
    ]


async def test_the_whole_payload_is_accepted_in_any_order_and_twice(
    control_plane_factory: ControlPlaneFactory,
) -> None:
    cp = control_plane_factory.one()
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    payload = _payload()
    kinds = {str(o["kind"]) for o in payload}
    assert {"DaemonSet", "CiliumLoadBalancerIPPool", "CiliumL2AnnouncementPolicy", "Deployment"} <= kinds
    shuffled = list(payload)
    random.Random(7).shuffle(shuffled)  # the applier, not the sender, owns the order
    streams = (
        yamlio.dump_all(shuffled[:40]).encode(),
        json.dumps({"kind": "List", "items": shuffled[40:]}).encode(),
    )
    applier = KubeManifestApplier(api)
    await applier.apply(streams)
    await applier.apply(streams)  # idempotent: the same payload again changes nothing and fails nothing
    pool = await api.get(ResourceRef("cilium.io/v2", "CiliumLoadBalancerIPPool", "default"))
    assert pool["spec"]["blocks"] == [{"cidr": "172.18.255.0/28"}]
    daemonset = await api.get(ResourceRef("apps/v1", "DaemonSet", "cilium", "kube-system"))
    assert daemonset["spec"]["template"]["spec"]["containers"][0]["image"].startswith(
        "quay.io/cilium/cilium:"
    )
    for name in addons.FLUX_CONTROLLERS:
        deployment = await api.get(ResourceRef("apps/v1", "Deployment", name, addons.FLUX_NAMESPACE))
        assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == name


async def test_a_refused_object_is_named_with_the_apiservers_words(
    control_plane_factory: ControlPlaneFactory,
) -> None:
    cp = control_plane_factory.one()
    api = await Kr8sKube.connect(str(cp.kubeconfig))
    bad_pool = addons.lb_ip_pool("x", "172.18.255.0/28")
    bad_pool["spec"] = {"blocks": "not a list"}
    crds = [
        c
        for c in locate_addons().cilium_crds()
        if c["metadata"]["name"] == "ciliumloadbalancerippools.cilium.io"
    ]
    with pytest.raises(ExecutionError) as caught:
        await KubeManifestApplier(api).apply((yamlio.dump_all([bad_pool, *crds]).encode(),))
    message = str(caught.value)
    assert message.startswith("applying CiliumLoadBalancerIPPool default: "), message
    assert "spec.blocks" in message, message

    with pytest.raises(ExecutionError) as caught:
        await KubeManifestApplier(api).apply((b"apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",))
    assert str(caught.value) == (
        "the payload holds objects that cannot be applied: object 0 (ConfigMap): metadata.name: required"
    )


async def test_a_crd_that_never_becomes_established_is_reported(
    control_plane_factory: ControlPlaneFactory,
) -> None:
    cp = control_plane_factory.one()
    api = await Kr8sKube.connect(str(cp.kubeconfig))

    def crd(plural: str) -> dict[str, Any]:
        return {
            "apiVersion": "apiextensions.k8s.io/v1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": f"{plural}.example.com"},
            "spec": {
                "group": "example.com",
                "scope": "Cluster",
                "names": {
                    "kind": "Widget",
                    "plural": plural,
                    "singular": plural[:-1],
                    "listKind": "WidgetList",
                },
                "versions": [
                    {
                        "name": "v1",
                        "served": True,
                        "storage": True,
                        "schema": {"openAPIV3Schema": {"type": "object"}},
                    }
                ],
            },
        }

    await KubeManifestApplier(api).apply((yamlio.dump_all([crd("widgets")]).encode(),))
    # A second CRD claiming the same kind is never accepted, so never Established.
    widget = {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}}
    with pytest.raises(ExecutionError) as caught:
        await KubeManifestApplier(api, established_timeout=3).apply(
            (yamlio.dump_all([widget, crd("gadgets")]).encode(),)
        )
    message = str(caught.value)
    assert message.startswith("CustomResourceDefinition gadgets.example.com is not Established after 3s: "), (
        message
    )
    assert "NamesAccepted=False" in message, message


def test_cilium_renders_the_same_every_time() -> None:
    """Hubble's certificates come from certgen, not the chart: re-applying changes nothing."""
    first, second = _payload(), _payload()
    assert first == second
    assert "CronJob" in {str(o["kind"]) for o in first}
