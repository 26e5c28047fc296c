"""How the real Cluster API managers run outside a cluster: flags, webhooks, conversion.

Pure: the adapter (:mod:`lattice.adapters.capi_managers`) starts the processes and applies what
these functions return. The layout follows what ``clusterctl init`` installs (a
``capi-``/``capi-kubeadm-bootstrap-``/``capi-kubeadm-control-plane-`` name prefix per provider,
conversion webhooks on every CRD the provider's kustomization patches) with the one change
envtest makes for a manager that is not behind a Service: each webhook's ``clientConfig``
points at ``https://<host>:<port><path>`` with the CA bundle of a generated serving
certificate instead of at ``service: webhook-service``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from attrs import frozen

from lattice.domain.endpoint import Endpoint

__all__ = [
    "MANAGERS",
    "WEBHOOK_KINDS",
    "Manager",
    "ManagerError",
    "Ports",
    "conversion_patch",
    "conversion_plurals",
    "manager_argv",
    "webhook_configurations",
    "without_conversion",
]

WEBHOOK_KINDS = ("MutatingWebhookConfiguration", "ValidatingWebhookConfiguration")
CRD_API_VERSION = "apiextensions.k8s.io/v1"
_PATCH_FILE = re.compile(r"^(?:.*/)?webhook_in_([a-z0-9]+)\.yaml$")


class ManagerError(ValueError):
    """Upstream manifests that do not have the shape this module relies on."""


@frozen
class Manager:
    """One of the three managers: its binary, the provider whose CRDs it serves, its prefix,
    and flags of its own (after the common ones)."""

    binary: str
    provider: str
    prefix: str
    flags: tuple[str, ...] = ()


KCP_ETCD_FLAGS = ("--etcd-dial-timeout-duration=1s", "--etcd-call-timeout-duration=1s")
"""KCP reaches each control-plane machine's etcd through the API server's ``pods/portforward``,
which the API server passes to the node's kubelet. The local machines' kubelet stand-in does not
serve port-forward, so every etcd call of KCP fails; with its defaults (dial 10 s, call 15 s)
each KCP reconcile that asks etcd (the conditions, a deletion's pre-terminate hook) first waits
15 s, two or three times per deleted cluster. On loopback a real answer takes milliseconds: 1 s
is ample (3 s gave a deletion 2.6 s more, in one E2E run each)."""

MANAGERS: tuple[Manager, ...] = (
    Manager("capi-controller-manager", "cluster-api", "capi-"),
    Manager("capi-kubeadm-bootstrap-controller-manager", "bootstrap-kubeadm", "capi-kubeadm-bootstrap-"),
    Manager(
        "capi-kubeadm-control-plane-controller-manager",
        "control-plane-kubeadm",
        "capi-kubeadm-control-plane-",
        KCP_ETCD_FLAGS,
    ),
)
"""In start order; the names are the Deployments ``clusterctl init`` creates."""


@frozen
class Ports:
    webhook: int
    health: int
    diagnostics: int


def manager_argv(
    binary: str,
    *,
    kubeconfig: str,
    cert_dir: str,
    host: str,
    ports: Ports,
    verbosity: int = 2,
    extra: Sequence[str] = (),
) -> list[str]:
    """The command line of one manager outside a cluster.

    Leader election stays off (the default): outside a cluster controller-runtime needs a
    ``LeaderElectionNamespace`` the managers never set, and one replica runs per cluster.
    The diagnostics (metrics) endpoint serves plain HTTP on loopback only.
    """
    return [
        binary,
        f"--kubeconfig={kubeconfig}",
        f"--webhook-port={ports.webhook}",
        f"--webhook-cert-dir={cert_dir}",
        f"--health-addr={Endpoint(host, ports.health)}",
        f"--diagnostics-address={Endpoint(host, ports.diagnostics)}",
        "--insecure-diagnostics=true",
        "--leader-elect=false",
        f"--v={verbosity}",
        *extra,
    ]


def _docs(manifests: Iterable[Any]) -> list[Mapping[str, Any]]:
    return [doc for doc in manifests if isinstance(doc, Mapping)]


def webhook_configurations(
    manifests: Iterable[Any], *, prefix: str, base_url: str, ca_bundle: str
) -> list[dict[str, Any]]:
    """The provider's ``config/webhook/manifests.yaml`` as registered for a local manager.

    Every webhook must name a service path (that is how kubebuilder writes them); one that
    does not is an error, never silently dropped.
    """
    out: list[dict[str, Any]] = []
    problems: list[str] = []
    for doc in _docs(manifests):
        kind = doc.get("kind")
        if kind not in WEBHOOK_KINDS:
            problems.append(f"unexpected kind {kind!r} in the webhook manifests")
            continue
        name = str((doc.get("metadata") or {}).get("name") or "")
        if not name:
            problems.append(f"a {kind} without metadata.name")
            continue
        webhooks: list[dict[str, Any]] = []
        for index, webhook in enumerate(doc.get("webhooks") or []):
            service = (webhook.get("clientConfig") or {}).get("service") or {}
            path = service.get("path")
            if not isinstance(path, str) or not path.startswith("/"):
                problems.append(f"{kind} {name}: webhooks[{index}] has no clientConfig.service.path")
                continue
            webhooks.append({**webhook, "clientConfig": {"url": base_url + path, "caBundle": ca_bundle}})
        out.append(
            {
                "apiVersion": doc.get("apiVersion", "admissionregistration.k8s.io/v1"),
                "kind": kind,
                "metadata": {"name": prefix + name, "labels": {"app.kubernetes.io/part-of": "lattice"}},
                "webhooks": webhooks,
            }
        )
    if problems:
        raise ManagerError("; ".join(problems))
    if not out:
        raise ManagerError("the webhook manifests hold no webhook configuration")
    return out


def conversion_plurals(kustomization: Mapping[str, Any]) -> list[str]:
    """The CRD plurals whose conversion webhook a provider's ``config/crd/kustomization.yaml``
    turns on (its ``patches/webhook_in_<plural>.yaml`` entries)."""
    plurals: list[str] = []
    for patch in kustomization.get("patches") or kustomization.get("patchesStrategicMerge") or []:
        path = patch.get("path") if isinstance(patch, Mapping) else patch
        match = _PATCH_FILE.match(str(path or ""))
        if match:
            plurals.append(match.group(1))
    return plurals


def conversion_patch(crd_name: str, *, url: str, ca_bundle: str) -> dict[str, Any]:
    """A partial CRD (for server-side apply) that sends conversions to ``url``."""
    return {
        "apiVersion": CRD_API_VERSION,
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {
            "conversion": {
                "strategy": "Webhook",
                "webhook": {
                    "conversionReviewVersions": ["v1"],
                    "clientConfig": {"url": url, "caBundle": ca_bundle},
                },
            }
        },
    }


def without_conversion(crd_name: str) -> dict[str, Any]:
    """The partial CRD that takes conversion back to ``None`` (the managers are going away)."""
    return {
        "apiVersion": CRD_API_VERSION,
        "kind": "CustomResourceDefinition",
        "metadata": {"name": crd_name},
        "spec": {"conversion": {"strategy": "None"}},
    }
