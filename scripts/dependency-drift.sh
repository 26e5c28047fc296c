#!/usr/bin/env bash
# Non-blocking look at dependency drift: what the world would install today, and whether the
# unit suite still passes on it. Not part of .ci/run (whose installs come from uv.lock); run it
# by hand before refreshing the lock, and paste its output into the note of any issue that
# touches dependencies.
#
#   bash scripts/dependency-drift.sh          resolve the newest versions pyproject.toml allows
#                                             into a scratch venv, print every package whose
#                                             version differs from uv.lock, run tests/unit there
#   bash scripts/dependency-drift.sh --keep   keep the scratch directory (its path is printed)
#
# Exit status: 0 when the unit suite passes on the newest versions, 1 when it does not (the
# drift that a later `bash scripts/python-env.sh --refresh` would bring in).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
UV="$(bash "$ROOT/scripts/python-env.sh" --print-uv)"
export UV_PYTHON_DOWNLOADS=never UV_NO_PROGRESS=1 LC_ALL=C
keep=0
[ "${1:-}" = --keep ] && keep=1
scratch="$(mktemp -d "${TMPDIR:-/tmp}/lattice-drift.XXXXXX")"
[ "$keep" = 1 ] || trap 'rm -rf "$scratch"' EXIT

cd "$ROOT"
"$UV" export --locked --no-hashes --no-emit-project --extra dev --format requirements-txt \
  --python python3 2>/dev/null | grep -E '^[A-Za-z0-9]' | sed 's/ ;.*//' >"$scratch/locked.txt"
"$UV" pip compile -q --upgrade --extra dev --python python3 --no-header --no-annotate \
  pyproject.toml -o "$scratch/newest.txt"
pairs() { sed 's/ ;.*//; s/==/=/' "$1" | grep -E '^[A-Za-z0-9]' | LC_ALL=C sort -t= -k1,1; }

echo "== versions that differ from uv.lock (locked -> newest allowed)"
join -t= -a1 -a2 -e '(none)' -o 0,1.3,2.3 \
  <(pairs "$scratch/locked.txt") <(pairs "$scratch/newest.txt") \
  | awk -F= '$2 != $3 { printf "  %-28s %s -> %s\n", $1, $2, $3; n++ } END { if (!n) print "  none" }'

"$UV" venv -q --python python3 "$scratch/venv"
"$UV" pip install -q --python "$scratch/venv/bin/python" -r "$scratch/newest.txt"
"$UV" pip install -q --python "$scratch/venv/bin/python" --no-deps -e .
echo "== unit suite on the newest versions"
rc=0
(cd "$ROOT" && "$scratch/venv/bin/python" -m pytest -q -p no:cacheprovider -n 2 tests/unit) || rc=$?
[ "$keep" = 1 ] && echo "scratch environment kept at $scratch"
if [ "$rc" -eq 0 ]; then echo "drift: the unit suite passes on the newest versions"; else
  echo "drift: the unit suite FAILS on the newest versions (exit $rc); the lock keeps CI on the tested ones"
fi
exit "$rc"
