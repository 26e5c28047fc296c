"""What ``clusterctl move`` moves for a local cluster, as kubectl lists it (the pivot tests)."""

from __future__ import annotations

from typing import Any

# The kinds labelled for move, plus Secrets (only the soft-owned ones move).
MOVED_KINDS = ",".join(
    [
        "clusters.cluster.x-k8s.io",
        "kubeadmcontrolplanes",
        "machinedeployments",
        "kubeadmconfigtemplates",
        "machines.cluster.x-k8s.io",
        "localclusters",
        "localmachinetemplates",
        "localmachines",
        "secrets",
    ]
)
SOFT_OWNED_SECRETS = ("kubeconfig", "ca", "etcd", "sa", "proxy", "apiserver-etcd-client")


def move_graph(items: list[dict[str, Any]], cluster: str) -> list[dict[str, Any]]:
    """``items`` (``kubectl get MOVED_KINDS``) less the Secrets clusterctl does not move."""
    secrets = {f"{cluster}-{suffix}" for suffix in SOFT_OWNED_SECRETS}
    return [o for o in items if o["kind"] != "Secret" or o["metadata"]["name"] in secrets]
