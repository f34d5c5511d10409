#!/usr/bin/env python3
"""Resumable runner for onestep's sync / async / async+EF comparison (PAPER.md §4-§5, at small scale).

The grid: for every optimizer, first a learning-rate sweep in sync mode (the optimizer's default lr times each
--lr-factors value, seed = the first of --seeds); the lr with the best final val_loss is then used unchanged for
every mode and seed (as in the paper: the delayed runs reuse the synchronous hyperparameters). Modes:

    sync      one device, no delay                          pipeline.schedule=none, delay.emulate=none
    async     PipeDream-2BW's one-step delay (emulated)     delay.emulate=one_step, delay.correction=none
    async_ef  the same plus the EF correction (c = 1)       delay.emulate=one_step, delay.correction=ef

(--async-impl 2bw runs a real in-process 2-stage 2BW pipeline instead; it is bit-identical to the emulation.)
For Muon-family optimizers the sweep scales the Muon group's lr and the AdamW group's lr together.

Layout: RUNS/<group>/<cell>/ with group = <preset>-<corpus>-<steps>st[-<tag>] and
cell = <optimizer>-<mode>-lr<lr>-s<seed>; RUNS/<group>/grid.json records the settings, the sweep and the chosen
lrs (experiments/report.py reads it). A cell whose metrics.jsonl reaches the final step with a val_loss is
skipped; an interrupted one is continued with --resume from its newest checkpoint (or restarted when it has
none); a diverged one (exit code 3) is marked DIVERGED and counts as +inf in the sweep.

Python 3 standard library only. Examples:
    experiments/run_comparison.py --only-headline --steps 300 --budget 40
    experiments/run_comparison.py --optimizers adamw,lion --seeds 1,2,3 --dry-run
    experiments/run_comparison.py --ci --runs-dir /tmp/ci-runs
"""
import argparse
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ALL_OPTIMIZERS = ["adamw", "muon", "normuon", "adan", "lion", "mars", "soap", "sgd"]
MUON_FAMILY = {"muon", "normuon"}
MODES = ["sync", "async", "async_ef"]
EXTRA_MODES = ["async_ps", "async_wp", "async_dc"]  # async_wp / async_dc: the one-step delay with weight
# prediction / DC-ASGD instead of EF; original PipeDream's per-stage delay (p-1-s steps on stage s); not in the default grid
# Starting learning rates (the binary's defaults, src/optim/optim_config.cpp; Muon's AdamW group as in
# configs/tiny.toml). The sweep multiplies them by --lr-factors.
DEFAULT_LR = {"adamw": 3e-3, "muon": 0.02, "normuon": 0.02, "adan": 3e-3, "lion": 3e-4, "mars": 3e-3,
              "soap": 3e-3, "sgd": 0.1}
DEFAULT_ADAMW_LR = 6e-3  # the AdamW group (embedding, head, norms) of Muon-family runs
# [optim] keys kept from the preset's TOML; everything optimizer-specific is dropped so each optimizer gets the
# binary's own defaults (tiny.toml's momentum 0.95 would otherwise leak into sgd, for instance).
COMMON_OPTIM_KEYS = {"name", "warmup_frac", "min_lr_frac", "weight_decay", "clip"}

PRESETS = {
    # name: (config file, --set overrides)
    "tiny": ("configs/tiny.toml", {}),
    "small": ("configs/small.toml", {}),
    # a narrower small: half the width, same depth and sequence length
    "small-narrow": ("configs/small.toml", {"model.d_model": "256", "model.n_heads": "4", "model.n_kv_heads": "4",
                                            "model.ffn_hidden": "688"}),
}
CORPORA = {
    "default": {},  # whatever the preset's config names (scripts/fetch-data.sh)
    "prose": {"data.train": "data/prose/shards/train_*.bin", "data.val": "data/prose/shards/val_*.bin",
              "data.tokenizer": "data/prose/bpe8192.tok", "model.vocab_size": "8192"},  # experiments/build_prose.sh
}
MODE_SETS = {
    "emulate": {
        "sync": {"pipeline.schedule": "none", "pipeline.stages": "1", "delay.emulate": "none",
                 "delay.correction": "none"},
        "async": {"pipeline.schedule": "none", "pipeline.stages": "1", "delay.emulate": "one_step",
                  "delay.correction": "none"},
        "async_ef": {"pipeline.schedule": "none", "pipeline.stages": "1", "delay.emulate": "one_step",
                     "delay.correction": "ef", "delay.ef_coef": "1.0"},
        "async_ps": {"pipeline.schedule": "none", "delay.emulate": "per_stage", "delay.correction": "none"},
        "async_wp": {"pipeline.schedule": "none", "pipeline.stages": "1", "delay.emulate": "one_step",
                     "delay.correction": "weight_prediction"},
        "async_dc": {"pipeline.schedule": "none", "pipeline.stages": "1", "delay.emulate": "one_step",
                     "delay.correction": "dc_asgd"},
    },
    "2bw": {
        "sync": {"pipeline.schedule": "none", "pipeline.stages": "1", "delay.emulate": "none",
                 "delay.correction": "none"},
        "async": {"pipeline.schedule": "2bw", "pipeline.stages": "2", "delay.emulate": "none",
                  "delay.correction": "none"},
        "async_ef": {"pipeline.schedule": "2bw", "pipeline.stages": "2", "delay.emulate": "none",
                     "delay.correction": "ef", "delay.ef_coef": "1.0"},
        "async_ps": {"pipeline.schedule": "pipedream", "delay.emulate": "none", "delay.correction": "none"},
        # weight prediction is implemented in the delay emulators only (the trainer rejects it with a pipeline)
        "async_wp": {"pipeline.schedule": "none", "pipeline.stages": "1", "delay.emulate": "one_step",
                     "delay.correction": "weight_prediction"},
        "async_dc": {"pipeline.schedule": "2bw", "pipeline.stages": "2", "delay.emulate": "none",
                     "delay.correction": "dc_asgd"},
    },
}
# Seconds per optimizer step of the tiny preset on the default corpus, 2048 tokens a step, one thread of a
# 2-core machine (measured; used until the group's own finished runs give better numbers).
SEC_PER_STEP_TINY = {"adamw": 0.30, "muon": 0.36, "normuon": 0.38, "adan": 0.32, "lion": 0.30, "mars": 0.32,
                     "soap": 0.60, "sgd": 0.29}
MODE_COST = {"sync": 1.0, "async": 1.06, "async_ef": 1.08, "async_ps": 1.2, "async_wp": 1.1, "async_dc": 1.1}
START_S = 2.0  # process start, data loading, checkpoint


def log(msg):
    print(f"[comparison] {msg}", flush=True)


def fmt_lr(lr):
    return f"{lr:.3g}".replace("e-0", "e-").replace("e+0", "e+")


def cell_name(opt, mode, lr, seed):
    return f"{opt}-{mode}-lr{fmt_lr(lr)}-s{seed}"


def read_metrics(path):
    """Lines of metrics.jsonl, the last one per step kept (a resumed run rewrites from its checkpoint)."""
    rows = {}
    if not os.path.exists(path):
        return []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            try:
                j = json.loads(line)
            except ValueError:
                continue  # a line cut by a crash
            if isinstance(j, dict) and "step" in j:
                rows[j["step"]] = j
    return [rows[k] for k in sorted(rows)]


def final_val(rows, steps):
    for r in reversed(rows):
        if r.get("step") == steps and r.get("val_loss") is not None:
            return float(r["val_loss"])
    return None


def compute_seconds(rows):
    """Wall-clock compute time of a run from elapsed_s, summed over resumed segments."""
    total, prev = 0.0, 0.0
    for r in rows:
        e = r.get("elapsed_s")
        if e is None:
            continue
        total += e - prev if e >= prev else e
        prev = e
    return total


def read_toml_value(path, section, key):
    sec = None
    with open(path) as f:
        for line in f:
            s = line.split("#", 1)[0].strip()
            m = re.match(r"^\[(.+)\]$", s)
            if m:
                sec = m.group(1).strip()
                continue
            m = re.match(r"^([A-Za-z0-9_]+)\s*=\s*(.+)$", s)
            if m and sec == section and m.group(1) == key:
                return m.group(2).strip().strip('"')
    return None


def write_base_config(src, dst):
    """The preset's TOML with the [optim] section reduced to COMMON_OPTIM_KEYS."""
    out, sec = [], None
    with open(src) as f:
        for line in f:
            s = line.split("#", 1)[0].strip()
            m = re.match(r"^\[(.+)\]$", s)
            if m:
                sec = m.group(1).strip()
            else:
                m = re.match(r"^([A-Za-z0-9_]+)\s*=", s)
                if m and sec == "optim" and m.group(1) not in COMMON_OPTIM_KEYS:
                    continue
            out.append(line)
    text = "".join(out)
    if os.path.exists(dst):
        with open(dst) as f:
            if f.read() == text:
                return
    with open(dst, "w") as f:
        f.write(text)


class Settings:
    pass


def parse_args(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--optimizers", default=",".join(ALL_OPTIMIZERS), help="comma list (default: all eight)")
    ap.add_argument("--seeds", default="1,2", help="comma list of train.seed values (default 1,2)")
    ap.add_argument("--modes", default=",".join(MODES),
                    help="comma list of sync,async,async_ef and, optionally, async_ps (original PipeDream's "
                         "per-stage delay, delay.emulate=per_stage with --ps-stages stages), async_wp (one-step delay "
                         "+ delay.correction=weight_prediction), async_dc (one-step delay + delay.correction=dc_asgd)")
    ap.add_argument("--ps-stages", type=int, default=4, help="pipeline.stages of async_ps runs (default 4)")
    ap.add_argument("--steps", type=int, default=None, help="optimizer steps per run (default 300; --ci: 3)")
    ap.add_argument("--preset", default="tiny", choices=sorted(PRESETS), help="model preset (default tiny)")
    ap.add_argument("--config", default=None, help="a TOML config to use instead of the preset's")
    ap.add_argument("--corpus", default="default", choices=sorted(CORPORA),
                    help="default (scripts/fetch-data.sh) or prose (experiments/build_prose.sh)")
    ap.add_argument("--lr-factors", default="0.5,1,2", help="sync lr sweep: multiples of the default lr")
    ap.add_argument("--default-lr", default="", metavar="OPTS",
                    help="comma list of optimizers to run at their default lr, no sweep (report: lr not tuned)")
    ap.add_argument("--lr", default="", help="OPT=LR,... : use this lr, no sweep, for these optimizers")
    ap.add_argument("--micro-batches", type=int, default=None, help="train.micro_batches (batch = m x mbs x seq)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="extra override for every run (repeatable); give the group a --tag")
    ap.add_argument("--tag", default="", help="suffix of the group name (runs with other settings)")
    ap.add_argument("--async-impl", default="emulate", choices=sorted(MODE_SETS),
                    help="emulate (one-device delay emulator, default) or 2bw (real 2-stage pipeline)")
    ap.add_argument("--threads", type=int, default=1, help="train.threads (default 1)")
    ap.add_argument("--eval-every", type=int, default=None, help="default: steps/6")
    ap.add_argument("--eval-tokens", type=int, default=None, help="default: the config's (--ci: 4096)")
    ap.add_argument("--runs-dir", default=os.path.join(REPO, "experiments", "runs"))
    ap.add_argument("--onestep", default=os.path.join(REPO, "build", "onestep"),
                    help="the binary; a group runs from a snapshot of it (RUNS/<group>/.bin/) so that a rebuild "
                         "in the middle of a comparison cannot mix two versions")
    ap.add_argument("--fresh-binary", action="store_true",
                    help="replace the group's binary snapshot with the current --onestep")
    ap.add_argument("--budget", type=float, default=None, metavar="MINUTES",
                    help="refuse to start when the estimate exceeds it (unless --force); start no new run once "
                         "this much compute has been spent in this invocation")
    ap.add_argument("--force", action="store_true", help="start even when the estimate exceeds --budget")
    ap.add_argument("--only-headline", action="store_true", help="AdamW and Muon, seeds 1,2")
    ap.add_argument("--ci", action="store_true",
                    help="CI miniature: tiny, default corpus, adamw+muon, seed 1, 3 steps a cell")
    ap.add_argument("--keep-checkpoints", action="store_true", help="keep checkpoints of finished runs")
    ap.add_argument("--dry-run", action="store_true", help="print the plan, the estimate and the commands")
    a = ap.parse_args(argv)

    s = Settings()
    s.args = a
    if a.ci:
        a.optimizers, a.seeds, a.preset, a.corpus = "adamw,muon", "1", "tiny", "default"
        a.steps = a.steps or 3
        a.eval_tokens = a.eval_tokens or 4096
        a.eval_every = a.eval_every if a.eval_every is not None else 0
        a.tag = a.tag or "ci"
    if a.only_headline:
        a.optimizers, a.seeds = "adamw,muon", "1,2"
    s.optimizers = [o for o in a.optimizers.split(",") if o]
    for o in s.optimizers:
        if o not in ALL_OPTIMIZERS:
            ap.error(f"--optimizers: unknown optimizer '{o}' (expected {','.join(ALL_OPTIMIZERS)})")
    s.seeds = [int(x) for x in a.seeds.split(",") if x]
    s.modes = [m for m in a.modes.split(",") if m]
    for m in s.modes:
        if m not in MODES + EXTRA_MODES:
            ap.error(f"--modes: unknown mode '{m}'")
    s.steps = a.steps or 300
    s.factors = [float(x) for x in a.lr_factors.split(",") if x]
    s.fixed_lr = {}
    for item in [x for x in a.lr.split(",") if x]:
        k, _, v = item.partition("=")
        if k not in ALL_OPTIMIZERS or not v:
            ap.error(f"--lr: expected OPT=LR, got '{item}'")
        s.fixed_lr[k] = float(v)
    for o in [x for x in a.default_lr.split(",") if x]:
        if o not in ALL_OPTIMIZERS:
            ap.error(f"--default-lr: unknown optimizer '{o}'")
        s.fixed_lr.setdefault(o, DEFAULT_LR[o])
    s.untuned = [o for o in ALL_OPTIMIZERS if o in a.default_lr.split(",") and o in s.fixed_lr]
    s.config = a.config or PRESETS[a.preset][0]
    if not os.path.isabs(s.config):
        s.config = os.path.join(REPO, s.config)
    s.extra = {}
    s.extra.update(PRESETS[a.preset][1] if not a.config else {})
    s.extra.update(CORPORA[a.corpus])
    for kv in a.set:
        k, sep, v = kv.partition("=")
        if not sep:
            ap.error(f"--set: expected KEY=VALUE, got '{kv}'")
        s.extra[k] = v
    if a.micro_batches:
        s.extra["train.micro_batches"] = str(a.micro_batches)
    name = os.path.splitext(os.path.basename(s.config))[0] if a.config else a.preset
    s.group = f"{name}-{a.corpus}-{s.steps}st" + (f"-{a.tag}" if a.tag else "")
    s.group_dir = os.path.join(os.path.abspath(a.runs_dir), s.group)
    s.eval_every = a.eval_every if a.eval_every is not None else max(1, s.steps // 6)
    return s


def model_numbers(s):
    """(tokens per step, relative cost per step against tiny/default), from the config and the overrides."""
    def get(section, key, default):
        v = s.extra.get(f"{section}.{key}")
        if v is None:
            v = read_toml_value(s.config, section, key)
        return int(float(v)) if v is not None else default
    L, d, ffn = get("model", "n_layers", 4), get("model", "d_model", 128), get("model", "ffn_hidden", 344)
    V, T = get("model", "vocab_size", 4096), get("model", "seq_len", 128)
    mbs, m = get("train", "micro_batch_size", 8), get("train", "micro_batches", 2)
    def per_token(L, d, ffn, V, T):
        return L * (4 * d * d + 3 * d * ffn) + V * d + L * T * d
    tokens = mbs * m * T
    rel = per_token(L, d, ffn, V, T) / per_token(4, 128, 344, 4096, 128) * tokens / 2048
    return tokens, rel


def load_grid(s):
    path = os.path.join(s.group_dir, "grid.json")
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return {}


def save_grid(s, grid):
    os.makedirs(s.group_dir, exist_ok=True)
    tmp = os.path.join(s.group_dir, "grid.json.tmp")
    with open(tmp, "w") as f:
        json.dump(grid, f, indent=1, sort_keys=True)
    os.replace(tmp, os.path.join(s.group_dir, "grid.json"))


def base_lr(opt, s):
    return s.fixed_lr.get(opt, DEFAULT_LR[opt])


def cell_sets(s, opt, mode, lr, seed):
    sets = dict(s.extra)
    sets.update(MODE_SETS[s.args.async_impl][mode])
    if mode == "async_ps":
        sets["pipeline.stages"] = str(s.args.ps_stages)
    sets.update({"optim.name": opt, "optim.lr": repr(lr), "train.steps": str(s.steps), "train.seed": str(seed),
                 "train.threads": str(s.args.threads), "train.eval_every": str(s.eval_every),
                 "train.ckpt_every": str(max(1, s.steps // 3)) if s.steps >= 30 else "0",
                 "train.keep_ckpts": "1"})
    if opt in MUON_FAMILY:
        sets["optim.adamw_lr"] = repr(DEFAULT_ADAMW_LR * lr / DEFAULT_LR[opt])
    if s.args.eval_tokens:
        sets["train.eval_tokens"] = str(s.args.eval_tokens)
    return sets


def cell_status(s, name):
    d = os.path.join(s.group_dir, name)
    if os.path.exists(os.path.join(d, "DIVERGED")):
        return "diverged", None
    v = final_val(read_metrics(os.path.join(d, "metrics.jsonl")), s.steps)
    if v is not None:
        return "done", v
    if os.path.exists(os.path.join(d, "checkpoints", "latest")):
        return "partial", None
    return "todo", None


def measured_sec_per_step(s):
    """Seconds per step per (optimizer, mode) from this group's finished runs."""
    acc = {}
    if not os.path.isdir(s.group_dir):
        return {}
    for name in os.listdir(s.group_dir):
        m = re.match(r"^([a-z]+)-(sync|async|async_ef|async_ps|async_wp|async_dc)-lr", name)
        if not m:
            continue
        rows = read_metrics(os.path.join(s.group_dir, name, "metrics.jsonl"))
        if final_val(rows, s.steps) is None:
            continue
        acc.setdefault((m.group(1), m.group(2)), []).append(compute_seconds(rows) / s.steps)
    return {k: sum(v) / len(v) for k, v in acc.items()}


def estimate_run_s(s, opt, mode, measured, rel):
    if (opt, mode) in measured:
        return measured[(opt, mode)] * s.steps + START_S
    per = SEC_PER_STEP_TINY[opt] * MODE_COST[mode] * rel
    eval_tokens = s.args.eval_tokens or 32768
    tokens, _ = model_numbers(s)
    n_evals = (s.steps // s.eval_every if s.eval_every > 0 else 0) + 2
    return per * s.steps + n_evals * per * eval_tokens / tokens / 3 + START_S


def plan(s, grid):
    """The cells still to run, in order, with the lr they would use (the sweep's x1 lr where not chosen yet)."""
    cells = []
    for opt in s.optimizers:
        chosen = grid.get("chosen_lr", {}).get(opt)
        if opt in s.fixed_lr:
            chosen = s.fixed_lr[opt]
        sweep = [] if opt in s.fixed_lr else [base_lr(opt, s) * f for f in s.factors]
        for lr in sweep:
            cells.append(("sweep", opt, "sync", lr, s.sweep_seed))
        lr = chosen if chosen is not None else base_lr(opt, s)
        for seed in s.seeds:
            for mode in s.modes:
                if mode == "sync" and seed == s.sweep_seed and chosen is None and sweep:
                    continue  # will be one of the sweep cells
                cells.append(("main", opt, mode, lr, seed))
    seen, out = set(), []
    for c in cells:
        n = cell_name(c[1], c[2], c[3], c[4])
        if n not in seen:
            seen.add(n)
            out.append(c)
    return out


def print_estimate(s, grid):
    measured = measured_sec_per_step(s)
    tokens, rel = model_numbers(s)
    cells = plan(s, grid)
    todo = [(c, estimate_run_s(s, c[1], c[2], measured, rel)) for c in cells
            if cell_status(s, cell_name(c[1], c[2], c[3], c[4]))[0] not in ("done", "diverged")]
    total = sum(t for _, t in todo)
    log(f"group {s.group}: {len(s.optimizers)} optimizer(s) x {len(s.modes)} mode(s) x {len(s.seeds)} seed(s), "
        f"sweep x{','.join(f'{f:g}' for f in s.factors)}; {s.steps} steps of {tokens} tokens "
        f"({s.steps * tokens} tokens a run), {args_threads(s)} thread(s)")
    log(f"cells: {len(cells)} in all, {len(todo)} to run; estimated compute {total / 60:.1f} min "
        f"({'measured' if measured else 'built-in'} step times"
        f"{'' if s.args.threads == 1 else '; the built-in ones are for 1 thread'})")
    return total, todo


def args_threads(s):
    return s.args.threads


def run_cell(s, kind, opt, mode, lr, seed, dry):
    name = cell_name(opt, mode, lr, seed)
    d = os.path.join(s.group_dir, name)
    status, val = cell_status(s, name)
    if status == "done":
        log(f"{name}: done (val_loss {val:.4f}), skipped")
        return val, 0.0
    if status == "diverged":
        log(f"{name}: diverged earlier, skipped")
        return math.inf, 0.0
    base = os.path.join(s.group_dir, "base.toml")
    cmd = [s.binary, "train", "--config", base]
    for k, v in cell_sets(s, opt, mode, lr, seed).items():
        cmd += ["--set", f"{k}={v}"]
    cmd += ["--out", d]
    if status == "partial":
        cmd.append("--resume")
    elif os.path.exists(d):
        shutil.rmtree(d)  # started but no checkpoint yet: start afresh
    if dry:
        print(" ".join(cmd if kind == "main" else cmd))
        return None, 0.0
    os.makedirs(d, exist_ok=True)
    log(f"{name}: {'resuming' if status == 'partial' else 'starting'} ({kind})")
    t0 = time.time()
    with open(os.path.join(d, "train.log"), "a") as lf:
        lf.write("$ " + " ".join(cmd) + "\n")
        lf.flush()
        rc = subprocess.call(cmd, stdout=lf, stderr=subprocess.STDOUT, cwd=REPO)
    spent = time.time() - t0
    if rc == 3:
        open(os.path.join(d, "DIVERGED"), "w").write("exit code 3 (NaN/Inf)\n")
        log(f"{name}: diverged after {spent:.0f} s")
        return math.inf, spent
    if rc != 0:
        tail = open(os.path.join(d, "train.log")).read().splitlines()[-5:]
        raise SystemExit(f"[comparison] {name}: onestep exited {rc}:\n  " + "\n  ".join(tail))
    v = final_val(read_metrics(os.path.join(d, "metrics.jsonl")), s.steps)
    if v is None:
        raise SystemExit(f"[comparison] {name}: finished without a final val_loss in metrics.jsonl")
    if not s.args.keep_checkpoints:
        shutil.rmtree(os.path.join(d, "checkpoints"), ignore_errors=True)
    log(f"{name}: val_loss {v:.4f} in {spent:.0f} s")
    return v, spent


def snapshot_binary(s, grid, dry):
    """The group's private copy of the binary (see --onestep); records its sha256 in grid.json."""
    with open(s.args.onestep, "rb") as f:
        sha = hashlib.sha256(f.read()).hexdigest()
    have = grid.get("binary_sha256")
    path = os.path.join(s.group_dir, ".bin", f"onestep-{have[:12]}") if have else None
    if have and os.path.exists(path) and not s.args.fresh_binary:
        if have != sha:
            log(f"build/onestep changed since this group started; the group keeps its snapshot {path} "
                "(--fresh-binary to switch)")
        s.binary = path
        return
    path = os.path.join(s.group_dir, ".bin", f"onestep-{sha[:12]}")
    if dry:
        s.binary = s.args.onestep
        return
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if not os.path.exists(path):
        shutil.copy2(s.args.onestep, path + ".tmp")
        os.replace(path + ".tmp", path)
    grid["binary_sha256"] = sha
    s.binary = path


def probe_per_stage(s):
    """Whether this binary runs delay.emulate=per_stage (one step of a 2-stage tiny run on the group's data)."""
    tmp = os.path.join(s.group_dir, ".probe")
    shutil.rmtree(tmp, ignore_errors=True)
    sets = dict(s.extra)
    sets.update(MODE_SETS["emulate"]["async_ps"])
    sets.update({"pipeline.stages": "2", "train.steps": "1", "train.eval_tokens": "256", "train.eval_every": "0",
                 "train.ckpt_every": "0", "train.threads": str(s.args.threads), "optim.name": "adamw",
                 "optim.lr": "0.001"})
    cmd = [s.binary, "train", "--config", os.path.join(s.group_dir, "base.toml")]
    for k, v in sets.items():
        cmd += ["--set", f"{k}={v}"]
    r = subprocess.run(cmd + ["--out", tmp], capture_output=True, text=True, cwd=REPO)
    shutil.rmtree(tmp, ignore_errors=True)
    return r.returncode == 0


def main(argv):
    s = parse_args(argv)
    a = s.args
    if not os.path.exists(a.onestep):
        raise SystemExit(f"[comparison] {a.onestep} not found: build first (cmake --build build)")
    if a.corpus == "prose" and not os.path.exists(os.path.join(REPO, "data/prose/shards/train_000.bin")):
        raise SystemExit("[comparison] the prose corpus is missing: run experiments/build_prose.sh")
    grid = load_grid(s)
    if grid and grid.get("steps") not in (None, s.steps):
        raise SystemExit(f"[comparison] {s.group_dir}/grid.json is for {grid.get('steps')} steps")
    tokens, _ = model_numbers(s)
    s.sweep_seed = grid.get("sweep_seed", s.seeds[0])  # a group keeps the seed its sweep was run with
    grid["sweep_seed"] = s.sweep_seed
    grid.update({"group": s.group, "config": os.path.relpath(s.config, REPO), "preset": a.preset,
                 "corpus": a.corpus, "steps": s.steps, "tokens_per_step": tokens,
                 "seeds": list(dict.fromkeys(grid.get("seeds", []) + s.seeds)),
                 "modes": [m for m in MODES + EXTRA_MODES if m in grid.get("modes", []) + s.modes],
                 "lr_factors": s.factors, "async_impl": a.async_impl, "threads": a.threads,
                 "extra_sets": s.extra, "eval_every": s.eval_every, "tag": a.tag})
    grid["optimizers"] = sorted(set(grid.get("optimizers", [])) | set(s.optimizers),
                                key=ALL_OPTIMIZERS.index)
    if "async_ps" in s.modes:
        grid["ps_stages"] = a.ps_stages
    grid.setdefault("sweep", {})
    grid.setdefault("chosen_lr", {})
    for opt, lr in s.fixed_lr.items():
        grid["chosen_lr"][opt] = lr
        grid.setdefault("fixed_lr", {})[opt] = lr
    for opt in s.optimizers:  # swept in this invocation: an earlier --lr / --default-lr no longer applies
        if opt not in s.fixed_lr:
            grid.get("fixed_lr", {}).pop(opt, None)
            if opt in grid.get("untuned_lr", []):
                grid["untuned_lr"].remove(opt)
    if s.untuned:  # optimizers run at the binary's default lr, no sweep (report.py marks them "lr not tuned")
        grid["untuned_lr"] = sorted(set(grid.get("untuned_lr", [])) | set(s.untuned), key=ALL_OPTIMIZERS.index)

    total, todo = print_estimate(s, grid)
    if a.budget is not None and total > a.budget * 60 and not a.force:
        raise SystemExit(f"[comparison] the estimate ({total / 60:.1f} min) exceeds --budget {a.budget:g} min: "
                         "use fewer --steps, optimizers or seeds, or --force")
    if a.dry_run:
        snapshot_binary(s, grid, dry=True)
        for kind, opt, mode, lr, seed in plan(s, grid):
            run_cell(s, kind, opt, mode, lr, seed, dry=True)
        return 0
    os.makedirs(s.group_dir, exist_ok=True)
    write_base_config(s.config, os.path.join(s.group_dir, "base.toml"))
    snapshot_binary(s, grid, dry=False)
    if "per_stage_supported" not in grid or a.fresh_binary:
        grid["per_stage_supported"] = probe_per_stage(s)
    save_grid(s, grid)

    spent = 0.0
    t_start = time.time()
    def over_budget():
        return a.budget is not None and spent >= a.budget * 60
    stopped = False
    for opt in s.optimizers:
        # 1. the sync lr sweep (seed = first seed), unless an lr was given
        if opt not in s.fixed_lr:
            results = {}
            for f in s.factors:
                lr = base_lr(opt, s) * f
                if over_budget() and cell_status(s, cell_name(opt, "sync", lr, s.sweep_seed))[0] != "done":
                    stopped = True
                    break
                v, dt = run_cell(s, "sweep", opt, "sync", lr, s.sweep_seed, dry=False)
                spent += dt
                results[fmt_lr(lr)] = v
            grid["sweep"][opt] = {k: (None if v is None or math.isinf(v) else v) for k, v in results.items()}
            if stopped:
                save_grid(s, grid)
                break
            finite = {k: v for k, v in results.items() if v is not None and not math.isinf(v)}
            if not finite:
                log(f"{opt}: every sweep run diverged; skipped")
                continue
            best = min(finite, key=finite.get)
            grid["chosen_lr"][opt] = float(best)
            lrs = sorted(float(k) for k in results)
            grid.setdefault("chosen_at_edge", {})[opt] = float(best) in (lrs[0], lrs[-1]) and len(lrs) > 1
            save_grid(s, grid)
            log(f"{opt}: sweep {', '.join(f'lr {k}: {v:.4f}' for k, v in finite.items())} -> lr {best}")
        lr = grid["chosen_lr"][opt]
        # 2. every mode and seed at that lr
        for seed in s.seeds:
            for mode in s.modes:
                if over_budget() and cell_status(s, cell_name(opt, mode, lr, seed))[0] != "done":
                    stopped = True
                    break
                _, dt = run_cell(s, "main", opt, mode, lr, seed, dry=False)
                spent += dt
            if stopped:
                break
        if stopped:
            break
    grid["last_invocation_s"] = time.time() - t_start
    save_grid(s, grid)
    if stopped:
        log(f"budget of {a.budget:g} min spent ({spent / 60:.1f} min); rerun to continue where it stopped")
        return 4
    log(f"all cells of {s.group} done; this invocation ran {spent / 60:.1f} min of training")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
