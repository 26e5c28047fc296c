#!/usr/bin/env bash
# Builds the real Kubernetes parts Lattice tests against, from the official Go modules, and
# collects the Cluster API CRDs of the pinned releases. Versions: tools/versions.env only.
#
#   bash scripts/build-k8s.sh                  build (or reuse) everything, print progress
#   bash scripts/build-k8s.sh --print-bin-dir  print the bin dir; non-zero if not built
#   bash scripts/build-k8s.sh --print-crd-dir  print the CRD dir; non-zero if not collected
#   bash scripts/build-k8s.sh --print-key      print the cache key of the bin dir
#   bash scripts/build-k8s.sh --sync           rewrite tools/*/go.mod and go.sum from versions.env
#   bash scripts/build-k8s.sh --force          rebuild even if the cache holds a build
#
# Outputs, all under ${LATTICE_CACHE:-~/.cache/lattice}:
#   bin/<key>/{kube-apiserver,kube-controller-manager,kube-scheduler,kubectl,etcd,clusterctl,
#              capi-controller-manager,capi-kubeadm-bootstrap-controller-manager,
#              capi-kubeadm-control-plane-controller-manager,build-info.txt}
#     (the three CAPI managers are the packages core, bootstrap/kubeadm and controlplane/kubeadm
#     of sigs.k8s.io/cluster-api, named after the Deployments `clusterctl init` creates)
#     <key> = versions + a hash of tools/ sources and of this script; ".complete" marks a build
#   crds/<capi+provider versions>/<provider>/{bases/*.yaml,kustomization.yaml,metadata.yaml,VERSION}
#     and, for the three CAPI managers' providers, webhook.yaml (their config/webhook/manifests.yaml)
#   gomod/ (GOMODCACHE) and gocache/ (GOCACHE), so a machine's whole cache is in one place.
# Any failure is fatal and loud; nothing is ever faked or skipped.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS="$ROOT/tools"
CACHE="${LATTICE_CACHE:-$HOME/.cache/lattice}"

die() { printf 'build-k8s: ERROR: %s\n' "$*" >&2; exit 1; }
START=$(date +%s)
step() { printf '==> build-k8s [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

[ -f "$TOOLS/versions.env" ] || die "missing $TOOLS/versions.env"
# shellcheck disable=SC1091
. "$TOOLS/versions.env"
for v in KUBERNETES_VERSION KUBERNETES_STAGING_VERSION ETCD_VERSION CAPI_VERSION \
  CAPA_VERSION CAPG_VERSION CAPZ_VERSION GO_VERSION; do
  [ -n "${!v:-}" ] || die "tools/versions.env does not set $v"
done

# The cache key of the binaries: must match lattice.adapters.binaries.bin_key().
source_hash() {
  (
    cd "$ROOT"
    {
      echo tools/versions.env
      echo scripts/build-k8s.sh
      find tools -type f \( -name '*.go' -o -name go.mod -o -name go.sum \)
    } | LC_ALL=C sort -u | while IFS= read -r f; do
      printf '%s  %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "$f"
    done | sha256sum | cut -c1-12
  )
}
KEY="k8s-${KUBERNETES_VERSION}-etcd-${ETCD_VERSION}-capi-${CAPI_VERSION}-$(source_hash)"
BIN_DIR="$CACHE/bin/$KEY"
CRD_KEY="capi-${CAPI_VERSION}-capa-${CAPA_VERSION}-capg-${CAPG_VERSION}-capz-${CAPZ_VERSION}"
CRD_DIR="$CACHE/crds/$CRD_KEY"
CAPI_MANAGERS=(capi-controller-manager capi-kubeadm-bootstrap-controller-manager
  capi-kubeadm-control-plane-controller-manager)
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl etcd clusterctl "${CAPI_MANAGERS[@]}")

MODE=build
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --print-bin-dir) MODE=print-bin ;;
    --print-crd-dir) MODE=print-crd ;;
    --print-key) MODE=print-key ;;
    --sync) MODE=sync ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

case "$MODE" in
  print-key) echo "$KEY"; exit 0 ;;
  print-bin)
    [ -f "$BIN_DIR/.complete" ] || die "no build at $BIN_DIR; run: bash scripts/build-k8s.sh"
    echo "$BIN_DIR"; exit 0 ;;
  print-crd)
    [ -f "$CRD_DIR/.complete" ] && [ -f "$CRD_DIR/control-plane-kubeadm/webhook.yaml" ] \
      || die "no CRDs at $CRD_DIR; run: bash scripts/build-k8s.sh"
    echo "$CRD_DIR"; exit 0 ;;
esac

command -v go >/dev/null || die "go is not installed (need Go >= ${GO_VERSION})"
export GOMODCACHE="${LATTICE_GOMODCACHE:-$CACHE/gomod}"
export GOCACHE="${LATTICE_GOCACHE:-$CACHE/gocache}"
export GOTOOLCHAIN=local        # never download a toolchain: fail loudly instead
export CGO_ENABLED=0            # static binaries, as Kubernetes releases its servers
export GOFLAGS="-trimpath -buildvcs=false"
export GOWORK=off
mkdir -p "$GOMODCACHE" "$GOCACHE" "$CACHE/bin" "$CACHE/crds"

# go.mod edits: every k8s.io staging module k8s.io/kubernetes requires at v0.0.0.
staging_modules() {
  local mod
  mod="$(go mod download -json "k8s.io/kubernetes@${KUBERNETES_VERSION}" \
    | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')"
  [ -f "$mod" ] || die "cannot read the go.mod of k8s.io/kubernetes@${KUBERNETES_VERSION}"
  awk '/^require \(/{r=1;next} r&&/^\)/{r=0} r&&$1 ~ /^k8s\.io\// && $2=="v0.0.0"{print $1}' "$mod" \
    | LC_ALL=C sort -u
}

sync_modules() {
  step "sync tools/*/go.mod from tools/versions.env"
  local m args
  (
    cd "$TOOLS/k8s"
    [ -f go.mod ] || go mod init lattice.local/tools/k8s
    go mod edit -go="$GO_VERSION" -require="k8s.io/kubernetes@${KUBERNETES_VERSION}"
    args=()
    for m in $(staging_modules); do
      args+=("-replace=${m}=${m}@${KUBERNETES_STAGING_VERSION}")
    done
    [ "${#args[@]}" -gt 20 ] || die "found only ${#args[@]} staging modules"
    go mod edit "${args[@]}"
    go mod tidy
  )
  (
    cd "$TOOLS/etcd"
    [ -f go.mod ] || go mod init lattice.local/tools/etcd
    go mod edit -go="$GO_VERSION" -require="go.etcd.io/etcd/server/v3@${ETCD_VERSION}"
    go mod tidy
  )
  (
    cd "$TOOLS/clusterctl"
    [ -f go.mod ] || go mod init lattice.local/tools/clusterctl
    go mod edit -go="$GO_VERSION" -require="sigs.k8s.io/cluster-api@${CAPI_VERSION}" \
      -replace="sigs.k8s.io/cluster-api/api=sigs.k8s.io/cluster-api/api@${CAPI_VERSION}"
    go mod tidy
  )
  (
    cd "$TOOLS/capi"
    # The three managers are `tool`s of this module; api is a module of its own since v1.14,
    # which cluster-api's go.mod replaces with ./api (a replace the module zip cannot honour).
    go mod edit -go="$GO_VERSION" -require="sigs.k8s.io/cluster-api@${CAPI_VERSION}" \
      -replace="sigs.k8s.io/cluster-api/api=sigs.k8s.io/cluster-api/api@${CAPI_VERSION}"
    go mod tidy
  )
  step "synced; commit tools/*/go.mod and tools/*/go.sum"
}

# A build refuses go.mod files that disagree with versions.env (run --sync after a bump).
check_modules() {
  local gm="$TOOLS/k8s/go.mod" bad
  grep -Eq "^(require |replace |[[:space:]]+)k8s.io/kubernetes ${KUBERNETES_VERSION}\$" "$gm" \
    || die "tools/k8s/go.mod does not require k8s.io/kubernetes ${KUBERNETES_VERSION}; run --sync"
  bad="$(grep -E '=> k8s.io/' "$gm" | grep -Ev " ${KUBERNETES_STAGING_VERSION}\$" || true)"
  [ -z "$bad" ] || die "tools/k8s/go.mod replaces staging modules at other versions: $bad"
  for m in $(staging_modules); do
    grep -Eq "^(require |replace |[[:space:]]+)${m//./\\.} => ${m//./\\.} ${KUBERNETES_STAGING_VERSION}\$" "$gm" \
      || die "tools/k8s/go.mod lacks: replace $m => $m ${KUBERNETES_STAGING_VERSION}; run --sync"
  done
  grep -Eq "^(require |replace |[[:space:]]+)go.etcd.io/etcd/server/v3 ${ETCD_VERSION}\$" "$TOOLS/etcd/go.mod" \
    || die "tools/etcd/go.mod does not require etcd ${ETCD_VERSION}; run --sync"
  for d in clusterctl capi; do
    grep -Eq "^(require |replace |[[:space:]]+)sigs.k8s.io/cluster-api ${CAPI_VERSION}( // indirect)?\$" \
      "$TOOLS/$d/go.mod" || die "tools/$d/go.mod does not require cluster-api ${CAPI_VERSION}; run --sync"
    grep -Eq "sigs.k8s.io/cluster-api/api => sigs.k8s.io/cluster-api/api ${CAPI_VERSION}\$" \
      "$TOOLS/$d/go.mod" || die "tools/$d/go.mod lacks the cluster-api/api ${CAPI_VERSION} replace; run --sync"
  done
}

if [ "$MODE" = sync ]; then
  sync_modules
  exit 0
fi

# go build with a heartbeat: the package count goes to stderr every 30 s.
# OUT is a directory (ending in /) or a file; EXTRA go build flags may follow in GO_BUILD_FLAGS.
go_build() {
  local dir="$1" out="$2" ldflags="$3" log pid n rc
  shift 3
  case "$out" in
    */) log="$out.build-$(basename "$dir").log" ;;
    *) log="$(dirname "$out")/.build-$(basename "$out").log" ;;
  esac
  # shellcheck disable=SC2086
  (cd "$dir" && exec go build -mod=readonly -v -p "$(nproc)" ${GO_BUILD_FLAGS:-} -ldflags "$ldflags" \
    -o "$out" "$@") \
    >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      n=$(grep -c . "$log" || true)
      step "  ... $(basename "$dir"): $n packages compiled so far"
    fi
  done
  rc=0
  wait "$pid" || rc=$?
  if [ "$rc" -ne 0 ]; then
    grep -v '^[a-zA-Z0-9._/~-]*$' "$log" | tail -n 60 >&2 || tail -n 60 "$log" >&2
    die "go build in tools/$(basename "$dir") failed (exit $rc); full log: $log"
  fi
}

build_binaries() {
  local tmp minor ldk ldc help
  check_modules
  tmp="$CACHE/bin/.tmp-$KEY-$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  minor="${KUBERNETES_VERSION#v*.}"; minor="${minor%%.*}"
  local major="${KUBERNETES_VERSION#v}"; major="${major%%.*}"
  ldk="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ldk+=" -X ${pkg}.gitVersion=${KUBERNETES_VERSION} -X ${pkg}.gitMajor=${major}"
    ldk+=" -X ${pkg}.gitMinor=${minor} -X ${pkg}.gitTreeState=clean"
    ldk+=" -X ${pkg}.buildDate=1970-01-01T00:00:00Z"
  done
  local cmaj="${CAPI_VERSION#v}" cmin
  cmin="${cmaj#*.}"; cmin="${cmin%%.*}"; cmaj="${cmaj%%.*}"
  ldc="-s -w"
  ldc+=" -X sigs.k8s.io/cluster-api/version.gitVersion=${CAPI_VERSION}"
  ldc+=" -X sigs.k8s.io/cluster-api/version.gitMajor=${cmaj}"
  ldc+=" -X sigs.k8s.io/cluster-api/version.gitMinor=${cmin}"
  ldc+=" -X sigs.k8s.io/cluster-api/version.gitTreeState=clean"
  ldc+=" -X sigs.k8s.io/cluster-api/version.buildDate=1970-01-01T00:00:00Z"
  ldc+=" -X k8s.io/client-go/pkg/version.gitVersion=${KUBERNETES_VERSION}"

  step "download Go modules (GOMODCACHE=$GOMODCACHE)"
  for d in k8s etcd clusterctl capi; do
    (cd "$TOOLS/$d" && go mod download) || die "go mod download failed in tools/$d"
  done
  step "go build kube-apiserver kube-controller-manager kubectl (k8s.io/kubernetes ${KUBERNETES_VERSION})"
  go_build "$TOOLS/k8s" "$tmp/" "$ldk" ./cmd/kube-apiserver ./cmd/kube-controller-manager \
    ./cmd/kube-scheduler ./cmd/kubectl
  step "go build etcd (${ETCD_VERSION})"
  go_build "$TOOLS/etcd" "$tmp/" "-s -w" ./cmd/etcd
  step "go build clusterctl (${CAPI_VERSION})"
  go_build "$TOOLS/clusterctl" "$tmp/" "$ldc" ./cmd/clusterctl
  # The managers as upstream's Dockerfile builds them (-tags=fieldsv1string).
  local pkg name
  for pkg in core bootstrap/kubeadm controlplane/kubeadm; do
    case "$pkg" in
      core) name=capi-controller-manager ;;
      bootstrap/kubeadm) name=capi-kubeadm-bootstrap-controller-manager ;;
      controlplane/kubeadm) name=capi-kubeadm-control-plane-controller-manager ;;
    esac
    step "go build $name (sigs.k8s.io/cluster-api/$pkg ${CAPI_VERSION})"
    GO_BUILD_FLAGS=-tags=fieldsv1string go_build "$TOOLS/capi" "$tmp/$name" "$ldc" "sigs.k8s.io/cluster-api/$pkg"
  done

  for b in "${BINARIES[@]}"; do
    [ -x "$tmp/$b" ] || die "the build produced no $b"
  done
  "$tmp/kube-apiserver" --version | grep -qx "Kubernetes ${KUBERNETES_VERSION}" \
    || die "kube-apiserver reports $("$tmp/kube-apiserver" --version), not ${KUBERNETES_VERSION}"
  "$tmp/etcd" --version | grep -q "etcd Version: ${ETCD_VERSION#v}" \
    || die "etcd reports: $("$tmp/etcd" --version)"
  "$tmp/clusterctl" version -o short | grep -qx "${CAPI_VERSION}" \
    || die "clusterctl reports: $("$tmp/clusterctl" version -o short)"
  "$tmp/kube-scheduler" --version | grep -qx "Kubernetes ${KUBERNETES_VERSION}" \
    || die "kube-scheduler reports $("$tmp/kube-scheduler" --version), not ${KUBERNETES_VERSION}"
  for b in "${CAPI_MANAGERS[@]}"; do
    help="$("$tmp/$b" --help 2>&1 || true)"
    grep -q -- '--webhook-port' <<<"$help" || die "$b does not look like a CAPI manager: $help"
  done
  {
    echo "key=$KEY"
    echo "go=$(go env GOVERSION)"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$(( $(date +%s) - START ))"
    cat "$TOOLS/versions.env"
  } >"$tmp/build-info.txt"
  rm -f "$tmp"/.build-*.log
  touch "$tmp/.complete"
  rm -rf "$BIN_DIR"
  mv "$tmp" "$BIN_DIR"
  trap - EXIT
}

# module@version -> its directory in the module cache (downloaded and verified by go).
module_dir() {
  local dir
  dir="$(go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [ -d "$dir" ] || die "go mod download $1 gave no directory"
  echo "$dir"
}

# copy_provider NAME VERSION MODULE_DIR CRD_SUBDIR METADATA_FILE
copy_provider() {
  local name="$1" version="$2" mdir="$3" sub="$4" meta="$5" dst="$6/$1" n
  [ -d "$mdir/$sub/bases" ] || die "$name $version: no CRDs at $sub/bases"
  [ -f "$meta" ] || die "$name $version: no metadata.yaml at $meta"
  mkdir -p "$dst/bases"
  cp "$mdir/$sub/bases/"*.yaml "$dst/bases/"
  if [ -f "$mdir/$sub/kustomization.yaml" ]; then cp "$mdir/$sub/kustomization.yaml" "$dst/"; fi
  cp "$meta" "$dst/metadata.yaml"
  echo "$version" >"$dst/VERSION"
  chmod -R u+w "$dst"
  n=$(find "$dst/bases" -name '*.yaml' | wc -l)
  step "  $name $version: $n CRDs"
}

collect_crds() {
  local tmp capi capi_test capa capg capz
  tmp="$CACHE/crds/.tmp-$CRD_KEY-$$"
  rm -rf "$tmp"
  mkdir -p "$tmp"
  trap 'rm -rf "$tmp"' EXIT
  capi="$(module_dir "sigs.k8s.io/cluster-api@${CAPI_VERSION}")"
  capi_test="$(module_dir "sigs.k8s.io/cluster-api/test@${CAPI_VERSION}")"
  capa="$(module_dir "sigs.k8s.io/cluster-api-provider-aws/v2@${CAPA_VERSION}")"
  capg="$(module_dir "sigs.k8s.io/cluster-api-provider-gcp@${CAPG_VERSION}")"
  capz="$(module_dir "sigs.k8s.io/cluster-api-provider-azure@${CAPZ_VERSION}")"
  copy_provider cluster-api "$CAPI_VERSION" "$capi" core/config/crd "$capi/metadata.yaml" "$tmp"
  local sub
  for sub in cluster-api:core bootstrap-kubeadm:bootstrap/kubeadm control-plane-kubeadm:controlplane/kubeadm; do
    [ -d "$tmp/${sub%%:*}" ] || copy_provider "${sub%%:*}" "$CAPI_VERSION" "$capi" "${sub#*:}/config/crd" \
      "$capi/metadata.yaml" "$tmp"
    [ -f "$capi/${sub#*:}/config/webhook/manifests.yaml" ] || die "no webhook manifests in ${sub#*:}"
    cp "$capi/${sub#*:}/config/webhook/manifests.yaml" "$tmp/${sub%%:*}/webhook.yaml"
    chmod u+w "$tmp/${sub%%:*}/webhook.yaml"
  done
  copy_provider clusterctl "$CAPI_VERSION" "$capi" cmd/clusterctl/config/crd \
    "$capi/metadata.yaml" "$tmp"
  copy_provider infrastructure-docker "$CAPI_VERSION" "$capi_test" \
    infrastructure/docker/config/crd "$capi/metadata.yaml" "$tmp"
  copy_provider infrastructure-aws "$CAPA_VERSION" "$capa" config/crd "$capa/metadata.yaml" "$tmp"
  copy_provider infrastructure-gcp "$CAPG_VERSION" "$capg" config/crd "$capg/metadata.yaml" "$tmp"
  copy_provider infrastructure-azure "$CAPZ_VERSION" "$capz" config/crd "$capz/metadata.yaml" "$tmp"
  touch "$tmp/.complete"
  rm -rf "$CRD_DIR"
  mv "$tmp" "$CRD_DIR"
  trap - EXIT
}

step "versions: kubernetes ${KUBERNETES_VERSION}, etcd ${ETCD_VERSION}, cluster-api ${CAPI_VERSION}"
step "cache: $CACHE"
if [ "$FORCE" = 0 ] && [ -f "$BIN_DIR/.complete" ]; then
  step "binaries cached: $BIN_DIR"
else
  build_binaries
  step "binaries built: $BIN_DIR ($(du -sh "$BIN_DIR" | cut -f1))"
fi
# A collection from before the webhook manifests were collected is collected again.
if [ "$FORCE" = 0 ] && [ -f "$CRD_DIR/.complete" ] && [ -f "$CRD_DIR/control-plane-kubeadm/webhook.yaml" ]; then
  step "CRDs cached: $CRD_DIR"
else
  step "collect Cluster API CRDs"
  collect_crds
  step "CRDs collected: $CRD_DIR"
fi
step "done"
