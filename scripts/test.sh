#!/usr/bin/env bash
# The test command the README names: every test, with branch coverage gated at 90%.
set -euo pipefail
cd "$(dirname "$0")/.."
rm -f .coverage .coverage.*
python -m pytest -p no:cacheprovider --cov=lattice --cov-branch --cov-report=term-missing:skip-covered \
  --cov-fail-under=90 "$@"
