#!/usr/bin/env bash
# CI smoke test of the experiment runner: run_comparison.py --ci (tiny, default corpus, AdamW + Muon, 3 steps a
# cell: a 3-point sync lr sweep, then async and async+EF) into a temporary folder, report.py on it, and check that
# RESULTS.md has one table row per optimizer. Needs build/onestep and the default corpus (scripts/fetch-data.sh).
# Usage: experiments/ci_smoke.sh [ONESTEP_BINARY]. Exit code 0 = pass. Runs in well under 2 minutes on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${1:-build/onestep}
tmp=$(mktemp -d "${TMPDIR:-/tmp}/onestep-ci-smoke.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
fail() { echo "ci_smoke: FAIL: $*" >&2; exit 1; }
start=$(date +%s)
python3 experiments/run_comparison.py --ci --onestep "$BIN" --runs-dir "$tmp/runs" > "$tmp/run.log" 2>&1 \
  || { cat "$tmp/run.log" >&2; fail "run_comparison.py --ci exited non-zero"; }
# a second invocation must skip every finished cell
python3 experiments/run_comparison.py --ci --onestep "$BIN" --runs-dir "$tmp/runs" > "$tmp/rerun.log" 2>&1 \
  || { cat "$tmp/rerun.log" >&2; fail "the rerun exited non-zero"; }
grep -q "starting" "$tmp/rerun.log" && { cat "$tmp/rerun.log" >&2; fail "the rerun started runs again instead of skipping them"; }
python3 experiments/report.py --runs-dir "$tmp/runs" --out "$tmp/RESULTS.md" > "$tmp/report.log" 2>&1 \
  || { cat "$tmp/report.log" >&2; fail "report.py exited non-zero"; }
for opt in AdamW Muon; do
  grep -Eq "^\| $opt \| [0-9.e-]+ \| [0-9]+\.[0-9]{4}" "$tmp/RESULTS.md" || { cat "$tmp/RESULTS.md" >&2; fail "no table row with numbers for $opt"; }
done
grep -q "share of the gap closed" "$tmp/RESULTS.md" || fail "RESULTS.md has no results table header"
n=$(find "$tmp/runs" -name metrics.jsonl | wc -l)
[ "$n" -eq 10 ] || fail "expected 10 runs (2 optimizers x (3 sweep + async + async+EF)), found $n"
echo "ci_smoke: PASS ($n runs, $(( $(date +%s) - start )) s)"
