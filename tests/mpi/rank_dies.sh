#!/usr/bin/env bash
# Usage: rank_dies.sh MPIEXEC PROBE MODE. Rank 1 of 2 dies; mpirun must return non-zero well before the
# receive timeout (set to 120 s here, so only the job abort can end the run in time).
set -u
mpiexec=$1 probe=$2 mode=$3
start=$(date +%s%N)
ONESTEP_PEER_TIMEOUT_S=120 timeout 90 "$mpiexec" --allow-run-as-root --oversubscribe -np 2 "$probe" "$mode"
rc=$?
elapsed_ms=$(( ($(date +%s%N) - start) / 1000000 ))
echo "mpirun exit status $rc after $elapsed_ms ms"
if [ "$rc" -eq 0 ]; then echo "FAIL: exit status 0"; exit 1; fi
if [ "$rc" -eq 124 ]; then echo "FAIL: still running after 90 s"; exit 1; fi
if [ "$elapsed_ms" -ge 60000 ]; then echo "FAIL: took $elapsed_ms ms (limit 60 s)"; exit 1; fi
echo PASS
