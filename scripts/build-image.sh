#!/usr/bin/env bash
# Build the Lattice OCI image from the repository, without a registry or a container engine.
#
#   bash scripts/build-image.sh              build (cached) and print the image digest
#   bash scripts/build-image.sh --print-dir  print the output directory (nothing is built)
#
# Inputs, all pinned or built here:
#   * a Debian bookworm root filesystem made by mmdebstrap (variant essential + python3.11, its
#     standard library, ca-certificates) from Debian's archive, with every shell removed;
#   * Lattice's Python dependencies from uv.lock (hashes checked; manylinux wheels for
#     CPython 3.11) and the Lattice wheel built from this tree, under /opt/lattice/site;
#   * the binaries, CRDs and add-ons the operator runs (scripts/build-k8s.sh,
#     scripts/fetch-mesh-crds.sh, scripts/build-addons.sh) and the operator's Helm chart
#     (charts/lattice, for a cell's --operator-via helm) under /opt/lattice/.
# The layers are uncompressed tars written by scripts/oci_image.py with fixed times and owners,
# so the same inputs give the same digest. Debian's archive moves (security updates): a rebuild
# on another day may differ in the base layer; build-info.txt lists every package and version.
#
# Output: ${LATTICE_CACHE:-~/.cache/lattice}/image/<key>/{lattice.oci.tar,digest,build-info.txt}
# keyed by the inputs above (source tree, lock, scripts, the three caches' keys); the two newest
# images are kept, older ones removed. Needs root
# (mmdebstrap --mode=root), as CI has.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
LATTICE_CACHE="${LATTICE_CACHE:-$HOME/.cache/lattice}"
SUITE=bookworm
MIRROR="${LATTICE_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
PACKAGES=python3.11-minimal,libpython3.11-stdlib,ca-certificates,netbase,tzdata
SHELLS=(bin/sh bin/dash bin/bash bin/rbash usr/bin/sh usr/bin/dash usr/bin/bash usr/bin/rbash)
export SOURCE_DATE_EPOCH=1767225600  # 2026-01-01T00:00:00Z

die() { printf 'build-image: ERROR: %s\n' "$*" >&2; exit 1; }
step() { printf 'build-image: %s\n' "$*" >&2; }

BIN_DIR="$(bash scripts/build-k8s.sh --print-bin-dir)"
CRD_DIR="$(. .venv/bin/activate 2>/dev/null; python -c 'from lattice.adapters.binaries import locate; print(locate().crd_dir)' 2>/dev/null || true)"
MESH_DIR="$(bash scripts/fetch-mesh-crds.sh --print-dir)"
ADDONS_DIR="$(bash scripts/build-addons.sh --print-dir)"

key="$(
  {
    git ls-files -z src charts pyproject.toml uv.lock scripts/build-image.sh scripts/oci_image.py \
      | sort -z | xargs -0 sha256sum
    echo "$SUITE $PACKAGES ${SHELLS[*]} $SOURCE_DATE_EPOCH"
    basename "$BIN_DIR"; basename "$MESH_DIR"; basename "$ADDONS_DIR"; basename "${CRD_DIR:-none}"
  } | sha256sum | cut -c1-16
)"
OUT="$LATTICE_CACHE/image/lattice-$key"
if [ "${1:-}" = "--print-dir" ]; then echo "$OUT"; exit 0; fi
[ -z "${1:-}" ] || die "usage: $0 [--print-dir]"
if [ -f "$OUT/.complete" ]; then cat "$OUT/digest"; exit 0; fi

[ "$(id -u)" = 0 ] || die "mmdebstrap --mode=root needs root"
command -v mmdebstrap >/dev/null || {
  step "installing mmdebstrap from Debian's packages"
  apt-get install -y --no-install-recommends mmdebstrap >/dev/null 2>&1 \
    || { apt-get update >/dev/null && apt-get install -y --no-install-recommends mmdebstrap >/dev/null; } \
    || die "cannot install mmdebstrap from Debian's packages"
}
for dir in "$BIN_DIR" "$MESH_DIR" "$ADDONS_DIR" "$CRD_DIR"; do
  [ -n "$dir" ] && [ -f "$dir/.complete" ] || die "$dir is not built (run .ci/run's build steps first)"
done
UV="$(bash scripts/python-env.sh --print-uv)"

started=$(date +%s)
WORK="$(mktemp -d "$LATTICE_CACHE/image-build.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
step "root filesystem: Debian $SUITE ($PACKAGES) by mmdebstrap"
mmdebstrap --quiet --mode=root --variant=essential --include="$PACKAGES" \
  --customize-hook='chroot "$1" dpkg-query -W -f "\${Package} \${Version}\n" > "$1/.packages"' \
  --customize-hook='copy-out /.packages '"$WORK" --customize-hook='rm "$1/.packages"' \
  "$SUITE" "$WORK/rootfs.tar" "$MIRROR" || die "mmdebstrap failed"

step "Python dependencies from uv.lock and the Lattice wheel"
"$UV" export --frozen --no-dev --no-emit-project --format requirements-txt > "$WORK/requirements.txt"
"$UV" pip install --quiet --target "$WORK/site" --python-version 3.11 \
  --python-platform x86_64-manylinux_2_36 --only-binary :all: --require-hashes \
  -r "$WORK/requirements.txt" || die "cannot install the locked dependencies"
"$UV" build --quiet --wheel --out-dir "$WORK/dist" "$ROOT" || die "cannot build the Lattice wheel"
"$UV" pip install --quiet --target "$WORK/site" --python-version 3.11 \
  --python-platform x86_64-manylinux_2_36 --no-deps "$WORK"/dist/*.whl
# uv records where the wheel came from (a temporary directory) and when: drop both records, or
# two builds of the same inputs differ in these two files and so in their digest.
for dist_info in "$WORK"/site/lattice-*.dist-info; do
  rm -f "$dist_info/direct_url.json" "$dist_info/uv_cache.json"
  sed -i -e '/\/direct_url\.json,/d' -e '/\/uv_cache\.json,/d' "$dist_info/RECORD"
done
find "$WORK/site" -name __pycache__ -prune -exec rm -rf {} +
# Bytecode, so that the image's Python does not compile every module it imports at each start
# of the operator or the agent (2.6 s of CPU instead of 0.9 s: /opt/lattice is read-only in a pod).
# unchecked-hash .pyc files hold no source time (the digest stays reproducible) and are trusted
# as they are, which suits files that never change. Python 3.11 writes what the image's 3.11 reads.
PY="$ROOT/.venv/bin/python"
if "$PY" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' 2>/dev/null; then
  "$PY" -m compileall -q -j 0 --invalidation-mode unchecked-hash -s "$WORK/site" -p /opt/lattice/site \
    "$WORK/site" >/dev/null || die "cannot compile the bytecode of /opt/lattice/site"
else
  step "WARNING: $PY is not Python 3.11: the image has no bytecode (it works, but starts slower)"
fi
rm -rf "$WORK/site/bin"

cat > "$WORK/lattice" <<'PY'
#!/usr/bin/python3.11 -sE
import sys

sys.path.insert(0, "/opt/lattice/site")
from lattice.app.cli import main

sys.exit(main())
PY

step "OCI image"
mkdir -p "$OUT.partial"
excludes=()
tar -tf "$WORK/rootfs.tar" | sed 's|^\./||' > "$WORK/rootfs.list"
for path in "${SHELLS[@]}"; do
  if grep -qx "$path" "$WORK/rootfs.list"; then excludes+=(--exclude "$path"); fi
done
[ "${#excludes[@]}" -gt 0 ] || die "no shell found to remove: the rootfs layout changed"

digest="$(python3 scripts/oci_image.py --out "$OUT.partial/lattice.oci.tar" \
  --rootfs-tar "$WORK/rootfs.tar" "${excludes[@]}" \
  --layer "/opt/lattice/site=$WORK/site" \
  --layer "/opt/lattice/bin=$BIN_DIR" \
  --layer "/opt/lattice/capi-crds=$CRD_DIR" \
  --layer "/opt/lattice/mesh-crds=$MESH_DIR" \
  --layer "/opt/lattice/addons=$ADDONS_DIR" \
  --layer "/opt/lattice/chart=$ROOT/charts/lattice" \
  --file "/usr/local/bin/lattice=0755:$WORK/lattice" \
  --user 65532:65532 --entrypoint /usr/local/bin/lattice \
  --env PATH=/usr/local/bin:/usr/bin:/bin \
  --env LATTICE_BIN_DIR=/opt/lattice/bin --env LATTICE_CRD_DIR=/opt/lattice/capi-crds \
  --env LATTICE_MESH_CRD_DIR=/opt/lattice/mesh-crds --env LATTICE_ADDONS_DIR=/opt/lattice/addons \
  --env LATTICE_CHART_DIR=/opt/lattice/chart --env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --label "org.opencontainers.image.title=lattice" \
  --label "org.opencontainers.image.version=$(python3 -c 'import tomllib;print(tomllib.load(open("pyproject.toml","rb"))["project"]["version"])')")"
{
  echo "digest $digest"
  echo "built-seconds $(( $(date +%s) - started ))"
  echo "size-bytes $(stat -c %s "$OUT.partial/lattice.oci.tar")"
  echo "removed ${excludes[*]}"
  echo "# Debian packages"
  cat "$WORK/.packages"
  echo "# Python packages"
  grep -E '^[a-z0-9]' "$WORK/requirements.txt"
} > "$OUT.partial/build-info.txt"
echo "$digest" > "$OUT.partial/digest"
touch "$OUT.partial/.complete"
rm -rf "$OUT"
mv "$OUT.partial" "$OUT"
# Each source change makes a new 1 GB image: keep this one and the one before it, no more.
find "$LATTICE_CACHE/image" -mindepth 1 -maxdepth 1 -type d -name 'lattice-*' -printf '%T@ %p\n' \
  | sort -rn | tail -n +3 | cut -d' ' -f2- | xargs -r rm -rf
step "built $OUT/lattice.oci.tar in $(( $(date +%s) - started )) s"
echo "$digest"
