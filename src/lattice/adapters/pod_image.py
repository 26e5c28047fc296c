"""The built Lattice image's root filesystem, unpacked once per digest, for the kubelet stand-in.

``scripts/build-image.sh`` writes ``lattice.oci.tar`` (an OCI image layout in one tar) and its
``digest`` to the directory ``LATTICE_IMAGE_DIR`` names. :func:`unpack` lays the image's layers
into ``$LATTICE_CACHE/image-rootfs/<digest>/rootfs`` (owners, modes and device nodes kept) and
keeps its configuration beside it. Unpackers may race (every machine's kubelet may start a pod
at once): each unpacks into a directory of its own and renames it into place; the one that
loses removes its copy. The three most recently used root filesystems are kept.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

import attrs

from lattice.adapters.binaries import cache_root
from lattice.domain.local_pods import ImageConfig, parse_image_config

__all__ = ["ImageError", "UnpackedImage", "unpack"]

ARCHIVE = "lattice.oci.tar"
KEEP = 3
WHITEOUT = ".wh."


class ImageError(RuntimeError):
    """The image cannot be used; the message says which file and why."""


@attrs.frozen
class UnpackedImage:
    digest: str
    rootfs: Path
    config: ImageConfig


def _member(archive: tarfile.TarFile, name: str) -> IO[bytes]:
    try:
        handle = archive.extractfile(name)
    except KeyError:
        raise ImageError(f"{ARCHIVE}: no {name}") from None
    if handle is None:
        raise ImageError(f"{ARCHIVE}: {name} is not a file")
    return handle


def _json(archive: tarfile.TarFile, name: str) -> Any:
    return json.loads(_member(archive, name).read())


def _blob(digest: str) -> str:
    algorithm, _, hexdigest = str(digest).partition(":")
    if algorithm != "sha256" or not hexdigest.isalnum():
        raise ImageError(f"{ARCHIVE}: unsupported digest {digest!r}")
    return f"blobs/sha256/{hexdigest}"


def _apply_layer(stream: IO[bytes], rootfs: Path) -> None:
    with tarfile.open(fileobj=stream, mode="r|*") as layer:
        for member in layer:
            name = Path(member.name)
            if name.name.startswith(WHITEOUT):  # a deletion recorded by the layer
                gone = rootfs / name.parent / name.name[len(WHITEOUT) :]
                if gone.is_dir() and not gone.is_symlink():
                    shutil.rmtree(gone)
                else:
                    gone.unlink(missing_ok=True)
                continue
            layer.extract(member, rootfs, numeric_owner=True, filter="tar")


def _prune(base: Path, keep: Path) -> None:
    entries = sorted(
        (p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for old in entries[KEEP:]:
        if old != keep:
            shutil.rmtree(old, ignore_errors=True)


def unpack(image_dir: Path, cache: Path | None = None) -> UnpackedImage:
    """The root filesystem and configuration of the image in ``image_dir``, unpacked once."""
    archive_path = image_dir / ARCHIVE
    if not (image_dir / ".complete").is_file() or not archive_path.is_file():
        raise ImageError(
            f"no built image in {image_dir}: run `bash scripts/build-image.sh` "
            "(or set LATTICE_POD_RUNTIME=source to run pods from the source tree)"
        )
    digest = (image_dir / "digest").read_text().strip()
    base = (cache or cache_root()) / "image-rootfs"
    target = base / _blob(digest).rpartition("/")[2]
    if not (target / ".complete").is_file():
        base.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix=".unpack-", dir=base))
        try:
            rootfs = work / "rootfs"
            rootfs.mkdir(mode=0o755)
            rootfs.chmod(0o755)  # the image's /, which a non-root user must be able to enter
            with tarfile.open(archive_path) as archive:
                index = _json(archive, "index.json")
                manifests = index.get("manifests") or []
                if len(manifests) != 1:
                    raise ImageError(f"{ARCHIVE}: index.json: exactly one manifest is required")
                manifest = _json(archive, _blob(manifests[0]["digest"]))
                config = _json(archive, _blob(manifest["config"]["digest"]))
                for layer in manifest["layers"]:
                    _apply_layer(_member(archive, _blob(layer["digest"])), rootfs)
            (work / "config.json").write_text(json.dumps(config))
            (work / "digest").write_text(digest + "\n")
            (work / ".complete").touch()
            work.chmod(0o755)
            try:
                os.rename(work, target)
            except OSError:
                if not (target / ".complete").is_file():
                    raise
                # another unpacker got there first: its copy is the same
        finally:
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
    os.utime(target)  # most recently used
    with contextlib.suppress(OSError):
        _prune(base, target)
    try:
        config = parse_image_config(json.loads((target / "config.json").read_text()))
    except ValueError as exc:
        raise ImageError(f"{digest}: {exc}") from None
    return UnpackedImage(digest=digest, rootfs=target / "rootfs", config=config)
