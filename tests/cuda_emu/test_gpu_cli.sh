#!/usr/bin/env bash
# The bad inputs of issue #5 that need a GPU, end to end through the binary, on the emulated GPU
# (ctest cuda.cli_bad_input): out of GPU memory at start-up, and resuming a checkpoint in another precision.
# Each gives one line naming what is wrong, exit 2, and writes nothing.
source "$(dirname "$0")/../cli/lib.sh"
make_data
cd "$WORK"

# Out of GPU memory at start-up (weights of 1.5M parameters on a 4 MiB GPU): how much was needed, how much is free.
CUDA_EMU_MEMORY_MIB=4 expect_error 2 "out of GPU memory" "MiB more were needed" "of 4.0 MiB are free" -- "$BIN" train \
  --config micro.toml --set model.d_model=256 --set model.ffn_hidden=512 --set train.device=cuda --out r1
[ ! -e r1 ] && ok "no run folder left behind by the failed start" || fail "the failed start created r1"

# A checkpoint trained in fp32 resumed in bf16.
"$BIN" train --config micro.toml --set train.device=cuda --out run > train.log 2>&1 || fail "training on the emulated GPU: $(tail -n 2 train.log)"
grep -q "step 4" train.log && ok "trained 4 steps on the emulated GPU" || fail "no step 4 in: $(tail -n 3 train.log)"
sum_before="$(cat run/metrics.jsonl | md5sum)"
expect_error 2 "train.precision" "fp32" "bf16" -- "$BIN" train --config micro.toml --set train.device=cuda \
  --set train.precision=bf16 --set train.steps=6 --out run --resume
[ "$(cat run/metrics.jsonl | md5sum)" = "$sum_before" ] && ok "run folder untouched" || fail "run folder changed"

finish
