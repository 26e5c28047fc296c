#!/usr/bin/env bash
# Collects the real CRDs of Istio, Cilium, Gateway API and external-dns that Lattice's discovery
# compilers generate objects for, from their Go modules (module proxy, checksum-verified by go).
# Versions: tools/mesh-versions.env only.
#
#   bash scripts/fetch-mesh-crds.sh              fetch (or reuse) them, print progress
#   bash scripts/fetch-mesh-crds.sh --print-dir  print the directory; non-zero if not fetched
#
# Output: ${LATTICE_CACHE:-~/.cache/lattice}/crds/mesh-<versions>/{istio,cilium,gateway-api,
# external-dns}/*.yaml, VERSIONS and a .complete marker. Any failure is fatal and loud.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CACHE="${LATTICE_CACHE:-$HOME/.cache/lattice}"
die() { printf 'fetch-mesh-crds: ERROR: %s\n' "$*" >&2; exit 1; }
START=$(date +%s)
step() { printf '==> fetch-mesh-crds [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

[ -f "$ROOT/tools/mesh-versions.env" ] || die "missing tools/mesh-versions.env"
# shellcheck disable=SC1091
. "$ROOT/tools/mesh-versions.env"
for v in ISTIO_API_VERSION CILIUM_VERSION GATEWAY_API_VERSION EXTERNAL_DNS_VERSION; do
  [ -n "${!v:-}" ] || die "tools/mesh-versions.env does not set $v"
done
# Must match lattice.adapters.binaries.mesh_crd_key().
KEY="mesh-istio-${ISTIO_API_VERSION}-cilium-${CILIUM_VERSION}-gwapi-${GATEWAY_API_VERSION}-xdns-${EXTERNAL_DNS_VERSION}"
DIR="$CACHE/crds/$KEY"

if [ "${1:-}" = "--print-dir" ]; then
  [ -f "$DIR/.complete" ] || die "not fetched yet: run bash scripts/fetch-mesh-crds.sh"
  echo "$DIR"
  exit 0
fi
[ $# -eq 0 ] || die "unknown argument: $1"
if [ -f "$DIR/.complete" ]; then
  step "cached: $DIR"
  exit 0
fi

command -v go >/dev/null || die "go is not installed (needed to fetch modules from the Go module proxy)"
export GOMODCACHE="${LATTICE_GOMODCACHE:-$CACHE/gomod}"
export GOTOOLCHAIN=local GOFLAGS=-modcacherw
mkdir -p "$GOMODCACHE"

module_dir() {  # module@version -> its extracted, checksum-verified directory
  local out dir
  out="$(cd "$(mktemp -d)" && go mod download -json "$1")" || die "go mod download $1 failed: $out"
  dir="$(printf '%s\n' "$out" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -n "$dir" ] && [ -d "$dir" ] || die "go mod download $1 gave no directory: $out"
  printf '%s\n' "$dir"
}

take() {  # dest-subdir source-file...
  local dest="$TMP/$1"; shift
  mkdir -p "$dest"
  for f in "$@"; do
    [ -f "$f" ] || die "expected CRD file missing: $f"
    cp "$f" "$dest/"
  done
}

TMP="$(mktemp -d "$CACHE/crds/.mesh-XXXXXX")"
trap 'rm -rf "$TMP"' EXIT

step "istio.io/api@$ISTIO_API_VERSION"
d="$(module_dir "istio.io/api@$ISTIO_API_VERSION")"
take istio "$d/kubernetes/customresourcedefinitions.gen.yaml"

step "github.com/cilium/cilium@$CILIUM_VERSION (about 40 MB)"
d="$(module_dir "github.com/cilium/cilium@$CILIUM_VERSION")"
take cilium "$d/pkg/k8s/apis/cilium.io/client/crds/v2/ciliumnetworkpolicies.yaml"

step "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION"
d="$(module_dir "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION")"
s="$d/config/crd/standard"
take gateway-api "$s/gateway.networking.k8s.io_gatewayclasses.yaml" "$s/gateway.networking.k8s.io_gateways.yaml" \
  "$s/gateway.networking.k8s.io_httproutes.yaml" "$s/gateway.networking.k8s.io_referencegrants.yaml"

step "sigs.k8s.io/external-dns@$EXTERNAL_DNS_VERSION"
d="$(module_dir "sigs.k8s.io/external-dns@$EXTERNAL_DNS_VERSION")"
take external-dns "$d/config/crd/standard/dnsendpoints.externaldns.k8s.io.yaml"

cat > "$TMP/VERSIONS" <<INFO
istio.io/api $ISTIO_API_VERSION
github.com/cilium/cilium $CILIUM_VERSION
sigs.k8s.io/gateway-api $GATEWAY_API_VERSION
sigs.k8s.io/external-dns $EXTERNAL_DNS_VERSION
INFO
touch "$TMP/.complete"
rm -rf "$DIR"
mv "$TMP" "$DIR"
trap - EXIT
step "done: $DIR"
