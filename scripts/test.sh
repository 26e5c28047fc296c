#!/usr/bin/env bash
# The test command the README names: every test (unit, integration, e2e) under coverage,
# subprocesses included, then the branch-coverage gate (fail_under = 90 in pyproject.toml).
set -uo pipefail
cd "$(dirname "$0")/.."
python -m coverage erase
# Two workers, each taking whole files (a module's shared cell is never started twice): the
# integration and E2E tests wait on real control planes and on the real Cluster API controllers
# much of the time, so they overlap well. (Three workers on the two cores were not faster:
# 1,030 s against 969 s, with more load-induced races.)
# --no-loadscope-reorder: files go out in collection order, which tests/conftest.py makes the
# longest first (E2E, integration, fuzz, unit), so both workers end together; xdist's default
# (files with the most tests first) left the E2E files for last and one worker idle for minutes.
# --durations: the slowest tests and fixtures, so a slower run says where its time went.
python -m coverage run -m pytest -p no:cacheprovider -n "${LATTICE_TEST_WORKERS:-2}" --dist loadfile \
  --no-loadscope-reorder --durations=30 "$@"
rc=$?
if [ "$rc" -eq 5 ]; then
  echo "ERROR: pytest collected no tests; an empty selection is a failure" >&2
  exit 5
fi
python -m coverage combine -q || true
python -m coverage report
cov=$?
if [ "$rc" -ne 0 ]; then exit "$rc"; fi
exit "$cov"
