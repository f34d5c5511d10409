#!/usr/bin/env python3
"""PipeDream-2BW against 1F1B-with-flush on a real 2-stage pipeline (issue #3's benchmark).

For each m, runs `onestep train` with both schedules alternately (rep 0: 1f1b then 2bw, rep 1: 2bw then 1f1b),
with pipeline.trace on, and reads the steady state off the real timeline: the median time between successive
optimizer steps of stage 0 (without the first window, where the pipeline fills, and the last, where it
drains), each stage's busy share of those windows,
and the median forward/backward cost per stage. Those costs drive the discrete-event simulator
(`onestep schedule --format summary`) whose predicted step time is compared with the measured one.
Python standard library only. Usage: bench/pipeline_bench.py [--config configs/small.toml] [--m 2,4,8]
"""
import argparse, json, os, statistics, subprocess, sys, tempfile

p = argparse.ArgumentParser()
p.add_argument("--binary", default="build/onestep")
p.add_argument("--config", default="configs/small.toml")
p.add_argument("--m", default="2,4,8")
p.add_argument("--micro-batch-size", type=int, default=2)
p.add_argument("--steps", type=int, default=8, help="optimizer steps per run (at least 5: 2 of them are not timed)")
p.add_argument("--reps", type=int, default=2)
p.add_argument("--transport", default="inproc")
p.add_argument("--stages", type=int, default=2)
p.add_argument("--lookahead", type=int, default=1, help="pipeline.lookahead of both schedules (0: textbook 1F1B order)")
p.add_argument("--balance", default="params", help="pipeline.balance: params (default: the same split in every run) or measured")
p.add_argument("--out", default="bench/pipeline_bench.md")
args = p.parse_args()
P = args.stages


def run(schedule, m, workdir):
    out = os.path.join(workdir, f"{schedule}_m{m}")
    cmd = [args.binary, "train", "--config", args.config, "--out", out,
           "--set", f"pipeline.schedule={schedule}", "--set", f"pipeline.stages={P}",
           "--set", f"train.micro_batches={m}", "--set", f"train.micro_batch_size={args.micro_batch_size}",
           "--set", f"train.steps={args.steps}", "--set", "train.eval_every=0", "--set", "train.eval_tokens=256",
           "--set", "train.ckpt_every=0", "--set", "pipeline.trace=true", "--set", "optim.name=adamw",
           "--set", "delay.correction=none", "--set", f"pipeline.transport={args.transport}",
           "--set", f"pipeline.balance={args.balance}", "--set", f"pipeline.lookahead={args.lookahead}"]
    if args.transport == "mpi":
        cmd = ["mpirun", "--allow-run-as-root", "--oversubscribe", "-np", str(P)] + cmd + ["--set", "train.threads=1"]
    else:
        cmd += ["--set", f"train.threads={max(2, P)}"]
    printed = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True).stdout
    partition.update({l.strip() for l in printed.splitlines() if l.strip().startswith("stage ")})
    with open(os.path.join(out, "trace.json")) as f:
        events = [e for e in json.load(f)["traceEvents"] if e.get("ph") == "X"]
    subprocess.run(["rm", "-rf", out])
    steps = sorted(e["ts"] for e in events if e["tid"] == 0 and e["cat"] == "step")
    # Steady state: the windows between successive steps of stage 0, without the first (the pipeline fills) and
    # the last (it drains: no forwards are left to overlap the last backwards, so stages wait by construction).
    windows = list(zip(steps[1:-2], steps[2:-1]))
    step_us = statistics.median(b - a for a, b in windows)
    idle = []
    for s in range(P):
        busy = total = 0.0
        for a, b in windows:
            for e in events:
                if e["tid"] == s and e["cat"] in ("forward", "backward", "step"):  # computing, not waiting
                    lo, hi = max(a, e["ts"]), min(b, e["ts"] + e["dur"])
                    busy += max(0.0, hi - lo)
            total += b - a
        idle.append(1.0 - busy / total)
    cost = {c: [statistics.median(e["dur"] for e in events if e["tid"] == s and e["cat"] == c) / 1e3 for s in range(P)]
            for c in ("forward", "backward")}
    return step_us / 1e6, idle, cost


def simulate(schedule, m, cost):
    def makespan(n):
        out = subprocess.run([args.binary, "schedule", "--schedule", schedule, "--stages", str(P), "--microbatches", str(m),
                              "--lookahead", str(args.lookahead),
                              "--steps", str(n), "--format", "summary",
                              "--forward-ms", ",".join(f"{x:.4f}" for x in cost["forward"]),
                              "--backward-ms", ",".join(f"{x:.4f}" for x in cost["backward"])],
                             check=True, capture_output=True, text=True).stdout
        return json.loads(out)["makespan_s"]
    return (makespan(12) - makespan(4)) / 8  # steady-state step time


rows = []
partition = set()  # the split the runs printed
with tempfile.TemporaryDirectory() as work:
    for m in [int(x) for x in args.m.split(",")]:
        res = {"1f1b": [], "2bw": []}
        for rep in range(args.reps):
            order = ["1f1b", "2bw"] if rep % 2 == 0 else ["2bw", "1f1b"]
            for sched in order:
                step_s, idle, cost = run(sched, m, work)
                res[sched].append((step_s, idle, cost))
                print(f"m={m} rep={rep} {sched}: step {step_s:.3f} s, idle {[round(i, 3) for i in idle]}", file=sys.stderr)
        row = {"m": m}
        for sched in res:
            row[sched + "_step"] = statistics.median(r[0] for r in res[sched])
            row[sched + "_idle"] = [statistics.median(r[1][s] for r in res[sched]) for s in range(P)]
            row[sched + "_sim"] = simulate(sched, m, res[sched][0][2])
            # median forward + backward time of one micro-batch, summed over the stages
            row[sched + "_op"] = statistics.median(sum(r[2]["forward"]) + sum(r[2]["backward"]) for r in res[sched])
        rows.append(row)

with open(args.config) as f:
    seq = next(int(l.split("=")[1]) for l in f if l.strip().startswith("seq_len"))
tok_micro = args.micro_batch_size * seq
lines = [f"# 2BW vs 1F1B, p = {P}, {args.transport} transport", "",
         f"`bench/pipeline_bench.py --config {args.config} --m {args.m} --micro-batch-size {args.micro_batch_size} "
         f"--steps {args.steps} --reps {args.reps} --transport {args.transport} --balance {args.balance} "
         f"--lookahead {args.lookahead}`; medians of "
         f"{args.reps} alternating runs; steady state from the real run's trace. Partition (pipeline.balance = "
         f"{args.balance}):", ""] + [f"- {l}" for l in sorted(partition)] + ["",
         "| m | 1F1B tok/s | 2BW tok/s | speed-up | bubble model (m+p-1)/m | speed-up / model | share of the model's gain | "
         "2BW idle per stage | 1F1B idle per stage | 2BW op time / 1F1B's | simulated step 1F1B / 2BW (error) |",
         "|---|---|---|---|---|---|---|---|---|---|---|"]
for r in rows:
    m = r["m"]
    t1, t2 = m * tok_micro / r["1f1b_step"], m * tok_micro / r["2bw_step"]
    speed, model = t2 / t1, (m + P - 1) / m
    err1 = r["1f1b_sim"] / r["1f1b_step"] - 1
    err2 = r["2bw_sim"] / r["2bw_step"] - 1
    lines.append(f"| {m} | {t1:.0f} | {t2:.0f} | {speed:.3f} | {model:.3f} | {speed / model * 100:.0f}% | {(speed - 1) / (model - 1) * 100:.0f}% | "
                 f"{', '.join(f'{x * 100:.1f}%' for x in r['2bw_idle'])} | {', '.join(f'{x * 100:.1f}%' for x in r['1f1b_idle'])} | {r['2bw_op'] / r['1f1b_op']:.3f} | "
                 f"{r['1f1b_sim']:.3f} s ({err1 * 100:+.1f}%) / {r['2bw_sim']:.3f} s ({err2 * 100:+.1f}%) |")
lines += ["", "speed-up / model: the issue's target is >= 90%. share of the model's gain: (speed-up - 1) / (model - 1). "
          "idle: the share of the steady-state step windows a stage spends outside forwards, backwards and its "
          "optimizer step (waiting for a message or a reduction). "
          "2BW op time / 1F1B's: median forward + backward time of a micro-batch (summed over stages) under 2BW "
          "divided by the same under 1F1B: above 1 when both cores computing at once slow each other down (shared "
          "caches, memory bandwidth, clock), which the bubble model does not count."]
text = "\n".join(lines) + "\n"
print(text)
with open(args.out, "w") as f:
    f.write(text)
