#!/usr/bin/env bash
# The README's main job, from a fresh machine: install Lattice into .venv from uv.lock, build (or reuse) the
# Kubernetes binaries and the cluster add-ons from the official Go modules, then run `lattice demo`: a self-managing
# local management cell that provisions two workload clusters through the runtime flow.
# `lattice down --state-dir .lattice` removes everything it started.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/python-env.sh
bash scripts/build-k8s.sh
LATTICE_BIN_DIR="$(bash scripts/build-k8s.sh --print-bin-dir)"
export LATTICE_BIN_DIR PATH="$LATTICE_BIN_DIR:$PATH"
bash scripts/build-addons.sh   # helm, Cilium's chart and CRDs, Flux: what every new cluster receives
LATTICE_ADDONS_DIR="$(bash scripts/build-addons.sh --print-dir)"
export LATTICE_ADDONS_DIR
.venv/bin/lattice compile -o out examples/clusters/*.yaml
.venv/bin/lattice demo --state-dir .lattice
