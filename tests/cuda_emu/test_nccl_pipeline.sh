#!/usr/bin/env bash
# The nccl transport end to end on emulated GPUs (ctest cuda.nccl_pipeline): one process per stage under mpirun,
# activations and gradients through the emulated NCCL (tests/cuda_emu/nccl.cpp), gives exactly the weights and
# losses of the same pipeline in one process (2BW, 1F1B, PipeDream; 2 and 3 ranks; fp32 and bf16; synchronous and
# asynchronous streams); a resumed run continues exactly; fewer GPUs than ranks is refused.
# Usage: test_nccl_pipeline.sh ONESTEP_BINARY SOURCE_DIR MPIEXEC
source "$(dirname "$0")/../cli/lib.sh"
MPIEXEC="$3"
make_data
cd "$WORK"
MPIRUN=(timeout 300 "$MPIEXEC" --allow-run-as-root --oversubscribe)
export OMP_NUM_THREADS=1 CUDA_EMU_DEVICES=3  # each process sees 3 emulated GPUs and takes the one of its local rank
sed -i 's/^threads = 2/threads = 1/' micro.toml  # one OpenBLAS thread everywhere: the same sums in every run
common=(--set model.n_layers=3 --set train.steps=4 --set train.eval_every=0 --set train.ckpt_every=0
        --set optim.clip=0.5 --set train.device=cuda)
losses() { grep -o '"train_loss":[^,}]*' "$1/metrics.jsonl"; }
same_run() {  # same_run A B WHAT: the final weights bit for bit, and the logged losses
  "$BIN" export --checkpoint "$1" --out "$1.safetensors" > /dev/null && "$BIN" export --checkpoint "$2" --out "$2.safetensors" > /dev/null \
    || { fail "$3: export"; return; }
  cmp -s "$1.safetensors" "$2.safetensors" && ok "$3: weights equal bit for bit" || fail "$3: weights differ"
  [ -n "$(losses "$2")" ] && diff <(losses "$1") <(losses "$2") > /dev/null && ok "$3: same losses" || fail "$3: losses differ"
}

# schedule, stages, precision: 3 stages put the tied embedding's two ends on ranks that are not neighbours;
# PipeDream's stashed versions differ per stage; bf16 stores the operands in bf16 (what crosses a cut stays fp32).
for run in "2bw 2 fp32" "1f1b 2 fp32" "2bw 3 fp32" "pipedream 3 fp32" "2bw 2 bf16"; do
  set -- $run
  sched=$1 p=$2 prec=$3
  name="${sched}_${p}_$prec"
  args=(--set pipeline.schedule=$sched --set pipeline.stages=$p --set train.micro_batches=$p --set train.precision=$prec)
  "$BIN" train --config micro.toml "${common[@]}" "${args[@]}" --out "in_$name" > "in_$name.log" 2>&1 \
    || { tail -n 3 "in_$name.log"; fail "in-process $name"; continue; }
  "${MPIRUN[@]}" -np $p "$BIN" train --config micro.toml "${common[@]}" "${args[@]}" --set pipeline.transport=nccl \
    --out "nccl_$name" > "nccl_$name.log" 2>&1 || { tail -n 20 "nccl_$name.log"; fail "nccl $name"; continue; }
  grep -q "NCCL (one rank per GPU)" "nccl_$name.log" && ok "nccl $name: ran over NCCL" || fail "nccl $name: transport not named"
  same_run "in_$name" "nccl_$name" "nccl $sched p=$p $prec vs in-process"
done

# The streams as worker threads: the transport's events alone must order its copies and NCCL's operations.
CUDA_EMU_STREAMS=async "${MPIRUN[@]}" -np 2 "$BIN" train --config micro.toml "${common[@]}" --set pipeline.schedule=2bw \
  --set pipeline.stages=2 --set train.micro_batches=2 --set pipeline.transport=nccl --out nccl_async > nccl_async.log 2>&1 \
  || { tail -n 20 nccl_async.log; fail "nccl with async streams"; }
same_run in_2bw_2_fp32 nccl_async "nccl 2bw p=2, async streams, vs in-process"

# Resuming from the per-rank checkpoints continues exactly: 2 + 2 steps give the weights of 4 steps in one go.
nccl2=(--set pipeline.schedule=2bw --set pipeline.stages=2 --set train.micro_batches=2 --set pipeline.transport=nccl --set train.ckpt_every=2)
"${MPIRUN[@]}" -np 2 "$BIN" train --config micro.toml "${common[@]}" "${nccl2[@]}" --set train.steps=2 --out resumed > resumed.log 2>&1 \
  && "${MPIRUN[@]}" -np 2 "$BIN" train --config micro.toml "${common[@]}" "${nccl2[@]}" --out resumed --resume >> resumed.log 2>&1 \
  || { tail -n 20 resumed.log; fail "nccl resume"; }
[ -e resumed/checkpoints/step_00000002/state.stage1.safetensors ] && ok "nccl: one checkpoint file per rank" || fail "nccl: checkpoint files"
"$BIN" export --checkpoint resumed --out resumed.safetensors > /dev/null && cmp -s resumed.safetensors in_2bw_2_fp32.safetensors \
  && ok "nccl: resumed 2 + 2 steps == 4 steps, bit for bit" || fail "nccl: the resumed run's weights differ"

# Fewer GPUs than ranks on the machine: a clear error from the ranks, exit 2, no run folder.
err="$(CUDA_EMU_DEVICES=1 "${MPIRUN[@]}" -np 2 "$BIN" train --config micro.toml "${common[@]}" --set pipeline.schedule=2bw \
  --set pipeline.stages=2 --set pipeline.transport=nccl --out nccl_bad 2>&1)"; rc=$?
[ "$rc" = 2 ] && [ ! -e nccl_bad ] && case "$err" in *"needs a GPU per stage, but 2 ranks run on"*"1 visible GPU"*) true ;; *) false ;; esac \
  && ok "nccl with 1 GPU for 2 ranks refused (exit $rc)" || fail "nccl with too few GPUs: rc $rc: $err"
finish
