#!/usr/bin/env bash
# Everything of issue #5 that needs a GPU, in one go (meant for one call on a lent H100, well under 8 minutes):
#   1. the binaries: carried from scripts/gpu-pack.sh (.gpu-carry/), else built here (needs all dependencies);
#   2. the headline number first: smollm2-360m, bf16, at sequence length 2048 (the 40% MFU target);
#   3. the CUDA tests (every kernel, the optimizers, the model and the trainer against the CPU), then NCCL's;
#   4. a 2-stage 2BW pipeline on the one GPU against its single-device emulator: losses and throughput;
#   5. training throughput of smollm2-135m and smollm2-360m in fp32, TF32 and bf16 matmuls, and the candidate
#      defaults on smollm2-360m: tokens/s, MFU against the GPU's dense bf16 peak, GPU memory;
# The summary grows step by step in gpu_summary.md, and the logs are packed into gpu_logs.tar.gz after each step,
# both in $OUT (the device tool's output folder, which returns at most 8 files) or ./gpu-check-out; the rest (logs,
# synthetic data, runs) stays in a scratch folder. A step that would start after GPU_CHECK_BUDGET_S seconds
# (default 400) is skipped and says so, so that a call's limit never cuts the summary off.
# Never downloads anything and changes no GPU setting.
# GPU_CHECK_REHEARSAL=<build dir> runs every step of it with that build of the CPU emulation of CUDA
# (-DONESTEP_CUDA_EMULATION=ON, tests/cuda_emu) and tiny models: the script's own test where there is no GPU
# (ctest case gpu_check.rehearsal).
set -u -o pipefail
cd "$(dirname "$0")/.."
OUTDIR="${OUT:-gpu-check-out}"
BUDGET_S="${GPU_CHECK_BUDGET_S:-400}"
presets=(smollm2-135m smollm2-360m)   # the second is the target preset, where the variants are compared
shape=(--set train.micro_batch_size=4)  # at the presets' sequence length, 2048
shape_name="4 x 2048"
big_mb=16  # the +mb16 variants: a 4x larger micro-batch (larger products; bf16 logits make it fit)
big_name="16 x 2048"
bench_steps=5  # timed steps per bench row (after 2 warm-ups)
pipe_shape=(--set train.micro_batch_size=4 --set train.micro_batches=4)
pipe_presets=(smollm2-360m smollm2-135m)
pipe_desc="4 x 4 x 2048 tokens per step"
pipe_vocab=49152
test_filter='-CudaNccl.*:CudaHost.Nccl*'
test_timeout=60
if [ -n "${GPU_CHECK_REHEARSAL:-}" ]; then
  presets=(tiny small)
  shape=(--set train.micro_batch_size=1 --set model.seq_len=32 --set model.n_layers=1)
  shape_name="1 x 32, 1 layer"
  big_mb=4
  big_name="4 x 32, 1 layer"
  bench_steps=1  # the emulation's optimizer step alone takes seconds on the small preset
  pipe_shape=(--set train.micro_batch_size=1 --set train.micro_batches=4 --set model.seq_len=32 --set train.eval_tokens=128)
  pipe_presets=(tiny)
  pipe_desc="4 x 1 x 32 tokens per step"
  pipe_vocab=4096
  test_filter='CudaKernels.Matmul*'
  OUTDIR="${OUT:-$GPU_CHECK_REHEARSAL/gpu-check-rehearsal}"
  BUDGET_S="${GPU_CHECK_BUDGET_S:-800}"
fi
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/onestep-gpu-check.XXXXXX")"
SUMMARY="$OUTDIR/gpu_summary.md"
: > "$SUMMARY"
say() { echo "$*" | tee -a "$SUMMARY"; }
problems=0  # steps that failed; the exit status is 1 when there is any
problem() { problems=$((problems + 1)); say "$@"; }
counted() { [ "$1" -eq 0 ] || problems=$((problems + 1)); }  # counted $?: a step that exited non-zero failed
# The logs so far, into the one archive that returns (the synthetic shards and checkpoints stay behind).
pack_logs() {
  (cd "$WORK" && tar czf "$OUTDIR/gpu_logs.tar.gz" --exclude='*.bin' --exclude='*.safetensors' . 2>/dev/null) || true
}
section() { pack_logs; say ""; say "## $* (at ${SECONDS} s)"; }  # the start times tell the next run what each part costs
# in_time <seconds it may take> <what>: whether a step that long still ends inside the budget; else it is skipped,
# said.
in_time() {
  if [ $((SECONDS + $1)) -le "$BUDGET_S" ]; then return 0; fi
  say "- skipped at ${SECONDS} s: $2 would pass the ${BUDGET_S} s budget"
  return 1
}
say "# onestep GPU check, $(date -u +%Y-%m-%dT%H:%MZ)"
say ""
say "- GPU: $(nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm,power.draw,temperature.gpu --format=csv,noheader 2>/dev/null || echo 'nvidia-smi failed')"

# 1. Binaries. CUDA's libraries come from the machine's toolkit (or PyTorch's wheels when only those exist).
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib; do
  [ -d "$d" ] && export LD_LIBRARY_PATH="$d:${LD_LIBRARY_PATH:-}"
done
wheel_libs="$(python3 - <<'PY' 2>/dev/null || true
import importlib, os
dirs = []
for name in ("nvidia.cublas", "nvidia.cuda_runtime", "nvidia.nccl"):  # nccl: dlopen'ed by the nccl transport
    try:
        dirs.append(os.path.join(list(importlib.import_module(name).__path__)[0], "lib"))
    except Exception:
        pass
print(":".join(dirs))
PY
)"
[ -n "$wheel_libs" ] && export LD_LIBRARY_PATH="${LD_LIBRARY_PATH:-}:$wheel_libs"
if [ -n "${GPU_CHECK_REHEARSAL:-}" ]; then
  BIN="$GPU_CHECK_REHEARSAL"
  say "- binaries: $BIN (REHEARSAL on the CPU emulation of CUDA: no number below is a GPU's)"
elif [ -f .gpu-carry/onestep-gpu.tar.xz ]; then
  CARRY="$(mktemp -d "${TMPDIR:-/tmp}/onestep-gpu-carry.XXXXXX")"  # beside $WORK: the log archive leaves it out
  tar -xJf .gpu-carry/onestep-gpu.tar.xz -C "$CARRY"
  BIN="$CARRY/bin"
  export LD_LIBRARY_PATH="$CARRY/lib:$LD_LIBRARY_PATH"
  say "- binaries: carried (scripts/gpu-pack.sh, built from commit $(cat "$CARRY/commit" 2>/dev/null || echo '?'))"
else
  say "- binaries: building here"
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DONESTEP_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DONESTEP_BUILD_BENCH=OFF > "$WORK/build.log" 2>&1 &&
    cmake --build build-gpu -j"$(nproc)" --target onestep test_cuda >> "$WORK/build.log" 2>&1 ||
    { problem "- BUILD FAILED (see build.log)"; pack_logs; exit 1; }
  BIN=build-gpu
  say "- built from commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' with local changes')"
fi
"$BIN/onestep" --help > /dev/null 2>&1 || {
  problem "- $BIN/onestep does not start: $("$BIN/onestep" --help 2>&1 | tail -n 2 | tr '\n' ' ') $(ldd "$BIN/onestep" | grep 'not found' | tr '\n' ' ')"
  say "- LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; pack_logs; exit 1; }
say "- build: $("$BIN/onestep" --version)"
say "- GPUs visible: $(nvidia-smi -L 2>/dev/null | wc -l) (nccl pipelines need one per stage and mpirun: this script runs none)"

# One row of the throughput table: bench_row <preset> <variant>. A variant is a precision (fp32, tf32, bf16) and
# tags, each changing one thing from the defaults (bf16 operand storage, each weight rounded once per step, the
# flash attention kernels, AdamW, micro-batch 4):
#   +tiles    the tile attention kernels (ONESTEP_ATTENTION=tiles) instead of the flash ones;
#   +mb16     a 4x larger micro-batch (larger products; bf16 logits make it fit);
#   +fp32ops  the operands kept in fp32 and rounded by each matmul (ONESTEP_BF16_OPERANDS=fp32);
#   +percall  each product rounding its weight itself (ONESTEP_BF16_WEIGHTS=per_call);
#   +muon     the paper's optimizer, Muon, its Newton-Schulz products in the matmul precision;
#   +ns32     with +muon, those products in fp32 (ONESTEP_NS_PRECISION=fp32; CUDA cores).
bench_row() {
  local preset=$1 variant=$2 precision="${2%%+*}" log="$WORK/bench_$1_$2.log" mb_name="$shape_name"
  has() { [[ "+$variant+" == *"+$1+"* ]]; }
  in_time 40 "bench $preset $variant" || return 0
  local extra=()
  if has mb16; then extra=(--set train.micro_batch_size=$big_mb); mb_name="$big_name"; fi
  echo "  bench $preset $variant (at ${SECONDS} s)"
  ONESTEP_BF16_OPERANDS="$(has fp32ops && echo fp32 || echo bf16)" \
  ONESTEP_BF16_WEIGHTS="$(has percall && echo per_call || echo once)" \
  ONESTEP_NS_PRECISION="$(has ns32 && echo fp32 || echo matmul)" \
  ONESTEP_ATTENTION="$(has tiles && echo tiles || echo flash)" timeout 120 "$BIN/onestep" bench --steps $bench_steps \
    --set optim.name="$(has muon && echo muon || echo adamw)" \
    --set model.preset="$preset" --set train.device=cuda --set train.precision="$precision" \
    "${shape[@]}" "${extra[@]}" --set train.micro_batches=1 > "$log" 2>&1
  local json
  json="$(grep '^{' "$log" | tail -n 1)"
  if [ -z "$json" ]; then problem "| $preset | $variant | failed: $(tail -n 3 "$log" | tr '\n' ' ') | | | | | | |"; return 0; fi
  python3 - "$preset" "$json" "$variant" "$mb_name" <<'PY' | tee -a "$SUMMARY"
import json, sys
j = json.loads(sys.argv[2])
mfu = f"{100 * j['mfu_bf16']:.1f}% of {j['bf16_peak_tflops']:.0f}" if "mfu_bf16" in j else "n/a (unknown GPU)"
print(f"| {sys.argv[1]} | {sys.argv[3]} | {sys.argv[4]} | {j['tokens_per_s']:.0f} | {j['achieved_gflops'] / 1e3:.1f} | "
      f"{j['sgemm_peak_gflops'] / 1e3:.1f} | {mfu} | {j['gpu_peak_mib']:.0f} MiB ({j['gpu_buffer_peak_mib']:.0f} + "
      f"{j['gpu_scratch_peak_mib']:.0f}) | {j['gpu_memory_used_mib']:.0f} MiB |")
PY
  counted $?
}
table_head() {
  say ""
  say "| preset | variant | micro-batch x seq | tokens/s | achieved TFLOP/s | GPU fp32 sgemm peak TFLOP/s | MFU vs dense bf16 peak | peak GPU memory (buffers + scratch) | GPU memory in use |"
  say "|---|---|---|---|---|---|---|---|---|"
}

# 2. The headline: the target preset in bf16 with the defaults (the rows are onestep bench's median of
# $bench_steps steps after 2 warm-ups, AdamW unless the variant names Muon).
section "Headline: ${presets[1]}, bf16, defaults (and with the tile attention kernels)"
table_head
bench_row "${presets[1]}" bf16
bench_row "${presets[1]}" bf16+tiles

# 3. CUDA tests.
section "CUDA tests"
if in_time $test_timeout "the CUDA tests"; then
  timeout $test_timeout "$BIN/test_cuda" --gtest_filter="$test_filter" > "$WORK/test_cuda.log" 2>&1
  rc=$?
  counted $rc
  say "- test_cuda: exit $rc$([ $rc = 124 ] && echo " (timed out after $test_timeout s)"); $(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$WORK/test_cuda.log" | tr '\n' ' ')"
  grep -E '^\[  FAILED  \]' "$WORK/test_cuda.log" | sort -u | sed 's/^/  - /' | tee -a "$SUMMARY"
  # The slowest tests, so that the next run can trim them.
  grep -E '^\[       OK \]' "$WORK/test_cuda.log" | sed -E 's/.*\] ([^ ]+) \(([0-9]+) ms\)/\2 \1/' | sort -rn | head -n 5 \
    | awk '{printf "  - slowest: %s %.1f s\n", $2, $1 / 1000}' | tee -a "$SUMMARY"
  cp "$WORK/test_cuda.log" "$OUTDIR/test_cuda.log"
fi

# NCCL on this GPU (a one-rank communicator sending to itself), with its own timeout: its start-up opens sockets
# that a sandbox may block.
section "NCCL"
if in_time 45 "the NCCL tests"; then
  timeout 45 "$BIN/test_cuda" --gtest_filter='CudaNccl.*:CudaHost.Nccl*' > "$WORK/test_nccl.log" 2>&1
  rc=$?
  counted $rc
  say "- NCCL tests: exit $rc ($(grep -E '^\[  (PASSED|FAILED|SKIPPED) ' "$WORK/test_nccl.log" | tr '\n' ' '))"
fi
# 4. A 2-stage 2BW pipeline on the one GPU against its single-device emulator (delay.emulate = one_step), on a
# synthetic token shard (no data is downloaded): losses must agree (the same rule), and the pipeline's tokens/s
# over the emulator's is the schedule's own overhead (issue #5 target: >= 90%). pipe_pair <preset>.
pipe_pair() {
  local preset=$1 mode sets
  section "2-stage 2BW pipeline on one GPU vs the one-step emulator ($preset, $pipe_desc, bf16)"
  in_time 90 "the $preset pipeline" || return 0  # smollm2-360m: 80 s on an H100
  for mode in pipeline emulator; do
    if [ $mode = pipeline ]; then sets=(--set pipeline.schedule=2bw --set pipeline.stages=2)
    else sets=(--set delay.emulate=one_step); fi
    echo "  train $preset $mode (at ${SECONDS} s)"
    timeout 100 "$BIN/onestep" train --config "$WORK/pipe.toml" "${sets[@]}" --set model.preset="$preset" \
      "${pipe_shape[@]}" --out "$WORK/run_${preset}_$mode" > "$WORK/train_${preset}_$mode.log" 2>&1 ||
      problem "- $mode run failed: $(tail -n 2 "$WORK/train_${preset}_$mode.log" | tr '\n' ' ')"
  done
  python3 - "$WORK" "$preset" <<'PY' | tee -a "$SUMMARY"
import json, statistics, sys
def read(mode):
    rows = [json.loads(l) for l in open(f"{sys.argv[1]}/run_{sys.argv[2]}_{mode}/metrics.jsonl")]
    rows = [r for r in rows if r.get("train_loss") is not None]
    return [r["train_loss"] for r in rows], statistics.median(r["tok_per_s"] for r in rows[2:])
try:
    (lp, tp), (le, te) = read("pipeline"), read("emulator")
    worst = max(abs(a - b) / abs(b) for a, b in zip(lp, le))
    same = next((i for i, (a, b) in enumerate(zip(lp, le)) if a != b), len(lp))
    # The same update rule, and (since session 12) only deterministic kernels: on a GPU every step should have
    # equal bits. Until then the embedding's backward added repeated tokens with float atomics, and an H100 gave
    # equal bits for the first steps only, then differences growing to 1.2e-4 by step 12. The rehearsal differs
    # anyway (its emulated cuBLAS is OpenBLAS, which splits a product by the host threads a stage has). Failing
    # takes 1e-3: a wrong schedule differs at once and by far more.
    print(f"- losses over {len(lp)} steps: equal bits for {same} (expected: all on a GPU), largest relative "
          f"difference {worst:.2e} (fails at 1e-3)")
    print(f"- tokens/s (median of steps 3-12): pipeline {tp:.0f}, emulator {te:.0f}: the pipeline keeps {100 * tp / te:.1f}%")
    sys.exit(0 if len(lp) == len(le) == 12 and worst < 1e-3 else 1)
except Exception as e:
    print(f"- could not compare: {e}")
    sys.exit(1)
PY
  counted $?
}
python3 - "$WORK" "$pipe_vocab" <<'PY'
import array, random, sys  # standard library only: llm.c's shard format, uint16 tokens
rng = random.Random(1)
for split, n in (("train", 2_000_000), ("val", 200_000)):
    header = array.array("i", [20240520, 1, n] + [0] * 253)
    tokens = array.array("H", (rng.randrange(int(sys.argv[2])) for _ in range(n)))
    with open(f"{sys.argv[1]}/synthetic_{split}.bin", "wb") as f:
        header.tofile(f); tokens.tofile(f)
PY
cat > "$WORK/pipe.toml" <<EOT
[data]
train = "$WORK/synthetic_train.bin"
val = "$WORK/synthetic_val.bin"
tokenizer = ""
[train]
steps = 12
eval_every = 0
eval_tokens = 8192
ckpt_every = 0
log_every = 1
device = "cuda"
precision = "bf16"
[optim]
name = "adamw"
lr = 0.003
EOT
for preset in "${pipe_presets[@]}"; do pipe_pair "$preset"; done

# 5. Throughput in each precision, and the candidate defaults on the target preset (most telling first: a step
# skipped for time loses the least).
section "Training throughput, one GPU"
table_head
for row in "${presets[1]} bf16+mb16" "${presets[0]} bf16" "${presets[1]} bf16+muon" "${presets[1]} bf16+muon+ns32" \
           "${presets[1]} bf16+percall" "${presets[1]} bf16+fp32ops" "${presets[0]} bf16+tiles" "${presets[1]} tf32" \
           "${presets[1]} fp32" "${presets[0]} tf32" "${presets[0]} fp32"; do
  bench_row $row
done

# Where the bf16 step's time goes (onestep bench's profiled step: CUDA events around each kernel call).
section "Time by kernel, bf16 (the median of up to 3 profiled steps: the model's kernels, the optimizer step, the rest: host gaps)"
for run in ${presets[1]}_bf16 ${presets[1]}_bf16+tiles ${presets[1]}_bf16+mb16 ${presets[0]}_bf16 ${presets[1]}_bf16+muon ${presets[1]}_bf16+muon+ns32 ${presets[1]}_bf16+fp32ops; do
  [ -f "$WORK/bench_$run.log" ] || continue
  python3 - "$run" "$WORK/bench_$run.log" "${presets[1]}_bf16" <<'PY' | tee -a "$SUMMARY"
import json, sys
try:
    j = json.loads([l for l in open(sys.argv[2]) if l.startswith("{")][-1])
    step_ms = 1e3 * j["profiled_step_s"]
    ops = sorted(j["op_ms"].items(), key=lambda kv: -kv[1])
    opt = j.get("optimizer_ms", 0.0)
    rest = step_ms - sum(ms for _, ms in ops) - opt
    shown = [f"{name} {ms:.1f} ms ({100 * ms / step_ms:.0f}%)" for name, ms in ops[:10]]
    print(f"- {sys.argv[1]}: step {step_ms:.1f} ms: " + ", ".join(shown) +
          f", optimizer step {opt:.1f} ms ({100 * opt / step_ms:.0f}%), rest {rest:.1f} ms ({100 * rest / step_ms:.0f}%)")
    parts = j.get("part_ms", {})  # an op's own kernels, e.g. attention_backward's delta, dq and dk/dv
    if parts:
        print("  - of which: " + ", ".join(f"{name} {ms:.1f} ms" for name, ms in sorted(parts.items())))
    gaps = sorted(j.get("gap_ms", {}).items(), key=lambda kv: -kv[1])  # the GPU between the timed ops
    if gaps:
        print(f"  - of the rest, between ops {sum(ms for _, ms in gaps):.1f} ms; the most before: " +
              ", ".join(f"{name} {ms:.1f} ms" for name, ms in gaps[:4]))
    if sys.argv[1] == sys.argv[3]:  # the headline run (flash attention): its backward's three kernels, within it
        mine = [ms for name, ms in parts.items() if name.startswith("attention_backward: ")]
        whole = j["op_ms"].get("attention_backward", 0.0)
        if len(mine) != 3 or sum(mine) > 1.01 * whole:
            print(f"  - PROBLEM: attention_backward's parts {parts} do not make up its {whole:.2f} ms")
            sys.exit(1)
        if not gaps or sum(ms for _, ms in gaps) > rest + 0.01 * step_ms:
            print(f"  - PROBLEM: the gaps between ops {gaps} are not within the rest, {rest:.2f} ms")
            sys.exit(1)
except Exception as e:
    print(f"- {sys.argv[1]}: no profile ({e})")
PY
  counted "${PIPESTATUS[0]}"
done

say ""
say "Logs (gpu_logs.tar.gz): $(ls "$WORK" | tr '\n' ' ')"
say "Verdict: $problems failed step(s), ${SECONDS} s in all"
pack_logs
rm -rf "$WORK" "${CARRY:-}"
[ $problems -eq 0 ]
