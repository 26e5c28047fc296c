"""Write an OCI image archive (oci-archive: an OCI image layout in one tar) from directories.

Used by scripts/build-image.sh; no container tool is needed. Every layer is a tar written
reproducibly: entries sorted, mtime ``SOURCE_DATE_EPOCH``, owner root (or the uid/gid given for
a layer), no PAX times. So the same inputs give the same digest. Layers are uncompressed
(``application/vnd.oci.image.layer.v1.tar``) unless ``--gzip`` is given; then each is gzipped
(``...tar+gzip``) with an empty file name and mtime 0 in the gzip header, so that too is
reproducible (with the same zlib), and the config's ``diff_ids`` are the uncompressed digests.

    python scripts/oci_image.py --out image.oci.tar \\
        --rootfs-tar rootfs.tar --exclude bin/sh \\
        --layer /opt/lattice/site=site-dir --file /usr/local/bin/lattice=0755:launcher \\
        --user 65532:65532 --entrypoint /usr/local/bin/lattice --env PATH=/usr/local/bin:/usr/bin \\
        --label org.opencontainers.image.source=...

Prints the manifest digest (``sha256:...``), the image's identity.
"""

from __future__ import annotations

import argparse
import datetime as dt
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

EPOCH = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
LAYER_MEDIA = "application/vnd.oci.image.layer.v1.tar"
GZIP_LAYER_MEDIA = LAYER_MEDIA + "+gzip"
GZIP_LEVEL = 6


class Digesting:
    """A binary file that hashes and counts what is written to it."""

    def __init__(self, handle: Any) -> None:
        self._handle = handle
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.sha.update(data)
        self.size += len(data)
        written: int = self._handle.write(data)
        return written

    def tell(self) -> int:
        return self.size


def _normal(info: tarfile.TarInfo, owner: tuple[int, int] | None) -> tarfile.TarInfo:
    info.mtime = EPOCH
    if owner is not None:
        info.uid, info.gid = owner
    info.uname = info.gname = ""
    info.pax_headers = {}
    return info


def _walk(source: Path) -> Iterator[Path]:
    entries = sorted(os.walk(source), key=lambda e: e[0])
    for directory, dirs, files in entries:
        dirs.sort()
        base = Path(directory)
        for name in sorted(dirs + files):
            yield base / name


def _add_tree(tar: tarfile.TarFile, source: Path, target: str, owner: tuple[int, int] | None) -> None:
    target = target.strip("/")
    parts = target.split("/")
    for depth in range(1, len(parts) + 1):  # parent directories, root-owned
        info = tarfile.TarInfo("/".join(parts[:depth]))
        info.type, info.mode = tarfile.DIRTYPE, 0o755
        tar.addfile(_normal(info, (0, 0)))
    for path in _walk(source):
        name = f"{target}/{path.relative_to(source).as_posix()}"
        info = tar.gettarinfo(str(path), arcname=name)
        # readable by the image's non-root user, writable by no one but root
        executable = info.isdir() or bool(stat.S_IMODE(info.mode) & 0o100)
        info.mode = 0o755 if executable else 0o644
        if info.isfile():
            with path.open("rb") as handle:
                tar.addfile(_normal(info, owner or (0, 0)), handle)
        else:
            tar.addfile(_normal(info, owner or (0, 0)))


def _copy_rootfs(tar: tarfile.TarFile, rootfs_tar: Path, exclude: set[str]) -> list[str]:
    """The base rootfs, entries sorted, minus ``exclude`` (paths relative to /)."""
    removed = []
    with tarfile.open(rootfs_tar) as source:
        members = sorted(source.getmembers(), key=lambda m: m.name.lstrip("./"))
        for member in members:
            name = member.name.lstrip("./").rstrip("/")
            if not name:
                continue
            if name in exclude:
                removed.append(name)
                continue
            member.name = name
            if member.islnk():
                member.linkname = member.linkname.lstrip("./")
            data = source.extractfile(member) if member.isfile() else None
            tar.addfile(_normal(member, None), data)
    return removed


def _layer(directory: Path, write: Any, compress: bool = False) -> tuple[dict[str, Any], str]:
    """The layer's descriptor and its diff_id (the digest of the uncompressed tar)."""
    with tempfile.NamedTemporaryFile(dir=directory, delete=False) as raw:
        blob_digest = Digesting(raw)
        gz = None
        if compress:
            gz = gzip.GzipFile(filename="", mode="wb", fileobj=blob_digest, compresslevel=GZIP_LEVEL, mtime=0)  # type: ignore[arg-type]
        tar_digest = Digesting(gz) if gz is not None else blob_digest
        with tarfile.open(fileobj=tar_digest, mode="w", format=tarfile.GNU_FORMAT) as tar:  # type: ignore[call-overload]
            write(tar)
        if gz is not None:
            gz.close()
    digest = blob_digest.sha.hexdigest()
    blob = directory / "blobs" / "sha256" / digest
    os.replace(raw.name, blob)
    media = GZIP_LAYER_MEDIA if compress else LAYER_MEDIA
    descriptor = {"mediaType": media, "digest": f"sha256:{digest}", "size": blob_digest.size}
    return descriptor, f"sha256:{tar_digest.sha.hexdigest()}"


def _blob(directory: Path, data: bytes, media: str) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (directory / "blobs" / "sha256" / digest).write_bytes(data)
    return {"mediaType": media, "digest": f"sha256:{digest}", "size": len(data)}


def _json(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":")).encode()


def _write_archive(layout: Path, out: Path) -> None:
    """The layout as one tar (oci-archive), written beside ``out`` then renamed into place."""
    partial = out.with_name(out.name + ".partial")
    with tarfile.open(partial, "w", format=tarfile.GNU_FORMAT) as archive:
        blobs = sorted((layout / "blobs" / "sha256").iterdir())
        for path in [layout / "oci-layout", layout / "index.json", *blobs]:
            info = archive.gettarinfo(str(path), arcname=path.relative_to(layout).as_posix())
            with path.open("rb") as handle:
                archive.addfile(_normal(info, (0, 0)), handle)
    os.replace(partial, out)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--rootfs-tar", required=True, type=Path)
    parser.add_argument("--exclude", action="append", default=[], help="a rootfs path to leave out")
    parser.add_argument("--layer", action="append", default=[], metavar="TARGET=DIR")
    parser.add_argument("--file", action="append", default=[], metavar="TARGET=MODE:PATH")
    parser.add_argument("--user", default="65532:65532")
    parser.add_argument("--entrypoint", action="append", default=[])
    parser.add_argument("--env", action="append", default=[])
    parser.add_argument("--label", action="append", default=[])
    parser.add_argument("--workdir", default="/")
    parser.add_argument("--gzip", action="store_true", help="gzip every layer (reproducibly)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.out.parent) as tmp:
        layout = Path(tmp)
        (layout / "blobs" / "sha256").mkdir(parents=True)
        layers: list[dict[str, Any]] = []
        diff_ids: list[str] = []
        removed: list[str] = []

        def add(write: Any) -> None:
            descriptor, diff_id = _layer(layout, write, args.gzip)
            layers.append(descriptor)
            diff_ids.append(diff_id)

        def base(tar: tarfile.TarFile) -> None:
            removed.extend(_copy_rootfs(tar, args.rootfs_tar, set(args.exclude)))

        add(base)
        missing = sorted(set(args.exclude) - set(removed))
        if missing:
            print(f"oci_image: --exclude paths not in the rootfs: {missing}", file=sys.stderr)
            return 2
        for spec in args.layer:
            target, _, source = spec.partition("=")
            add(lambda tar, t=target, s=Path(source): _add_tree(tar, s, t, None))

        def files(tar: tarfile.TarFile) -> None:
            for spec in sorted(args.file):
                target, _, rest = spec.partition("=")
                mode, _, path = rest.partition(":")
                data = Path(path).read_bytes()
                info = tarfile.TarInfo(target.strip("/"))
                info.size, info.mode = len(data), int(mode, 8)
                tar.addfile(_normal(info, (0, 0)), io.BytesIO(data))

        if args.file:
            add(files)
        config = {
            "created": "1970-01-01T00:00:00Z" if EPOCH == 0 else None,
            "architecture": "amd64",
            "os": "linux",
            "config": {
                "User": args.user,
                "Entrypoint": args.entrypoint,
                "Env": args.env,
                "WorkingDir": args.workdir,
                "Labels": dict(label.partition("=")[::2] for label in args.label),
            },
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "history": [{"created_by": "scripts/build-image.sh"} for _ in layers],
        }
        if config["created"] is None:
            config["created"] = dt.datetime.fromtimestamp(EPOCH, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        config_desc = _blob(layout, _json(config), "application/vnd.oci.image.config.v1+json")
        manifest = {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_desc,
            "layers": layers,
        }
        manifest_desc = _blob(layout, _json(manifest), "application/vnd.oci.image.manifest.v1+json")
        (layout / "index.json").write_bytes(
            _json(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": [manifest_desc],
                }
            )
        )
        (layout / "oci-layout").write_bytes(_json({"imageLayoutVersion": "1.0.0"}))
        _write_archive(layout, args.out)
    print(manifest_desc["digest"])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
