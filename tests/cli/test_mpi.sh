#!/usr/bin/env bash
# The MPI transport (one rank per stage) gives exactly the in-process pipeline's weights, and refuses a world
# size different from pipeline.stages. Exports of the final checkpoints are compared byte for byte.
source "$(dirname "$0")/lib.sh"
if ! command -v mpirun > /dev/null; then echo "SKIP: mpirun not installed"; exit 0; fi
make_data
cd "$WORK"
MPIRUN=(timeout 300 mpirun --allow-run-as-root --oversubscribe)
sed -i 's/^threads = 2/threads = 1/' micro.toml
common=(--set model.n_layers=3 --set train.steps=5 --set train.eval_every=0 --set train.ckpt_every=0 --set optim.clip=0.5)

for sched in 2bw 1f1b; do
  for p in 2 3; do
    [ "$sched" = 2bw ] && [ "$p" = 3 ] && extra=(--set train.micro_batches=3) || extra=()
    "$BIN" train --config micro.toml "${common[@]}" "${extra[@]}" --set pipeline.schedule=$sched --set pipeline.stages=$p \
      --set train.threads=$p --out "in_${sched}_$p" > /dev/null 2>&1 || fail "inproc $sched p=$p"
    "${MPIRUN[@]}" -np $p "$BIN" train --config micro.toml "${common[@]}" "${extra[@]}" --set pipeline.schedule=$sched \
      --set pipeline.stages=$p --set pipeline.transport=mpi --out "mpi_${sched}_$p" > "mpi_${sched}_$p.log" 2>&1 \
      || { cat "mpi_${sched}_$p.log"; fail "mpi $sched p=$p"; }
    ls "mpi_${sched}_$p/checkpoints/step_00000005/" | grep -q "state.stage$((p - 1)).safetensors" \
      && ok "mpi $sched p=$p: one checkpoint file per rank" || fail "mpi $sched p=$p: checkpoint files"
    "$BIN" export --checkpoint "in_${sched}_$p" --out "in_${sched}_$p.safetensors" > /dev/null || fail "export"
    "$BIN" export --checkpoint "mpi_${sched}_$p" --out "mpi_${sched}_$p.safetensors" > /dev/null || fail "export"
    cmp -s "in_${sched}_$p.safetensors" "mpi_${sched}_$p.safetensors" \
      && ok "$sched p=$p: MPI weights == in-process weights, bit for bit" || fail "$sched p=$p: MPI and in-process weights differ"
    [ -s "mpi_${sched}_$p/metrics.jsonl" ] && diff <(grep -o '"train_loss":[^,]*' "in_${sched}_$p/metrics.jsonl") <(grep -o '"train_loss":[^,]*' "mpi_${sched}_$p/metrics.jsonl") > /dev/null \
      && ok "$sched p=$p: same losses" || fail "$sched p=$p: losses differ"
    [ "$p" = 3 ] || continue
    # The nccl transport's protocol (MPI headers, payloads matched in order per direction) on a host data plane.
    ONESTEP_MPI_PAYLOADS=staged "${MPIRUN[@]}" -np $p "$BIN" train --config micro.toml "${common[@]}" "${extra[@]}" \
      --set pipeline.schedule=$sched --set pipeline.stages=$p --set pipeline.transport=mpi --out "staged_${sched}" \
      > "staged_${sched}.log" 2>&1 || { cat "staged_${sched}.log"; fail "staged $sched p=$p"; }
    "$BIN" export --checkpoint "staged_${sched}" --out "staged_${sched}.safetensors" > /dev/null || fail "export"
    cmp -s "in_${sched}_$p.safetensors" "staged_${sched}.safetensors" \
      && ok "$sched p=$p: staged protocol weights == in-process weights, bit for bit" || fail "$sched p=$p: staged protocol weights differ"
  done
done

# Resuming an MPI run from its per-rank checkpoint files continues exactly.
"${MPIRUN[@]}" -np 2 "$BIN" train --config micro.toml "${common[@]}" --set train.ckpt_every=2 --set train.steps=4 \
  --set pipeline.schedule=2bw --set pipeline.stages=2 --set pipeline.transport=mpi --out mpi_resume > /dev/null 2>&1 || fail "mpi run to 4"
"${MPIRUN[@]}" -np 2 "$BIN" train --config micro.toml "${common[@]}" --set train.ckpt_every=2 \
  --set pipeline.schedule=2bw --set pipeline.stages=2 --set pipeline.transport=mpi --out mpi_resume --resume > /dev/null 2>&1 || fail "mpi resume"
[ "$(grep -c "\"train_loss\":[0-9]" mpi_resume/metrics.jsonl)" = 5 ] && ok "resumed MPI run logged 5 steps" || fail "resumed metrics"

# Measured balance: every rank must cut the model where rank 0's timings say (a disagreement would give
# messages of the wrong length and a failed run); the printed split names a cut.
"${MPIRUN[@]}" -np 3 "$BIN" train --config micro.toml "${common[@]}" --set train.micro_batches=3 --set pipeline.schedule=2bw \
  --set pipeline.stages=3 --set pipeline.transport=mpi --set pipeline.balance=measured --set pipeline.trace=true \
  --out mpi_measured > mpi_measured.log 2>&1 \
  && grep -q "stage 2: .*head, loss" mpi_measured.log && ok "measured balance under MPI: ranks agree on the split" \
  || { cat mpi_measured.log; fail "measured balance under MPI"; }
# Its trace gathers every rank's actions on one timeline: each stage's forward of a micro-batch starts after the
# previous stage's forward of it ended (clocks aligned across processes).
python3 - mpi_measured/trace.json <<'PY' && ok "MPI trace: 3 ranks on one causal timeline" || fail "MPI trace.json"
import json, sys
ev = [e for e in json.load(open(sys.argv[1]))["traceEvents"] if e.get("ph") == "X"]
assert {e["tid"] for e in ev} == {0, 1, 2}, "a stage is missing"
fwd = {(e["tid"], e["args"]["batch"], e["args"]["micro"]): e for e in ev if e["cat"] == "forward"}
pairs = [(fwd[(s - 1, b, m)], e) for (s, b, m), e in fwd.items() if s > 0]
assert pairs and all(prev["ts"] + prev["dur"] <= e["ts"] + 1 for prev, e in pairs), "a forward precedes its input"
PY

# The nccl transport on a machine without GPUs (in a build that has it): every rank counts the GPUs of its machine.
if "$BIN" --version | grep -q nccl && ! nvidia-smi -L > /dev/null 2>&1; then
  err="$("${MPIRUN[@]}" -np 2 "$BIN" train --config micro.toml --set pipeline.schedule=2bw --set pipeline.stages=2 \
    --set pipeline.transport=nccl --set train.device=cuda --out nccl_bad 2>&1)"; rc=$?
  [ "$rc" != 0 ] && [ ! -e nccl_bad ] && case "$err" in *"needs a GPU per stage, but 2 ranks run on"*"0 visible GPU"*) true ;; *) false ;; esac \
    && ok "nccl with fewer GPUs than ranks refused (exit $rc)" || fail "nccl without GPUs: rc $rc: $err"
fi

err="$("${MPIRUN[@]}" -np 3 "$BIN" train --config micro.toml --set pipeline.schedule=2bw --set pipeline.stages=2 \
  --set pipeline.transport=mpi --out bad 2>&1)"; rc=$?
[ "$rc" != 0 ] && case "$err" in *"pipeline.stages"*"mpirun -np 2"*) true ;; *) false ;; esac \
  && ok "world size 3 for 2 stages refused (exit $rc)" || fail "world-size mismatch: rc $rc: $err"
finish
