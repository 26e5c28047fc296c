"""The OCI image that scripts/build-image.sh builds: a valid layout, non-root, no shell, and
``lattice`` runs inside it (chroot into its unpacked layers, as uid 65532, with its own /proc).

The image is built by ``.ci/run`` (``LATTICE_IMAGE_DIR``); without it this test fails and says
how to build it.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

ROOT = Path(__file__).resolve().parents[2]
WRITER = [sys.executable, str(ROOT / "scripts/oci_image.py")]


def _image_dir() -> Path:
    configured = os.environ.get("LATTICE_IMAGE_DIR")
    directory = Path(configured) if configured else None
    if directory is None or not (directory / ".complete").is_file():
        pytest.fail(
            f"no built image at {directory}: run `bash scripts/build-image.sh` and set LATTICE_IMAGE_DIR"
        )
    return directory


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    assert algorithm == "sha256"
    return layout / "blobs" / "sha256" / hexdigest


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = _image_dir()
    layout = tmp_path_factory.mktemp("layout")
    with tarfile.open(directory / "lattice.oci.tar") as archive:
        archive.extractall(layout, filter="data")
    index = json.loads((layout / "index.json").read_text())
    (descriptor,) = index["manifests"]
    manifest_bytes = _blob(layout, descriptor["digest"]).read_bytes()
    manifest = json.loads(manifest_bytes)
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    rootfs = tmp_path_factory.mktemp("rootfs")
    rootfs.chmod(0o755)  # the image's /, which its user must be able to enter
    for layer in manifest["layers"]:
        with tarfile.open(_blob(layout, layer["digest"])) as tar:
            tar.extractall(rootfs, numeric_owner=True, filter="tar")
    return {
        "dir": directory,
        "layout": layout,
        "descriptor": descriptor,
        "manifest_bytes": manifest_bytes,
        "manifest": manifest,
        "config": config,
        "rootfs": rootfs,
    }


def test_the_layout_is_valid_and_the_digest_is_the_manifests(image: dict[str, Any]) -> None:
    layout = image["layout"]
    assert json.loads((layout / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    digest = "sha256:" + hashlib.sha256(image["manifest_bytes"]).hexdigest()
    assert image["descriptor"]["digest"] == digest
    assert (image["dir"] / "digest").read_text().strip() == digest
    for layer in image["manifest"]["layers"]:
        data = _blob(layout, layer["digest"]).read_bytes()
        assert "sha256:" + hashlib.sha256(data).hexdigest() == layer["digest"]
        assert len(data) == layer["size"]
    assert image["config"]["rootfs"]["diff_ids"] == [layer["digest"] for layer in image["manifest"]["layers"]]


def test_it_runs_as_a_non_root_user_without_a_shell(image: dict[str, Any]) -> None:
    config = image["config"]["config"]
    assert config["User"] == "65532:65532"
    assert config["Entrypoint"] == ["/usr/local/bin/lattice"]
    rootfs: Path = image["rootfs"]
    for shell in ("sh", "dash", "bash", "rbash"):
        assert not (rootfs / "usr/bin" / shell).exists(), shell
    # nothing in the image is writable by the user the image runs as
    writable = [
        path
        for path in (rootfs / "opt/lattice").rglob("*")
        if not path.is_symlink() and path.stat().st_mode & 0o022
    ]
    assert writable == []


def _in_image(rootfs: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    chroot = shutil.which("chroot", path="/usr/sbin:/usr/bin:/sbin:/bin")
    assert chroot is not None, "chroot (coreutils) is missing"
    isolate = ["unshare", "--mount", "--pid", "--fork", f"--mount-proc={rootfs / 'proc'}"]
    return subprocess.run(
        [*isolate, chroot, "--userspec=65532:65532", str(rootfs), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env={"PATH": "/usr/local/bin:/usr/bin:/bin"},
    )


def test_lattice_runs_inside_and_reports_its_openssl(image: dict[str, Any]) -> None:
    rootfs: Path = image["rootfs"]
    env = dict(item.split("=", 1) for item in image["config"]["config"]["Env"])
    assert env["LATTICE_BIN_DIR"] == "/opt/lattice/bin"
    report = _in_image(rootfs, "/usr/bin/env", *[f"{k}={v}" for k, v in env.items()], "lattice", "fips-check")
    assert report.returncode == 0, report.stderr
    assert "TLS (ssl module) OpenSSL:  OpenSSL 3." in report.stdout
    assert "cryptography OpenSSL:" in report.stdout
    assert "capping at TLS 1.2" not in report.stderr  # /proc is there: the TLS 1.3 policy applies
    crds = _in_image(rootfs, "/usr/bin/env", *[f"{k}={v}" for k, v in env.items()], "lattice", "crds")
    assert crds.returncode == 0, crds.stderr
    assert "kind: CustomResourceDefinition" in crds.stdout
    toolchain = _in_image(
        rootfs,
        "/usr/bin/env",
        *[f"{k}={v}" for k, v in env.items()],
        "/usr/bin/python3.11",
        "-c",
        "import sys; sys.path.insert(0, '/opt/lattice/site');"
        "from lattice.adapters.binaries import locate;"
        "from lattice.adapters.addons_bundle import locate_addons;"
        "from lattice.adapters.chart import locate_operator_chart;"
        "print(locate().bin_dir, locate_addons().binary('helm'), locate_operator_chart().chart)",
    )
    assert toolchain.returncode == 0, toolchain.stderr
    assert toolchain.stdout.split() == [
        "/opt/lattice/bin",
        "/opt/lattice/addons/bin/helm",
        "/opt/lattice/chart",
    ]


def test_its_python_finds_bytecode_for_every_module_and_no_build_paths(image: dict[str, Any]) -> None:
    """The image is read-only in a pod: without .pyc files its Python would compile every module
    at each start. Each must be for the image's own interpreter (its magic number)."""
    rootfs: Path = image["rootfs"]
    check = _in_image(
        rootfs,
        "/usr/bin/python3.11",
        "-c",
        "import importlib.util, pathlib\n"
        "site = pathlib.Path('/opt/lattice/site')\n"
        "sources = list(site.rglob('*.py'))\n"
        "def ok(source):\n"
        "    cached = pathlib.Path(importlib.util.cache_from_source(source))\n"
        "    return cached.is_file() and cached.read_bytes()[:4] == importlib.util.MAGIC_NUMBER\n"
        "print(len(sources), [str(s) for s in sources if not ok(s)][:5])",
    )
    assert check.returncode == 0, check.stderr
    count, missing = check.stdout.split(" ", 1)
    assert int(count) > 1000
    assert missing.strip() == "[]"
    (dist_info,) = (rootfs / "opt/lattice/site").glob("lattice-*.dist-info")
    assert not (dist_info / "direct_url.json").exists()  # a temporary path of the build
    assert not (dist_info / "uv_cache.json").exists()  # the build's time
    record = (dist_info / "RECORD").read_text()
    assert "direct_url.json" not in record
    assert "uv_cache.json" not in record


def test_the_image_writer_is_reproducible(tmp_path: Path) -> None:
    rootfs = tmp_path / "rootfs"
    (rootfs / "usr/bin").mkdir(parents=True)
    (rootfs / "usr/bin/sh").write_text("not really a shell")
    (rootfs / "etc").mkdir()
    (rootfs / "etc/os-release").write_text("ID=test\n")
    rootfs_tar = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs_tar, "w") as tar:
        tar.add(rootfs, arcname=".")
    site = tmp_path / "site"
    (site / "pkg").mkdir(parents=True)
    (site / "pkg/__init__.py").write_text("")
    digests = []
    for attempt in range(2):
        os.utime(site / "pkg/__init__.py", (attempt, attempt))  # times must not matter
        out = tmp_path / f"image-{attempt}.tar"
        layer = ["--layer", f"/opt/site={site}", "--entrypoint", "/bin/true"]
        done = subprocess.run(
            [*WRITER, "--out", str(out), "--rootfs-tar", str(rootfs_tar), "--exclude", "usr/bin/sh", *layer],
            capture_output=True,
            text=True,
            check=True,
        )
        digests.append(done.stdout.strip())
        assert out.read_bytes() == (tmp_path / "image-0.tar").read_bytes()
    assert digests[0] == digests[1]
    assert digests[0].startswith("sha256:")
    missing = subprocess.run(
        [
            *WRITER,
            "--out",
            str(tmp_path / "x.tar"),
            "--rootfs-tar",
            str(rootfs_tar),
            "--exclude",
            "bin/x",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert missing.returncode == 2
    assert "bin/x" in missing.stderr


def test_gzipped_layers_are_reproducible_and_name_their_uncompressed_digests(tmp_path: Path) -> None:
    rootfs_tar = tmp_path / "rootfs.tar"
    with tarfile.open(rootfs_tar, "w") as tar:
        info = tarfile.TarInfo("etc/os-release")
        data = b"ID=test\n"
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    site = tmp_path / "site"
    site.mkdir()
    (site / "module.py").write_text("x = 1\n" * 1000)
    outputs = []
    for attempt in range(2):
        os.utime(site / "module.py", (attempt, attempt))
        out = tmp_path / f"gz-{attempt}.tar"
        done = subprocess.run(
            [
                *WRITER,
                "--out",
                str(out),
                "--rootfs-tar",
                str(rootfs_tar),
                "--layer",
                f"/opt/site={site}",
                "--gzip",
            ],
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append((done.stdout.strip(), out.read_bytes()))
    assert outputs[0] == outputs[1]
    layout = tmp_path / "layout"
    with tarfile.open(tmp_path / "gz-0.tar") as archive:
        archive.extractall(layout, filter="data")
    (descriptor,) = json.loads((layout / "index.json").read_text())["manifests"]
    assert descriptor["digest"] == outputs[0][0]
    manifest = json.loads(_blob(layout, descriptor["digest"]).read_bytes())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    assert [layer["mediaType"] for layer in manifest["layers"]] == [
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ] * 2
    for layer, diff_id in zip(manifest["layers"], config["rootfs"]["diff_ids"], strict=True):
        blob = _blob(layout, layer["digest"]).read_bytes()
        assert "sha256:" + hashlib.sha256(blob).hexdigest() == layer["digest"]
        plain = gzip.decompress(blob)
        assert "sha256:" + hashlib.sha256(plain).hexdigest() == diff_id
        assert len(blob) < len(plain)
