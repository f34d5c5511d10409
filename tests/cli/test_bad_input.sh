#!/usr/bin/env bash
# Every bad input gives one clear line naming the file and the field, exit code 2, and overwrites nothing.
source "$(dirname "$0")/lib.sh"
make_data
cd "$WORK"

cp micro.toml bad_key.toml && printf '\n[delay]\nemulat = "one_step"\n' >> bad_key.toml
expect_error 2 bad_key.toml delay.emulat "unknown key" -- "$BIN" train --config bad_key.toml --out r1
sed 's/^steps = 4/steps = "four"/' micro.toml > bad_type.toml
expect_error 2 bad_type.toml train.steps integer -- "$BIN" train --config bad_type.toml --out r1
sed 's/^n_heads = 4/n_heads = 5/' micro.toml > bad_heads.toml
expect_error 2 bad_heads.toml model.n_heads "divide d_model" -- "$BIN" train --config bad_heads.toml --out r1
sed 's/^n_kv_heads = 2/n_kv_heads = 3/' micro.toml > bad_kv.toml
expect_error 2 bad_kv.toml model.n_kv_heads "divide n_heads" -- "$BIN" train --config bad_kv.toml --out r1
expect_error 2 --set optim.lr -- "$BIN" train --config micro.toml --set optim.lr=fast --out r1
expect_error 2 data.train "no file matches" -- "$BIN" train --config micro.toml --set "data.train=$WORK/nothing_*.bin" --out r1

# Shards: truncated, wrong magic, token outside the vocabulary.
head -c 2000 tr_train.bin > trunc.bin
expect_error 2 trunc.bin truncated -- "$BIN" train --config micro.toml --set "data.train=$WORK/trunc.bin" --out r1
cp tr_train.bin magic.bin && printf '\x01\x02\x03\x04' | dd of=magic.bin conv=notrunc status=none
expect_error 2 magic.bin magic -- "$BIN" train --config micro.toml --set "data.train=$WORK/magic.bin" --out r1
expect_error 2 tr_train.bin vocabulary -- "$BIN" train --config micro.toml --set model.vocab_size=100 --set data.tokenizer= --out r1
expect_error 2 tok.tok vocab_size model.vocab_size -- "$BIN" train --config micro.toml --set model.vocab_size=300 --set "data.train=$WORK/va_train.bin" --out r1
# A GPU where there is none (or a build without CUDA): named, before anything is written.
PIPE2=(--set pipeline.schedule=2bw --set pipeline.stages=2)
if ! nvidia-smi -L > /dev/null 2>&1; then
  expect_error 2 train.device cuda -- "$BIN" train --config micro.toml --set train.device=cuda --out r1
  # The NCCL transport started without mpirun (a build with it; tests/cli/test_mpi.sh runs it under mpirun on a
  # machine without GPUs), or in a build without it.
  case "$("$BIN" --version)" in
    *nccl*) expect_error 2 pipeline.stages "mpirun -np 2" -- "$BIN" train --config micro.toml "${PIPE2[@]}" \
              --set pipeline.transport=nccl --set train.device=cuda --out r1 ;;
    *) expect_error 2 pipeline.transport "built without the NCCL transport" -- "$BIN" train --config micro.toml \
         "${PIPE2[@]}" --set pipeline.transport=nccl --set train.device=cuda --out r1 ;;
  esac
fi
expect_error 2 micro.toml pipeline.transport nccl 'train.device = "cuda"' -- "$BIN" train --config micro.toml \
  "${PIPE2[@]}" --set pipeline.transport=nccl --out r1
expect_error 2 micro.toml pipeline.transport "'mpi' moves host memory" "'nccl'" -- "$BIN" train --config micro.toml \
  "${PIPE2[@]}" --set pipeline.transport=mpi --set train.device=cuda --out r1
expect_error 2 micro.toml pipeline.transport "inproc, mpi or nccl" -- "$BIN" train --config micro.toml \
  "${PIPE2[@]}" --set pipeline.transport=pigeon --out r1
[ ! -e r1 ] && ok "no run folder left behind by failed starts" || fail "a failed start created r1"

# A folder holding another run is not overwritten.
"$BIN" train --config micro.toml --out run > /dev/null 2>&1 || fail "training the micro model"
sum_before="$(cat run/metrics.jsonl run/config.toml | md5sum)"
expect_error 2 "run: " "holds another run" --resume -- "$BIN" train --config micro.toml --out run
[ "$(cat run/metrics.jsonl run/config.toml | md5sum)" = "$sum_before" ] && ok "run folder untouched" || fail "run folder changed"
expect_error 2 "run/config.toml" "[model]" -- "$BIN" train --config micro.toml --set model.d_model=64 --out run --resume

# A checkpoint of another shape.
cp -r run/checkpoints/step_00000004 other_shape
sed -i 's/^ffn_hidden = 64/ffn_hidden = 40/' other_shape/config.toml
expect_error 2 state.safetensors gate_proj shape -- "$BIN" eval --checkpoint other_shape
expect_error 2 "not a checkpoint" -- "$BIN" eval --checkpoint "$WORK"
expect_error 2 "--out" safetensors -- "$BIN" export --checkpoint run --out model.bin
expect_error 2 "--set" "section.key=value" -- "$BIN" train --config micro.toml --set nonsense --out r2
expect_error 2 "missing.tok" -- "$BIN" tokenize --tokenizer "$WORK/missing.tok" --input a.txt --out x
# Pipelines: 2BW with m < p, more stages than layers, a schedule that does not exist.
expect_error 2 train.micro_batches "m = 2" "p = 3" -- "$BIN" train --config micro.toml --set model.n_layers=3 --set pipeline.schedule=2bw --set pipeline.stages=3 --out r3
expect_error 2 pipeline.stages n_layers -- "$BIN" train --config micro.toml --set pipeline.schedule=1f1b --set pipeline.stages=3 --out r3
expect_error 2 pipeline.schedule zigzag -- "$BIN" train --config micro.toml --set pipeline.schedule=zigzag --out r3
expect_error 2 "unknown schedule 'zigzag'" -- "$BIN" schedule --schedule zigzag --stages 2 --microbatches 4
# Counts on the command line: no timed step (it used to crash on the median of none).
expect_error 2 --steps "at least 1" -- "$BIN" bench --config micro.toml --steps 0
expect_error 2 --steps "at least 1" -- "$BIN" schedule --schedule 2bw --stages 2 --microbatches 4 --steps 0
expect_error 2 delay.correction "has none" -- "$BIN" train --config micro.toml --set delay.correction=ef --out r3
expect_error 2 delay.ef_coef -- "$BIN" train --config micro.toml --set delay.ef_coef=inf --out r3
expect_error 2 optim.name "adamw" -- "$BIN" train --config micro.toml --set optim.name=adamax --out r3
[ ! -e r3 ] && ok "no run folder left behind" || fail "r3 created"
finish
