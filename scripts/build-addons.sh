#!/usr/bin/env bash
# Builds the cluster add-on tools Lattice uses, from the official Go modules, and collects the
# Flux controllers' own config/ (CRDs, manager, RBAC, default kustomization) of the pinned
# releases. Versions: addons/versions.env only. Kept apart from tools/ (and build-k8s.sh) so
# that an add-on bump never changes the cache key of the Kubernetes build.
#
#   bash scripts/build-addons.sh               build (or reuse) everything, print progress
#   bash scripts/build-addons.sh --print-dir   print the add-on dir; non-zero if not built
#   bash scripts/build-addons.sh --print-key   print the cache key of the add-on dir
#   bash scripts/build-addons.sh --sync        rewrite addons/go.mod and go.sum from versions.env
#   bash scripts/build-addons.sh --force       rebuild even if the cache holds a build
#
# Outputs, all under ${LATTICE_CACHE:-~/.cache/lattice}:
#   addons/<key>/bin/{helm,source-controller,kustomize-controller,build-info.txt}
#   addons/<key>/flux/{source-controller,kustomize-controller}/{config/...,VERSION}
#     (config/ copied verbatim from the controller's module: crd/bases, manager, rbac, default...)
#   addons/<key>/flux/install.yaml: what `flux install --components=source-controller,
#     kustomize-controller` installs, rendered with kubectl kustomize (kubectl from build-k8s.sh)
#     from flux2 <FLUX_VERSION>'s manifests/ (bases, rbac, policies, install labels), with the
#     release assets those bases download (<controller>.crds.yaml, .deployment.yaml) rendered
#     from the controllers' own config/crd and config/manager, as their release jobs render them
#   addons/<key>/cilium/chart/: Cilium's Helm chart (install/kubernetes/cilium) and
#   addons/<key>/cilium/crds/: its CRDs (pkg/k8s/apis/cilium.io/client/crds), both from
#     github.com/cilium/cilium at tools/mesh-versions.env's CILIUM_VERSION
#   <key> = helm-<v>-flux-<v>-sc-<v>-kc-<v>-<hash>, <hash> = the first 12 hex digits of the
#     sha256 of the lines "<sha256 of file>  <path>" (sorted by path) of every file under
#     addons/ and of scripts/build-addons.sh; "<key>/.complete" marks a finished build.
#   gomod/ (GOMODCACHE) and gocache/ (GOCACHE), shared with scripts/build-k8s.sh.
# Any failure is fatal and loud; nothing is ever faked or skipped.
# shellcheck disable=SC2153  # the *_VERSION variables come from addons/versions.env
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ADDONS="$ROOT/addons"
CACHE="${LATTICE_CACHE:-$HOME/.cache/lattice}"

die() { printf 'build-addons: ERROR: %s\n' "$*" >&2; exit 1; }
START=$(date +%s)
step() { printf '==> build-addons [%4ss] %s\n' "$(( $(date +%s) - START ))" "$*" >&2; }

[ -f "$ADDONS/versions.env" ] || die "missing $ADDONS/versions.env"
# shellcheck disable=SC1091
. "$ADDONS/versions.env"
# shellcheck disable=SC1091
. "$ROOT/tools/mesh-versions.env"
[ -n "${CILIUM_VERSION:-}" ] || die "tools/mesh-versions.env does not set CILIUM_VERSION"
for v in HELM_VERSION FLUX_VERSION FLUX_SOURCE_CONTROLLER_VERSION FLUX_KUSTOMIZE_CONTROLLER_VERSION \
  GO_VERSION; do
  [ -n "${!v:-}" ] || die "addons/versions.env does not set $v"
done
SC_VERSION="$FLUX_SOURCE_CONTROLLER_VERSION"
KC_VERSION="$FLUX_KUSTOMIZE_CONTROLLER_VERSION"

HELM_MOD=helm.sh/helm/v4
HELM_PKG=helm.sh/helm/v4/cmd/helm
SC_MOD=github.com/fluxcd/source-controller
KC_MOD=github.com/fluxcd/kustomize-controller
TOOL_PKGS=("$HELM_PKG" "$SC_MOD" "$KC_MOD")
BINARIES=(helm source-controller kustomize-controller)

source_hash() {
  (
    cd "$ROOT"
    {
      echo scripts/build-addons.sh
      echo tools/mesh-versions.env
      find addons -type f
    } | LC_ALL=C sort -u | while IFS= read -r f; do
      printf '%s  %s\n' "$(sha256sum < "$f" | cut -d' ' -f1)" "$f"
    done | sha256sum | cut -c1-12
  )
}
KEY="helm-${HELM_VERSION}-flux-${FLUX_VERSION}-sc-${SC_VERSION}-kc-${KC_VERSION}-$(source_hash)"
OUT_DIR="$CACHE/addons/$KEY"

MODE=build
FORCE=0
for arg in "$@"; do
  case "$arg" in
    --print-dir) MODE=print-dir ;;
    --print-key) MODE=print-key ;;
    --sync) MODE=sync ;;
    --force) FORCE=1 ;;
    -h|--help) sed -n '2,21p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

case "$MODE" in
  print-key) echo "$KEY"; exit 0 ;;
  print-dir)
    [ -f "$OUT_DIR/.complete" ] || die "no build at $OUT_DIR; run: bash scripts/build-addons.sh"
    echo "$OUT_DIR"; exit 0 ;;
esac

command -v go >/dev/null || die "go is not installed (need Go >= ${GO_VERSION})"
export GOMODCACHE="${LATTICE_GOMODCACHE:-$CACHE/gomod}"
export GOCACHE="${LATTICE_GOCACHE:-$CACHE/gocache}"
export GOTOOLCHAIN=local        # never download a toolchain: fail loudly instead
export CGO_ENABLED=0            # static binaries, as Helm and Flux release them
export GOFLAGS="-trimpath -buildvcs=false -modcacherw"
export GOWORK=off
mkdir -p "$GOMODCACHE" "$GOCACHE" "$CACHE/addons"

# module@version -> a file of it in the module cache (downloaded and verified by go).
# FIELD is Dir (the unpacked module) or GoMod (its go.mod).
module_file() {
  local field="$1" mv="$2" out path
  out="$(cd / && go mod download -json "$mv" 2>&1)" \
    || die "go mod download $mv failed: $(grep -E '"Error"' <<<"$out" || echo "$out")"
  path="$(sed -n "s/^[[:space:]]*\"$field\": \"\\(.*\\)\",\$/\\1/p" <<<"$out")"
  [ -e "$path" ] || die "go mod download $mv gave no $field"
  echo "$path"
}

# The replace directives of a go.mod that point at modules (not at local directories), one
# "old[@v]=new@v" a line: the form go mod edit -replace takes. The controllers' go.mod files
# replace e.g. github.com/opencontainers/go-digest; a dependency's replaces are ignored by go,
# so addons/go.mod has to repeat them to build what upstream builds.
module_replaces() {
  awk '
    { sub(/\/\/.*/, "") }
    /^replace[[:space:]]*\(/ { b = 1; next }
    b && /^[[:space:]]*\)/ { b = 0; next }
    /^replace[[:space:]]/ { sub(/^replace[[:space:]]+/, ""); l = $0 }
    b { l = $0 }
    l != "" {
      n = split(l, f, /[[:space:]]+/); k = 0
      for (i = 1; i <= n; i++) if (f[i] != "") g[++k] = f[i]
      if (g[2] == "=>" && k == 4) print g[1] "=" g[3] "@" g[4]
      else if (g[3] == "=>" && k == 5) print g[1] "@" g[2] "=" g[4] "@" g[5]
      l = ""
    }' "$1" | LC_ALL=C sort -u
}

# The replaces that addons/go.mod must carry: those of both controllers, which must agree.
upstream_replaces() {
  local sc kc all conflict
  sc="$(module_file GoMod "$SC_MOD@$SC_VERSION")"
  kc="$(module_file GoMod "$KC_MOD@$KC_VERSION")"
  all="$( { module_replaces "$sc"; module_replaces "$kc"; } | LC_ALL=C sort -u)"
  conflict="$(cut -d= -f1 <<<"$all" | uniq -d)"
  [ -z "$conflict" ] || die "source-controller $SC_VERSION and kustomize-controller $KC_VERSION" \
    "replace these modules differently: $conflict"
  echo "$all"
}

sync_module() {
  step "sync addons/go.mod from addons/versions.env"
  local tmp args r reps
  reps="$(upstream_replaces)"   # a plain assignment, so that its failure stops the script
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' EXIT
  args=()
  while IFS= read -r r; do
    [ -n "$r" ] && args+=("-replace=$r")
  done <<<"$reps"
  (
    cd "$tmp"
    go mod init lattice.local/addons 2>/dev/null
    go mod edit -go="$GO_VERSION"
    [ "${#args[@]}" -eq 0 ] || go mod edit "${args[@]}"
    go get -tool "$HELM_PKG@$HELM_VERSION" "$SC_MOD@$SC_VERSION" "$KC_MOD@$KC_VERSION"
    # The controllers' own API modules at the controllers' versions (upstream replaces them
    # with ./api, which a module zip cannot honour).
    go get "$SC_MOD/api@$SC_VERSION" "$KC_MOD/api@$KC_VERSION"
    go mod tidy
  ) || die "go get / go mod tidy failed for helm ${HELM_VERSION}, source-controller ${SC_VERSION}," \
    "kustomize-controller ${KC_VERSION} (see above)"
  cp "$tmp/go.mod" "$tmp/go.sum" "$ADDONS/"
  rm -rf "$tmp"
  trap - EXIT
  check_module
  step "synced; commit addons/go.mod and addons/go.sum"
}

# A build refuses a go.mod that disagrees with versions.env (run --sync after a bump).
check_module() {
  local gm="$ADDONS/go.mod" mv m v p r ours reps
  [ -f "$gm" ] || die "no addons/go.mod; run --sync"
  [ -f "$ADDONS/go.sum" ] || die "no addons/go.sum; run --sync"
  for mv in "$HELM_MOD@$HELM_VERSION" "$SC_MOD@$SC_VERSION" "$KC_MOD@$KC_VERSION" \
    "$SC_MOD/api@$SC_VERSION" "$KC_MOD/api@$KC_VERSION"; do
    m="${mv%@*}"; v="${mv#*@}"
    grep -Eq "^(require |[[:space:]]+)${m//./\\.} ${v//./\\.}( // indirect)?\$" "$gm" \
      || die "addons/go.mod does not require $m $v (versions.env); run --sync"
  done
  for p in "${TOOL_PKGS[@]}"; do
    grep -Eq "^(tool |[[:space:]]+)${p//./\\.}\$" "$gm" || die "addons/go.mod lacks: tool $p; run --sync"
  done
  ours="$(module_replaces "$gm")"
  reps="$(upstream_replaces)"
  while IFS= read -r r; do
    [ -z "$r" ] || grep -qxF -- "$r" <<<"$ours" \
      || die "addons/go.mod lacks the controllers' replace ${r/=/ => }; run --sync"
  done <<<"$reps"
}

if [ "$MODE" = sync ]; then
  sync_module
  exit 0
fi

# go build with a heartbeat: the package count goes to stderr every 30 s.
# OUT is a directory (ending in /); the packages follow.
go_build() {
  local out="$1" ldflags="$2" log pid n rc
  shift 2
  log="$out.build.log"
  (cd "$ADDONS" && exec go build -mod=readonly -v -p "$(nproc)" -ldflags "$ldflags" -o "$out" "$@") \
    >"$log" 2>&1 &
  pid=$!
  while kill -0 "$pid" 2>/dev/null; do
    for _ in $(seq 30); do kill -0 "$pid" 2>/dev/null || break; sleep 1; done
    if kill -0 "$pid" 2>/dev/null; then
      n=$(grep -c . "$log" || true)
      step "  ... addons: $n packages compiled so far"
    fi
  done
  rc=0
  wait "$pid" || rc=$?
  if [ "$rc" -ne 0 ]; then
    grep -v '^[a-zA-Z0-9._/~-]*$' "$log" | tail -n 60 >&2 || tail -n 60 "$log" >&2
    die "go build in addons/ failed (exit $rc); full log: $log"
  fi
}

# copy_config NAME VERSION MODULE_DIR DEST: the controller's config/ as released, verbatim.
copy_config() {
  local name="$1" version="$2" mdir="$3" dst="$4/$1" d n
  for d in crd/bases manager rbac default; do
    [ -d "$mdir/config/$d" ] || die "$name $version: its module has no config/$d"
  done
  mkdir -p "$dst"
  cp -R "$mdir/config" "$dst/config"
  chmod -R u+w "$dst"
  echo "$version" >"$dst/VERSION"
  n=$(find "$dst/config/crd/bases" -name '*.yaml' | wc -l)
  [ "$n" -gt 0 ] || die "$name $version: no CRDs in config/crd/bases"
  step "  $name $version: $n CRDs, config/{$(find "$dst/config" -mindepth 1 -maxdepth 1 -printf '%f\n' \
    | LC_ALL=C sort | paste -sd, -)}"
}

# The Flux install for the two controllers, rendered offline from flux2's own manifests/.
render_flux() {
  local sc_dir="$1" kc_dir="$2" dst="$3" kubectl flux_dir work c src n
  kubectl="$(bash "$ROOT/scripts/build-k8s.sh" --print-bin-dir)/kubectl" \
    || die "kubectl is not built: run bash scripts/build-k8s.sh first"
  flux_dir="$(module_file Dir "github.com/fluxcd/flux2/v2@$FLUX_VERSION")/manifests"
  work="$dst/.kustomize"
  mkdir -p "$work/bases" "$work/install"
  cp -R "$flux_dir/rbac" "$flux_dir/policies" "$work/"
  cp "$flux_dir/install/namespace.yaml" "$flux_dir/install/labels.yaml" "$work/install/"
  for c in source-controller kustomize-controller; do
    case "$c" in source-controller) src="$sc_dir" ;; *) src="$kc_dir" ;; esac
    cp -R "$flux_dir/bases/$c" "$work/bases/"
    chmod -R u+w "$work"
    "$kubectl" kustomize "$src/config/crd" >"$work/bases/$c/$c.crds.yaml" \
      || die "kubectl kustomize $c config/crd failed"
    "$kubectl" kustomize "$src/config/manager" >"$work/bases/$c/$c.deployment.yaml" \
      || die "kubectl kustomize $c config/manager failed"
    # the release assets the base downloads, from the files just rendered
    sed -i "s#https://github.com/fluxcd/$c/releases/download/[^/]*/##" "$work/bases/$c/kustomization.yaml"
    grep -q "https://" "$work/bases/$c/kustomization.yaml" && die "flux2 base $c still names a URL"
    # as `flux install` without notification-controller: no --events-addr
    awk 'BEGIN{skip=0} /^- op:/{skip=0} /--events-addr=/{skip=1} {buf[NR]=$0}
         END{for(i=1;i<=NR;i++){ if (buf[i] ~ /^- op:/ && buf[i+2] ~ /--events-addr=/) {i+=2; continue}
              print buf[i]}}' "$work/bases/$c/patch.yaml" >"$work/bases/$c/patch.yaml.new"
    mv "$work/bases/$c/patch.yaml.new" "$work/bases/$c/patch.yaml"
    grep -q -- "--events-addr" "$work/bases/$c/patch.yaml" && die "could not drop --events-addr from $c"
  done
  cat >"$work/install/kustomization.yaml" <<'EOF_K'
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
namespace: flux-system
resources:
  - namespace.yaml
  - ../bases/source-controller
  - ../bases/kustomize-controller
  - ../rbac
  - ../policies
transformers:
  - labels.yaml
images:
  - name: fluxcd/source-controller
    newName: ghcr.io/fluxcd/source-controller
  - name: fluxcd/kustomize-controller
    newName: ghcr.io/fluxcd/kustomize-controller
EOF_K
  "$kubectl" kustomize "$work/install" >"$dst/install.yaml" || die "kubectl kustomize of the Flux install failed"
  rm -rf "$work"
  n=$(grep -c '^kind: ' "$dst/install.yaml" || true)
  for c in source-controller kustomize-controller; do
    grep -q "image: ghcr.io/fluxcd/$c:v" "$dst/install.yaml" || die "install.yaml has no $c Deployment"
  done
  step "  flux/install.yaml: $n objects (flux2 ${FLUX_VERSION})"
}

# Cilium's chart and CRDs from its Go module (the version the mesh CRDs come from).
copy_cilium() {
  local dst="$1" dir n
  dir="$(module_file Dir "github.com/cilium/cilium@$CILIUM_VERSION")"
  [ -f "$dir/install/kubernetes/cilium/Chart.yaml" ] || die "cilium $CILIUM_VERSION has no Helm chart"
  mkdir -p "$dst/crds"
  cp -R "$dir/install/kubernetes/cilium" "$dst/chart"
  for v in v2 v2alpha1; do
    mkdir -p "$dst/crds/$v"
    cp "$dir/pkg/k8s/apis/cilium.io/client/crds/$v/"*.yaml "$dst/crds/$v/"
  done
  chmod -R u+w "$dst"
  grep -q "^version: ${CILIUM_VERSION#v}\$" "$dst/chart/Chart.yaml" || die "the chart is not Cilium ${CILIUM_VERSION}"
  n=$(find "$dst/crds" -name '*.yaml' | wc -l)
  step "  cilium ${CILIUM_VERSION}: chart and $n CRDs"
}

build() {
  local tmp ld help b sc_dir kc_dir out
  check_module
  tmp="$CACHE/addons/.tmp-$KEY-$$"
  rm -rf "$tmp"
  mkdir -p "$tmp/bin" "$tmp/flux"
  trap 'rm -rf "$tmp"' EXIT

  step "download Go modules (GOMODCACHE=$GOMODCACHE)"
  (cd "$ADDONS" && go mod download) || die "go mod download failed in addons/"

  # As helm's Makefile sets them for a release tag; the commit is not in the module zip.
  ld="-s -w"
  ld+=" -X helm.sh/helm/v4/internal/version.version=${HELM_VERSION}"
  ld+=" -X helm.sh/helm/v4/internal/version.metadata="
  ld+=" -X helm.sh/helm/v4/internal/version.gitTreeState=clean"
  step "go build helm ${HELM_VERSION}, source-controller ${SC_VERSION}, kustomize-controller ${KC_VERSION}"
  go_build "$tmp/bin/" "$ld" "${TOOL_PKGS[@]}"
  for b in "${BINARIES[@]}"; do
    [ -x "$tmp/bin/$b" ] || die "the build produced no $b"
  done

  out="$("$tmp/bin/helm" version --short 2>&1)" || die "helm version failed: $out"
  [ "$out" = "$HELM_VERSION" ] || die "helm reports $out, not ${HELM_VERSION}"
  for b in source-controller kustomize-controller; do
    help="$("$tmp/bin/$b" --help 2>&1 || true)"
    if ! grep -q -- '--metrics-addr' <<<"$help" || ! grep -q -- '--watch-all-namespaces' <<<"$help"; then
      die "$b does not look like a Flux controller: $help"
    fi
  done
  help="$("$tmp/bin/source-controller" --help 2>&1 || true)"
  grep -q -- '--storage-path' <<<"$help" || die "source-controller lacks --storage-path: $help"
  help="$("$tmp/bin/kustomize-controller" --help 2>&1 || true)"
  grep -q -- '--no-remote-bases' <<<"$help" || die "kustomize-controller lacks --no-remote-bases: $help"

  step "copy the Flux controllers' config/"
  sc_dir="$(module_file Dir "$SC_MOD@$SC_VERSION")"
  kc_dir="$(module_file Dir "$KC_MOD@$KC_VERSION")"
  copy_config source-controller "$SC_VERSION" "$sc_dir" "$tmp/flux"
  copy_config kustomize-controller "$KC_VERSION" "$kc_dir" "$tmp/flux"
  render_flux "$sc_dir" "$kc_dir" "$tmp/flux"
  step "copy Cilium's chart and CRDs"
  copy_cilium "$tmp/cilium"

  {
    echo "key=$KEY"
    echo "go=$(go env GOVERSION)"
    echo "built_at=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "build_seconds=$(( $(date +%s) - START ))"
    echo "helm_kube_client=$("$tmp/bin/helm" version --template '{{.KubeClientVersion}}')"
    for b in "${BINARIES[@]}"; do
      go version -m "$tmp/bin/$b" | awk -v b="$b" \
        '$1 == "mod" || ($1 == "dep" && $2 ~ /^(k8s\.io\/client-go|sigs\.k8s\.io\/controller-runtime)$/) \
          { print b ": " $2 " " $3 }'
    done
    grep -Ev '^[[:space:]]*(#|$)' "$ADDONS/versions.env"
    echo "CILIUM_VERSION=$CILIUM_VERSION"
  } >"$tmp/bin/build-info.txt"
  rm -f "$tmp/bin/.build.log" "$tmp/bin/"*.build.log
  touch "$tmp/.complete"
  rm -rf "$OUT_DIR"
  mv "$tmp" "$OUT_DIR"
  trap - EXIT
}

step "versions: helm ${HELM_VERSION}, flux ${FLUX_VERSION} (source-controller ${SC_VERSION}," \
  "kustomize-controller ${KC_VERSION})"
step "cache: $CACHE"
if [ "$FORCE" = 0 ] && [ -f "$OUT_DIR/.complete" ]; then
  step "add-ons cached: $OUT_DIR"
else
  build
  step "add-ons built: $OUT_DIR ($(du -sh "$OUT_DIR" | cut -f1))"
fi
step "done"
