"""Where the real Kubernetes binaries and Cluster API CRDs built by scripts/build-k8s.sh live.

Versions come from ``tools/versions.env`` in the repository (the one place they are pinned).
The bin dir is ``$LATTICE_BIN_DIR`` when set, else ``$LATTICE_CACHE/bin/<key>`` with the key
computed exactly as the build script computes it. The CRD dir is ``$LATTICE_CRD_DIR`` when
set, else ``$LATTICE_CACHE/crds/<versions>``. An installed package that does not sit in the
repository finds the versions in the ``build-info.txt`` of ``$LATTICE_BIN_DIR``.

Nothing here falls back to anything else: a missing build raises :class:`BinariesNotBuiltError`
naming the script that builds it.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

import attrs

__all__ = [
    "BINARIES",
    "BUILD_SCRIPT",
    "CAPI_MANAGERS",
    "BinariesNotBuiltError",
    "Toolchain",
    "Versions",
    "bin_key",
    "cache_root",
    "crd_key",
    "find_repo_root",
    "locate",
    "parse_env_file",
    "read_versions",
]

CAPI_MANAGERS: tuple[str, ...] = (
    "capi-controller-manager",
    "capi-kubeadm-bootstrap-controller-manager",
    "capi-kubeadm-control-plane-controller-manager",
)
"""The real Cluster API managers (packages core, bootstrap/kubeadm, controlplane/kubeadm)."""

BINARIES: tuple[str, ...] = (
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubectl",
    "etcd",
    "clusterctl",
    *CAPI_MANAGERS,
)
BUILD_SCRIPT = "scripts/build-k8s.sh"
VERSIONS_FILE = "tools/versions.env"
BUILD_INFO = "build-info.txt"
COMPLETE_MARKER = ".complete"
WEBHOOKS_MARKER = "control-plane-kubeadm/webhook.yaml"
"""Collected since the CAPI managers run: an older collection lacks it and is collected again."""


class BinariesNotBuiltError(RuntimeError):
    """The binaries or CRDs are not where they should be; the message says how to build them."""


@attrs.frozen
class Versions:
    """The pinned versions of ``tools/versions.env``."""

    kubernetes: str
    kubernetes_staging: str
    etcd: str
    capi: str
    capa: str
    capg: str
    capz: str
    go: str

    @classmethod
    def from_env(cls, values: Mapping[str, str]) -> Versions:
        keys = {
            "kubernetes": "KUBERNETES_VERSION",
            "kubernetes_staging": "KUBERNETES_STAGING_VERSION",
            "etcd": "ETCD_VERSION",
            "capi": "CAPI_VERSION",
            "capa": "CAPA_VERSION",
            "capg": "CAPG_VERSION",
            "capz": "CAPZ_VERSION",
            "go": "GO_VERSION",
        }
        missing = sorted(env for env in keys.values() if not values.get(env))
        if missing:
            raise BinariesNotBuiltError(f"{VERSIONS_FILE} does not set {', '.join(missing)}")
        return cls(**{field: values[env] for field, env in keys.items()})


def parse_env_file(text: str) -> dict[str, str]:
    """Parse shell-sourcable ``KEY=VALUE`` lines (comments, blanks and quotes allowed)."""
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        line = line.removeprefix("export ").strip()
        key, sep, value = line.partition("=")
        if not sep or not key.replace("_", "").isalnum() or key[0].isdigit():
            raise ValueError(f"line {number}: not a KEY=VALUE assignment: {raw!r}")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        values[key] = value
    return values


def _is_repo_root(path: Path) -> bool:
    return (path / VERSIONS_FILE).is_file() and (path / BUILD_SCRIPT).is_file()


def find_repo_root(start: Path | None = None) -> Path | None:
    """The Lattice repository holding ``start`` (default: the cwd, then this module's path)."""
    env = os.environ.get("LATTICE_REPO_ROOT")
    if env:
        root = Path(env)
        if not _is_repo_root(root):
            raise BinariesNotBuiltError(f"LATTICE_REPO_ROOT={env} has no {VERSIONS_FILE} and {BUILD_SCRIPT}")
        return root
    starts = [start] if start is not None else [Path.cwd(), Path(__file__).resolve().parent]
    for begin in starts:
        for candidate in (begin, *begin.parents):
            if _is_repo_root(candidate):
                return candidate
    return None


def cache_root() -> Path:
    """``$LATTICE_CACHE``, else ``~/.cache/lattice`` (as in scripts/build-k8s.sh)."""
    env = os.environ.get("LATTICE_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "lattice"


def read_versions(repo_root: Path | None = None) -> Versions:
    """The pinned versions: from the repository, else from the build info of $LATTICE_BIN_DIR."""
    root = repo_root if repo_root is not None else find_repo_root()
    if root is not None:
        return Versions.from_env(parse_env_file((root / VERSIONS_FILE).read_text()))
    env_bin = os.environ.get("LATTICE_BIN_DIR")
    if env_bin and (Path(env_bin) / BUILD_INFO).is_file():
        return Versions.from_env(parse_env_file((Path(env_bin) / BUILD_INFO).read_text()))
    raise BinariesNotBuiltError(
        f"cannot find {VERSIONS_FILE}: run from the Lattice repository, set LATTICE_REPO_ROOT, "
        f"or set LATTICE_BIN_DIR to a directory built by {BUILD_SCRIPT}"
    )


def _hashed_files(root: Path) -> Iterable[str]:
    names = {VERSIONS_FILE, BUILD_SCRIPT}
    for path in (root / "tools").rglob("*"):
        if path.is_file() and (path.suffix == ".go" or path.name in ("go.mod", "go.sum")):
            names.add(path.relative_to(root).as_posix())
    return sorted(names, key=lambda name: name.encode())


def bin_key(repo_root: Path) -> str:
    """The cache key of a build: the versions and a hash of tools/ and the build script.

    Must equal ``bash scripts/build-k8s.sh --print-key`` (a unit test checks it).
    """
    versions = read_versions(repo_root)
    listing = "".join(
        f"{hashlib.sha256((repo_root / name).read_bytes()).hexdigest()}  {name}\n"
        for name in _hashed_files(repo_root)
    )
    digest = hashlib.sha256(listing.encode()).hexdigest()[:12]
    return f"k8s-{versions.kubernetes}-etcd-{versions.etcd}-capi-{versions.capi}-{digest}"


def crd_key(versions: Versions) -> str:
    """The name of the CRD directory, as scripts/build-k8s.sh names it."""
    return f"capi-{versions.capi}-capa-{versions.capa}-capg-{versions.capg}-capz-{versions.capz}"


@attrs.frozen
class Toolchain:
    """The located binaries and CRDs of one build."""

    bin_dir: Path
    crd_dir: Path
    versions: Versions

    def binary(self, name: str) -> Path:
        if name not in BINARIES:
            raise KeyError(f"unknown binary {name!r}; known: {', '.join(BINARIES)}")
        return self.bin_dir / name

    @property
    def kube_apiserver(self) -> Path:
        return self.binary("kube-apiserver")

    @property
    def kube_controller_manager(self) -> Path:
        return self.binary("kube-controller-manager")

    @property
    def kube_scheduler(self) -> Path:
        return self.binary("kube-scheduler")

    @property
    def kubectl(self) -> Path:
        return self.binary("kubectl")

    @property
    def etcd(self) -> Path:
        return self.binary("etcd")

    @property
    def clusterctl(self) -> Path:
        return self.binary("clusterctl")


def _not_built(what: str, where: Path) -> BinariesNotBuiltError:
    return BinariesNotBuiltError(
        f"{what} not found at {where}: build them with `bash {BUILD_SCRIPT}` "
        "(from the Lattice repository; the first build takes a while, later ones seconds)"
    )


def locate(repo_root: Path | None = None) -> Toolchain:
    """Find the binaries and CRDs, checking that every one of them is there."""
    root = repo_root if repo_root is not None else find_repo_root()
    env_bin = os.environ.get("LATTICE_BIN_DIR")
    if env_bin:
        bin_dir = Path(env_bin)
    elif root is not None:
        bin_dir = cache_root() / "bin" / bin_key(root)
    else:
        raise BinariesNotBuiltError(
            f"set LATTICE_BIN_DIR (`bash {BUILD_SCRIPT} --print-bin-dir` prints it) or run "
            "from the Lattice repository"
        )
    versions = read_versions(root)
    env_crd = os.environ.get("LATTICE_CRD_DIR")
    crd_dir = Path(env_crd) if env_crd else cache_root() / "crds" / crd_key(versions)

    missing = [name for name in BINARIES if not os.access(bin_dir / name, os.X_OK)]
    if missing:
        raise _not_built(f"binaries {', '.join(missing)}", bin_dir)
    if not (crd_dir / COMPLETE_MARKER).is_file() or not (crd_dir / WEBHOOKS_MARKER).is_file():
        raise _not_built("Cluster API CRDs", crd_dir)
    return Toolchain(bin_dir=bin_dir, crd_dir=crd_dir, versions=versions)
