"""The kubelet stand-in's view of the built image: unpacked once per digest (plain or gzipped
layers, whiteouts applied), concurrent unpackers agree, the least recently used are pruned, and
an image that is not built says how to build it."""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from lattice.adapters import pod_image

pytestmark = pytest.mark.integration

WRITER = [sys.executable, str(Path(__file__).resolve().parents[2] / "scripts/oci_image.py")]


def _image(tmp_path: Path, name: str, *, gzip: bool, marker: str) -> Path:
    rootfs = tmp_path / f"{name}-rootfs"
    (rootfs / "etc").mkdir(parents=True)
    (rootfs / "etc/os-release").write_text(f"ID={marker}\n")
    (rootfs / "etc/gone").write_text("removed by the next layer\n")
    rootfs_tar = tmp_path / f"{name}.tar"
    with tarfile.open(rootfs_tar, "w") as tar:
        tar.add(rootfs, arcname=".")
    whiteout = tmp_path / f"{name}-wh"
    whiteout.mkdir()
    (whiteout / ".wh.gone").write_text("")
    site = tmp_path / f"{name}-site"
    site.mkdir()
    (site / "app.py").write_text("print('hi')\n")
    out = tmp_path / name
    out.mkdir()
    digest = subprocess.run(
        [
            *WRITER,
            "--out",
            str(out / pod_image.ARCHIVE),
            "--rootfs-tar",
            str(rootfs_tar),
            "--layer",
            f"/etc={whiteout}",
            "--layer",
            f"/opt/site={site}",
            "--user",
            "65532:65532",
            "--entrypoint",
            "/opt/site/app.py",
            "--env",
            "PATH=/usr/bin",
            *(["--gzip"] if gzip else []),
        ],
        check=True,
        capture_output=True,
        text=True,
        env={"SOURCE_DATE_EPOCH": "1767225600"},
    ).stdout.strip()
    (out / "digest").write_text(digest + "\n")
    (out / ".complete").touch()
    return out


@pytest.mark.parametrize("gzip", [False, True])
def test_an_image_is_unpacked_once_by_concurrent_unpackers(tmp_path: Path, gzip: bool) -> None:
    image = _image(tmp_path, "img", gzip=gzip, marker="one")
    cache = tmp_path / "cache"
    with ThreadPoolExecutor(4) as pool:
        unpacked = list(pool.map(lambda _: pod_image.unpack(image, cache), range(4)))
    assert len({u.rootfs for u in unpacked}) == 1
    first = unpacked[0]
    assert (first.rootfs / "etc/os-release").read_text() == "ID=one\n"
    assert not (first.rootfs / "etc/gone").exists()
    assert not (first.rootfs / "etc/.wh.gone").exists()
    assert (first.rootfs / "opt/site/app.py").is_file()
    assert first.config.user == "65532:65532"
    assert first.config.entrypoint == ("/opt/site/app.py",)
    assert [p.name for p in (cache / "image-rootfs").iterdir()] == [first.rootfs.parent.name]
    assert first.digest.endswith(first.rootfs.parent.name)


def test_old_root_filesystems_are_pruned_and_a_missing_image_says_how_to_build(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    kept = [pod_image.unpack(_image(tmp_path, f"i{n}", gzip=False, marker=f"m{n}"), cache) for n in range(4)]
    left = {p.name for p in (cache / "image-rootfs").iterdir()}
    assert left == {u.rootfs.parent.name for u in kept[1:]}
    with pytest.raises(pod_image.ImageError, match=r"build-image\.sh.*LATTICE_POD_RUNTIME=source"):
        pod_image.unpack(tmp_path / "nothing", cache)


def _archive(tmp_path: Path, files: dict[str, bytes], digest: str = "sha256:abc") -> Path:
    out = tmp_path / "bad"
    out.mkdir(exist_ok=True)
    with tarfile.open(out / pod_image.ARCHIVE, "w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            if name.endswith("/"):
                info.type = tarfile.DIRTYPE
            info.size = 0 if name.endswith("/") else len(data)
            tar.addfile(info, io.BytesIO(data))
    (out / "digest").write_text(digest + "\n")
    (out / ".complete").touch()
    return out


@pytest.mark.parametrize(
    ("files", "digest", "error"),
    [
        ({}, "sha256:abc", "no index.json"),
        ({"index.json/": b""}, "sha256:abc", "index.json is not a file"),
        ({"index.json": b'{"manifests": []}'}, "sha256:abc", "exactly one manifest"),
        ({"index.json": b'{"manifests": [{"digest": "md5:x"}]}'}, "sha256:abc", "unsupported digest 'md5:x'"),
        ({"index.json": b'{"manifests": [{"digest": "sha256:m"}]}'}, "sha256:abc", "no blobs/sha256/m"),
        (
            {
                "index.json": b'{"manifests": [{"digest": "sha256:m"}]}',
                "blobs/sha256/m": b'{"config": {"digest": "sha256:c"}, "layers": []}',
                "blobs/sha256/c": b'{"config": {"User": 7}}',
            },
            "sha256:abc",
            "config.User: a string is required",
        ),
    ],
)
def test_a_broken_image_is_refused_with_the_reason(
    tmp_path: Path, files: dict[str, bytes], digest: str, error: str
) -> None:
    with pytest.raises(pod_image.ImageError, match=re.escape(error)):
        pod_image.unpack(_archive(tmp_path, files, digest), tmp_path / "cache")
    left = list((tmp_path / "cache" / "image-rootfs").glob(".unpack-*"))
    assert left == []  # nothing half-unpacked is left behind


def test_a_directory_whiteout_removes_the_directory(tmp_path: Path) -> None:
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        for name in ("opt/", "opt/old/", "opt/old/file"):
            info = tarfile.TarInfo(name.rstrip("/"))
            info.type = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
            tar.addfile(info, io.BytesIO(b""))
    removal = io.BytesIO()
    with tarfile.open(fileobj=removal, mode="w") as tar:
        tar.addfile(tarfile.TarInfo("opt/.wh.old"), io.BytesIO(b""))
    rootfs = tmp_path / "rootfs"
    rootfs.mkdir()
    for stream in (layer, removal):
        stream.seek(0)
        pod_image._apply_layer(stream, rootfs)
    assert (rootfs / "opt").is_dir()
    assert not (rootfs / "opt/old").exists()
