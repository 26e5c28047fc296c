#!/usr/bin/env bash
# The README's main job, from a fresh machine: install Lattice into .venv and compile every
# example cluster into Cluster API manifests (printed to stdout; a review copy goes to out/).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then python3 -m venv .venv; fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/lattice compile -o out examples/clusters/*.yaml
.venv/bin/lattice compile examples/clusters/*.yaml
