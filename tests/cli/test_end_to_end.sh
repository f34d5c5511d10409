#!/usr/bin/env bash
# train -> resume -> eval -> sample -> export through the binary, checking the files the contract names.
source "$(dirname "$0")/lib.sh"
make_data
cd "$WORK"

"$BIN" train --config micro.toml --out run > train.log 2>&1 || { cat train.log; fail "train"; }
for f in config.toml metrics.jsonl checkpoints/latest plots/loss.png; do
  [ -s "run/$f" ] && ok "run/$f" || fail "run/$f missing"
done
[ "$(head -c 4 run/plots/loss.png | od -An -tx1 | tr -d ' ')" = "89504e47" ] && ok "loss.png is a PNG" || fail "loss.png is not a PNG"
[ "$(grep -c '"train_loss"' run/metrics.jsonl)" = "5" ] && ok "5 metrics lines" || fail "metrics lines: $(wc -l < run/metrics.jsonl)"
grep -q '"val_loss"' run/metrics.jsonl && ok "val_loss logged" || fail "no val_loss"
ls run/checkpoints | grep -q step_00000004 && ok "final checkpoint" || fail "no final checkpoint"

# Extending a finished run: --resume continues from its last checkpoint (step 4) to the new step count.
"$BIN" train --config micro.toml --out run --resume --set train.steps=6 > resume.log 2>&1 || fail "resume: $(cat resume.log)"
grep -q "resuming.*step_00000004" resume.log && ok "resumed from step 4" || fail "did not resume from step 4: $(head -3 resume.log)"
# Its summary starts from the first validation loss of this session (micro.toml evaluates every 2 steps), not 0.
grep -Eq "^done: 6 steps, val_loss [0-9.]+ \(step 6\) -> [0-9.]+, final" resume.log && ! grep -q "val_loss 0.0000" resume.log \
  && ok "resumed summary: $(grep '^done' resume.log)" || fail "resumed summary: $(grep '^done' resume.log)"
grep -Eq "^done: 4 steps, val_loss [0-9.]+ -> [0-9.]+, final" train.log && ok "fresh summary: $(grep '^done' train.log)" \
  || fail "fresh summary: $(grep '^done' train.log)"
[ "$(grep -c '"train_loss"' run/metrics.jsonl)" = "7" ] && ok "metrics continue to step 6" || fail "metrics after resume"
"$BIN" eval --checkpoint run > eval.json 2>&1 || fail "eval"
grep -q '"val_loss"' eval.json && ok "eval: $(cat eval.json)" || fail "eval output: $(cat eval.json)"
"$BIN" sample --checkpoint run/checkpoints/latest --prompt "int main" --tokens 20 --seed 3 > s1.txt || fail "sample"
"$BIN" sample --checkpoint run --prompt "int main" --tokens 20 --seed 3 > s2.txt || fail "sample 2"
cmp -s s1.txt s2.txt && ok "sampling is deterministic per seed" || fail "sampling differs for the same seed"
[ "$(head -c 8 s1.txt)" = "int main" ] && ok "sample continues the prompt" || fail "sample: $(cat s1.txt)"

"$BIN" export --checkpoint run --out hf/model.safetensors > /dev/null || fail "export"
[ -s hf/config.json ] && grep -q '"num_key_value_heads": 2' hf/config.json && ok "config.json" || fail "config.json"
python3 - hf/model.safetensors <<'PY' && ok "export names and shapes" || fail "export names/shapes"
import json, struct, sys
b = open(sys.argv[1], 'rb').read()
n = struct.unpack('<Q', b[:8])[0]
h = json.loads(b[8:8 + n])
assert h['model.embed_tokens.weight']['shape'] == [320, 32]
assert h['model.layers.1.self_attn.k_proj.weight']['shape'] == [16, 32]   # [out, in]: 2 kv heads x 8
assert h['model.layers.0.mlp.down_proj.weight']['shape'] == [32, 64]
assert 'lm_head.weight' not in h                                          # tied
assert h['model.norm.weight']['shape'] == [32]
PY
# Schedules: text, CSV and a Chrome trace that parses; the simulator summary reproduces the bubble model.
"$BIN" schedule --schedule 2bw --stages 2 --microbatches 4 --steps 2 --format trace > trace.json || fail "schedule trace"
python3 -c "import json; d = json.load(open('trace.json')); assert sum(e['ph'] == 'X' for e in d['traceEvents']) > 0" \
  && ok "schedule trace is Chrome trace JSON" || fail "schedule trace does not parse"
"$BIN" schedule --schedule 1f1b --stages 4 --microbatches 8 --format csv | grep -q "^0,0,forward" && ok "schedule csv" || fail "schedule csv"
"$BIN" schedule --schedule 1f1b --stages 4 --microbatches 8 --format summary --forward-ms 1 --backward-ms 1 \
  | python3 -c "import json, sys; d = json.load(sys.stdin); idle = sum(d['idle_s']) / (4 * d['makespan_s']); assert abs(idle - 3 / 11) < 1e-9, idle" \
  && ok "simulated 1f1b bubble = (p-1)/(m+p-1)" || fail "simulated bubble"
# A pipeline run with tracing on writes the real timeline.
"$BIN" train --config micro.toml --set pipeline.schedule=2bw --set pipeline.stages=2 --set pipeline.trace=true --out traced > /dev/null 2>&1 || fail "traced run"
python3 -c "import json; d = json.load(open('traced/trace.json')); assert any(e.get('cat') == 'backward' for e in d['traceEvents'])" \
  && ok "real-run trace.json" || fail "real-run trace.json"
grep -q '"stage_idle_frac"' traced/metrics.jsonl && grep -q '"stage_activation_mib"' traced/metrics.jsonl \
  && ok "pipeline telemetry in metrics.jsonl" || fail "pipeline telemetry"
# Pipeline metrics are written as each step completes, each timed on its own: the clock moves between lines (it
# stood still within an evaluation segment when they were written at its end, all with its average tokens/s).
python3 -c "
import json
rows = [json.loads(l) for l in open('traced/metrics.jsonl')]
rows = [r for r in rows if r.get('train_loss') is not None]
t = [r['elapsed_s'] for r in rows]
assert len(rows) >= 3 and all(a < b for a, b in zip(t, t[1:])), t
assert len({r['tok_per_s'] for r in rows}) == len(rows), [r['tok_per_s'] for r in rows]
" && ok "pipeline metrics written step by step" || fail "pipeline metrics step by step"
# onestep bench: its JSON line splits the profiled step into the model's kernels, the optimizer step (Muon's
# Newton-Schulz here, the largest part at this size) and a rest, each non-negative and together the step.
"$BIN" bench --config micro.toml --set optim.name=muon --steps 2 2> /dev/null | grep '^{' | tail -n 1 | python3 -c "
import json, sys
j = json.load(sys.stdin)
step, opt, kernels = 1e3 * j['profiled_step_s'], j['optimizer_ms'], sum(j['op_ms'].values())
assert 0 < opt < step and 0 < kernels < step and kernels + opt <= step * 1.001, (step, opt, kernels)
assert j['tokens_per_s'] > 0 and 'matmul_forward' in j['op_ms'] and j['profiled_steps'] == 2, j
assert j['part_ms'] == {} and j['gap_ms'] == {}, j  # the CPU's ops have no parts; its gaps are not measured
" && ok "bench JSON: kernels + optimizer step within the profiled step" || fail "bench JSON"
finish
