#!/usr/bin/env bash
# The Python environment of the application, CI and the demo, from the lock (uv.lock).
#
#   bash scripts/python-env.sh            .venv with Lattice and its runtime dependencies
#   bash scripts/python-env.sh --dev      ... and the dev extra (tests, linters, codegen)
#   bash scripts/python-env.sh --check    fail if uv.lock does not match pyproject.toml
#   bash scripts/python-env.sh --refresh  re-resolve uv.lock to the newest versions that
#                                         pyproject.toml allows (then run the tests, commit)
#   bash scripts/python-env.sh --print-uv print the path of the pinned uv
#
# pyproject.toml keeps ranges for library users; uv.lock pins every package, with hashes, for
# everything this repository runs. uv itself comes from PyPI at UV_VERSION, into
# ${LATTICE_CACHE:-~/.cache/lattice}/uv-<version>/; it never downloads a Python (the system's
# python3 is used) and an install from the lock never re-resolves (--locked: a lock that no
# longer matches pyproject.toml is an error, not an update).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV_VERSION=0.13.9
CACHE="${LATTICE_CACHE:-$HOME/.cache/lattice}"
UV_HOME="$CACHE/uv-$UV_VERSION"
UV="$UV_HOME/bin/uv"
PYTHON="${LATTICE_PYTHON:-python3}"
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1

die() { printf 'python-env: ERROR: %s\n' "$*" >&2; exit 1; }

ensure_uv() {
  if [ -x "$UV" ] && "$UV" --version | grep -qx "uv $UV_VERSION.*"; then return; fi
  command -v "$PYTHON" >/dev/null || die "$PYTHON is not installed (need Python >= 3.11)"
  rm -rf "$UV_HOME"
  "$PYTHON" -m venv "$UV_HOME" || die "cannot create a venv for uv with $PYTHON"
  "$UV_HOME/bin/python" -m pip install -q "uv==$UV_VERSION" || die "cannot install uv $UV_VERSION"
  "$UV" --version | grep -q "uv $UV_VERSION" || die "installed uv reports: $("$UV" --version)"
}

mode=sync
extras=()
for arg in "$@"; do
  case "$arg" in
    --dev) extras+=(--extra dev) ;;
    --check) mode=check ;;
    --refresh) mode=refresh ;;
    --print-uv) mode=print-uv ;;
    -h|--help) sed -n '2,16p' "$0"; exit 0 ;;
    *) die "unknown argument: $arg (see --help)" ;;
  esac
done

ensure_uv
cd "$ROOT"
case "$mode" in
  print-uv) echo "$UV" ;;
  check)
    "$UV" lock --check --python "$PYTHON" \
      || die "uv.lock does not match pyproject.toml; run: bash scripts/python-env.sh --refresh" ;;
  refresh) "$UV" lock --upgrade --python "$PYTHON" ;;
  sync)
    # Bytecode is compiled here, as pip does when it installs a wheel: Python would otherwise
    # compile every module it imports on every start when it may not write .pyc files
    # (PYTHONDONTWRITEBYTECODE, a read-only tree), and a start of `lattice compile` takes
    # 0.5 s instead of 0.2 s. `uv sync` compiles the dependencies; compileall the project's
    # own (editable) sources, whose .pyc Python refreshes by itself when a source changes.
    "$UV" sync --locked --compile-bytecode --python "$PYTHON" "${extras[@]}"
    "$ROOT/.venv/bin/python" -m compileall -q "$ROOT/src" >/dev/null ;;
esac
