"""The add-on bundle as scripts/build-addons.sh builds it, read with libyaml (PyYAML's
CSafeLoader, for speed), gives exactly the objects Kubernetes' own reader gives (kubectl, which
reads YAML 1.1 through sigs.k8s.io/yaml, against a real API server): every generated file a cell
sends its children, helm's rendering of Cilium's chart and of Lattice's own.

Not ruamel's: it reads YAML 1.2, where ``defaultMode: 0400`` in Cilium's chart is the decimal
400 (mode 0620), not 0o400, as this test found. The Cilium a cell sent its children had three
volumes group-writable (two of certificates) until the bundle moved to libyaml."""

from __future__ import annotations

import json
import subprocess
from typing import Any

import pytest

from lattice.adapters import addons_bundle
from lattice.adapters.addons_bundle import HelmRenderer, RenderError, locate_addons
from lattice.adapters.chart import locate_operator_chart
from lattice.adapters.controlplane import ControlPlane
from lattice.domain import addons, models, yaml_text
from lattice.testing.fixtures import ControlPlaneFactory

pytestmark = pytest.mark.integration


def as_kubernetes_reads(cp: ControlPlane, text: str) -> list[dict[str, Any]]:
    """``text``'s objects as kubectl reads them (``create --dry-run=client``: nothing is sent)."""
    argv = [str(cp.toolchain.kubectl), f"--kubeconfig={cp.kubeconfig}", "create", "--dry-run=client"]
    done = subprocess.run(
        [*argv, "-o", "json", "-f", "-"],
        input=text,
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    decoder, out, at = json.JSONDecoder(), done.stdout, 0
    objects = []
    while out[at:].strip():
        at += len(out[at:]) - len(out[at:].lstrip())
        obj, at = decoder.raw_decode(out, at)
        objects.append(obj)
    return objects


def test_the_bundle_and_helms_output_read_as_kubernetes_reads_them(
    control_plane_factory: ControlPlaneFactory,
) -> None:
    cp = control_plane_factory.one()
    bundle = locate_addons()
    helm = HelmRenderer(bundle.helm)
    networking = models.NetworkingSpec(default=models.AddressPool(cidr="172.18.255.0/28"))
    cilium_values = addons.cilium_values("parity", networking, ("127.0.0.1", 6443))
    texts = {
        "cilium": helm.render_text(
            bundle.cilium_chart, release="cilium", namespace="kube-system", values=cilium_values
        ),
        "lattice": helm.render_text(
            locate_operator_chart().chart,
            release="lattice",
            namespace="lattice-system",
            values={},
            include_crds=True,
        ),
        "flux": (bundle.root / "flux" / "install.yaml").read_text(),
        "cilium crds": "\n---\n".join(
            p.read_text() for p in sorted((bundle.root / "cilium" / "crds").rglob("*.yaml"))
        ),
    }
    for name, text in texts.items():
        objects = addons_bundle._load_all(text, name)
        assert len(objects) > 3, name
        assert objects == as_kubernetes_reads(cp, text), name

    # What ruamel (YAML 1.2) got wrong, and libyaml does not.
    cilium = addons_bundle._load_all(texts["cilium"], "cilium")
    modes = [
        v[kind]["defaultMode"]
        for o in cilium
        if o["kind"] == "DaemonSet"
        for v in o["spec"]["template"]["spec"]["volumes"]
        for kind in ("projected", "configMap", "secret")
        if "defaultMode" in v.get(kind, {})
    ]
    assert modes
    assert set(modes) == {0o400}
    assert 400 in [
        v.get("projected", {}).get("defaultMode")
        for o in yaml_text.load_all(texts["cilium"])
        if o["kind"] == "DaemonSet"
        for v in o["spec"]["template"]["spec"]["volumes"]
    ]
    assert bundle.cilium_crds() == addons_bundle._load_all(texts["cilium crds"], "crds")


def test_a_bundle_file_that_is_not_yaml_or_not_objects_is_named() -> None:
    with pytest.raises(RenderError, match=r"(?s)flux/install.yaml: not YAML: .*line 2, column 1"):
        addons_bundle._load_all("a: [b\n", "flux/install.yaml")
    with pytest.raises(RenderError, match=r"crd.yaml: a document is not a Kubernetes object"):
        addons_bundle._load_all("---\nkind: A\n---\n- a list\n", "crd.yaml")
    assert addons_bundle._load_all("---\n---\nkind: A\n", "x") == [{"kind": "A"}]
