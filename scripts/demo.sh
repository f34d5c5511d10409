#!/usr/bin/env bash
# The README demo: installs what is missing, builds (Release), fetches the default corpus, trains
# configs/tiny.toml (2-stage in-process PipeDream-2BW pipeline, Muon + EF correction) into runs/demo/,
# prints a short generated sample and where the files are. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "[onestep] $*"; }

./scripts/install-deps.sh
ONESTEP_BUILD_TARGET=onestep ./scripts/build.sh
./scripts/fetch-data.sh

out=runs/demo
if [ -e "$out" ]; then
  if [ -f "$out/config.toml" ] && [ -f "$out/metrics.jsonl" ]; then
    say "demo: removing the previous demo run in $out"
    rm -rf "$out"
  else
    out=runs/demo-$(date +%s)
    say "demo: runs/demo exists but is not a previous demo run; leaving it alone and using $out"
  fi
fi
mkdir -p runs

say "demo: training configs/tiny.toml -> $out"
build/onestep train --config configs/tiny.toml --out "$out"

say "demo: sampling from $out/checkpoints/latest"
build/onestep sample --checkpoint "$out/checkpoints/latest" --prompt "Call me" --tokens 100

say "demo: finished; files:"
say "  config:     $out/config.toml"
say "  metrics:    $out/metrics.jsonl"
shopt -s nullglob
plots=("$out"/plots/*.png)
if [ ${#plots[@]} -gt 0 ]; then
  for p in "${plots[@]}"; do say "  plot:       $p"; done
else
  say "  plot:       (none written in $out/plots/)"
fi
latest=$(head -n1 "$out/checkpoints/latest" 2>/dev/null || true)
if [ -n "$latest" ]; then
  case "$latest" in /*|"$out"/*) ;; *) latest="$out/checkpoints/$(basename "$latest")" ;; esac
  say "  checkpoint: $latest (named by $out/checkpoints/latest)"
else
  say "  checkpoint: $out/checkpoints/latest"
fi
