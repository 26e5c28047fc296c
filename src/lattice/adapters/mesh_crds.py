"""The real Istio, Cilium, Gateway API and external-dns CRDs fetched by scripts/fetch-mesh-crds.sh.

Versions are pinned in ``tools/mesh-versions.env``. The directory is ``$LATTICE_MESH_CRD_DIR``
when set, else ``$LATTICE_CACHE/crds/<key>`` with the key computed exactly as the script
computes it. A missing fetch raises :class:`~lattice.adapters.binaries.BinariesNotBuiltError`
naming the script; nothing falls back to stand-ins.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from lattice.adapters.binaries import (
    COMPLETE_MARKER,
    BinariesNotBuiltError,
    cache_root,
    find_repo_root,
    parse_env_file,
)
from lattice.domain import yaml_text

FETCH_SCRIPT = "scripts/fetch-mesh-crds.sh"
VERSIONS_FILE = "tools/mesh-versions.env"
DISCOVERY_CRDS: tuple[str, ...] = (
    "serviceentries.networking.istio.io",
    "authorizationpolicies.security.istio.io",
    "ciliumnetworkpolicies.cilium.io",
    "dnsendpoints.externaldns.k8s.io",
    "gatewayclasses.gateway.networking.k8s.io",
    "gateways.gateway.networking.k8s.io",
    "httproutes.gateway.networking.k8s.io",
    "referencegrants.gateway.networking.k8s.io",
)
"""The CRDs of every kind the discovery compilers generate (and what Gateway API needs with them)."""
_KEYS = ("ISTIO_API_VERSION", "CILIUM_VERSION", "GATEWAY_API_VERSION", "EXTERNAL_DNS_VERSION")


def mesh_crd_key(versions: Mapping[str, str]) -> str:
    """The cache directory name; must match scripts/fetch-mesh-crds.sh."""
    missing = [k for k in _KEYS if not versions.get(k)]
    if missing:
        raise ValueError(f"{VERSIONS_FILE} does not set {', '.join(missing)}")
    return (
        f"mesh-istio-{versions['ISTIO_API_VERSION']}-cilium-{versions['CILIUM_VERSION']}"
        f"-gwapi-{versions['GATEWAY_API_VERSION']}-xdns-{versions['EXTERNAL_DNS_VERSION']}"
    )


def locate_mesh_crds(repo_root: Path | None = None) -> Path:
    """The fetched CRD directory, checked for its completion marker."""
    env = os.environ.get("LATTICE_MESH_CRD_DIR")
    if env:
        directory = Path(env)
    else:
        root = repo_root if repo_root is not None else find_repo_root()
        if root is None:
            raise BinariesNotBuiltError(
                f"set LATTICE_MESH_CRD_DIR (`bash {FETCH_SCRIPT} --print-dir` prints it) or run "
                "from the Lattice repository"
            )
        key = mesh_crd_key(parse_env_file((root / VERSIONS_FILE).read_text()))
        directory = cache_root() / "crds" / key
    if not (directory / COMPLETE_MARKER).is_file():
        raise BinariesNotBuiltError(
            f"the mesh CRDs are not at {directory}: fetch them with `bash {FETCH_SCRIPT}`"
        )
    return directory


def load_mesh_crds(directory: Path, names: Iterable[str] | None = None) -> list[dict[str, Any]]:
    """Every CRD document under ``directory`` (sorted by file), or only those named ``names``
    (``<plural>.<group>``); KeyError names any that is not there."""
    found: dict[str, dict[str, Any]] = {}
    for path in sorted(directory.rglob("*.yaml")):
        for doc in yaml_text.load_all(path.read_text()):
            if isinstance(doc, dict) and doc.get("kind") == "CustomResourceDefinition":
                found[doc["metadata"]["name"]] = doc
    if names is None:
        return list(found.values())
    wanted = list(names)
    absent = [n for n in wanted if n not in found]
    if absent:
        raise KeyError(f"no CRD {', '.join(absent)} under {directory}")
    return [found[n] for n in wanted]
