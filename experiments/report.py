#!/usr/bin/env python3
"""Writes experiments/RESULTS.md (and loss-curve PNGs in experiments/plots/) from the runs of run_comparison.py.

Reads RUNS/<group>/grid.json and RUNS/<group>/<cell>/metrics.jsonl for every group (or those named with
--groups), and PAPER.md's Table 1-2 (looked for in ../shared/PAPER.md and shared/PAPER.md beside the repo, or
--paper). Every number and every sentence comparing with the paper is generated from those files.
Groups tagged `horizon` (run_comparison.py --tag horizon, same settings, different --steps) are not given sections of
their own: they make the "Horizon study" section (gap and EF effect against tokens seen, plots/horizon_gap.png).
Python 3 standard library only; the plots need gnuplot (with the pngcairo terminal) and are skipped without it.

    experiments/report.py [--runs-dir experiments/runs] [--groups G1,G2] [--out experiments/RESULTS.md]
                          [--plots experiments/plots] [--paper PATH]
"""
import argparse
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from run_comparison import ALL_OPTIMIZERS, CORPORA, MODES, PRESETS, read_metrics, compute_seconds  # noqa: E402

NAMES = {"adamw": "AdamW", "muon": "Muon", "normuon": "NorMuon", "adan": "Adan", "lion": "Lion", "mars": "MARS",
         "soap": "SOAP", "sgd": "SGD"}
MODE_LABEL = {"sync": "sync", "async": "async (2BW, 1-step delay)", "async_ef": "async + EF",
              "async_ps": "async per-stage (PipeDream)", "async_wp": "async + weight prediction",
              "async_dc": "async + DC-ASGD"}
ALL_MODES = ("sync", "async", "async_ef", "async_ps", "async_wp", "async_dc")
CORRECTIONS = (("async_ef", "+ EF"), ("async_wp", "+ weight prediction"), ("async_dc", "+ DC-ASGD"))
CELL_RE = re.compile(r"^([a-z]+)-(sync|async|async_ef|async_ps|async_wp|async_dc)-lr([0-9.e+-]+)-s(\d+)$")


# ---------------------------------------------------------------- small helpers
def mean(xs):
    return sum(xs) / len(xs) if xs else None


def std(xs):
    if len(xs) < 2:
        return None
    m = mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def f4(x, sign=False):
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:+.4f}" if sign else f"{x:.4f}"


def pm(xs, sign=False):
    """'mean ± sample std (n)' of a list of values."""
    if not xs:
        return "–"
    s = std(xs)
    return f4(mean(xs), sign) + (f" ± {s:.4f}" if s is not None else "")


def pct(x):
    return "–" if x is None else f"{100 * x:.0f}%"


def fmt_time(s):
    return f"{s / 60:.1f} min" if s >= 90 else f"{s:.0f} s"


def times(x):
    return f"{x:.1f}" if x < 10 else f"{x:.0f}"


def fmt_count(n):
    """204800 -> '205K', 3276800 -> '3.28M'."""
    for div, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.3g}{unit}"
    return f"{n:g}"


# ---------------------------------------------------------------- inputs
def find_paper(path):
    cands = [path] if path else [os.path.join(REPO, "..", "shared", "PAPER.md"), os.path.join(REPO, "shared", "PAPER.md"),
                                 os.path.join(REPO, "PAPER.md")]
    for c in cands:
        if c and os.path.exists(c):
            return c
    return None


def parse_paper(path):
    """PAPER.md §5's Table 1-2: {optimizer: {sync, async, gap, ef, share}} (None where the paper has '–')."""
    table, in_table = {}, False
    if not path:
        return table
    with open(path, encoding="utf-8") as f:
        for line in f:
            if "Table 1" in line:
                in_table = True
                continue
            if not in_table:
                continue
            if not line.startswith("|"):
                if table:
                    break
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            key = cells[0].lower()
            if key not in ALL_OPTIMIZERS or len(cells) < 6:
                continue
            def num(c):
                c = c.replace("%", "").replace("+", "")
                try:
                    return float(c)
                except ValueError:
                    return None
            share = num(cells[5])
            table[key] = {"sync": num(cells[1]), "async": num(cells[2]), "gap": num(cells[3]), "ef": num(cells[4]),
                          "share": share / 100 if share is not None else None}
    return table


def paper_tokens_per_param(path):
    """The paper's training length in tokens per parameter (its setup line), or None."""
    if not path:
        return None
    with open(path, encoding="utf-8") as f:
        m = re.search(r"(\d+(?:\.\d+)?) tokens per parameter", f.read())
    return float(m.group(1)) if m else None


def model_params(cfg):
    m = cfg.get("model", {})
    V, d, L = m.get("vocab_size", 0), m.get("d_model", 0), m.get("n_layers", 0)
    h, kv, ffn = m.get("n_heads", 1), m.get("n_kv_heads", 1), m.get("ffn_hidden", 0)
    kv_dim = d * kv // h
    per_layer = 2 * d * d + 2 * d * kv_dim + 3 * d * ffn + 2 * d
    n = V * d + L * per_layer + d
    if not m.get("tie_embeddings", True):
        n += V * d
    return n


def read_simple_toml(path):
    """Enough TOML for onestep's resolved config.toml: sections of scalar keys."""
    out, sec = {}, None
    if not os.path.exists(path):
        return out
    with open(path) as f:
        for line in f:
            s = line.split("#", 1)[0].strip()
            m = re.match(r"^\[(.+)\]$", s)
            if m:
                sec = out.setdefault(m.group(1).strip(), {})
                continue
            m = re.match(r"^([A-Za-z0-9_]+)\s*=\s*(.+)$", s)
            if m and sec is not None:
                v = m.group(2).strip()
                if v[:1] in "'\"":
                    val = v[1:-1]
                elif v in ("true", "false"):
                    val = v == "true"
                else:
                    try:
                        val = int(v)
                    except ValueError:
                        try:
                            val = float(v)
                        except ValueError:
                            val = v
                sec[m.group(1)] = val
    return out


class Run:
    def __init__(self, group_dir, name, steps):
        m = CELL_RE.match(name)
        self.name, self.opt, self.mode, self.lr, self.seed = name, m.group(1), m.group(2), float(m.group(3)), int(m.group(4))
        self.dir = os.path.join(group_dir, name)
        self.rows = read_metrics(os.path.join(self.dir, "metrics.jsonl"))
        self.diverged = os.path.exists(os.path.join(self.dir, "DIVERGED"))
        self.final = None
        for r in reversed(self.rows):
            if r.get("step") == steps and r.get("val_loss") is not None:
                self.final = float(r["val_loss"])
                break
        self.done = self.final is not None
        self.seconds = compute_seconds(self.rows)
        self.tokens = max((r.get("tokens") or 0 for r in self.rows), default=0)
        self.cfg = read_simple_toml(os.path.join(self.dir, "config.toml"))
        self.binary = None  # the binary that ran it: the first line of train.log is the runner's command
        try:
            with open(os.path.join(self.dir, "train.log"), errors="replace") as f:
                first = f.readline().split()
            if len(first) > 1 and first[0] == "$":
                self.binary = os.path.basename(first[1])
        except OSError:
            pass


class Group:
    def __init__(self, runs_dir, name):
        self.name, self.dir = name, os.path.join(runs_dir, name)
        with open(os.path.join(self.dir, "grid.json")) as f:
            self.grid = json.load(f)
        self.steps = self.grid["steps"]
        self.runs = [Run(self.dir, n, self.steps) for n in sorted(os.listdir(self.dir))
                     if CELL_RE.match(n) and os.path.isdir(os.path.join(self.dir, n))]
        self.optimizers = [o for o in ALL_OPTIMIZERS if o in self.grid.get("optimizers", [])
                           or any(r.opt == o for r in self.runs)]

    def chosen_lr(self, opt):
        return self.grid.get("chosen_lr", {}).get(opt)

    def cells(self, opt, mode):
        lr = self.chosen_lr(opt)
        return [r for r in self.runs if r.opt == opt and r.mode == mode and lr is not None
                and math.isclose(r.lr, lr, rel_tol=1e-6)]


# ---------------------------------------------------------------- analysis
def analyse(g, opt):
    """Seed-paired numbers for one optimizer in one group."""
    by = {m: {r.seed: r for r in g.cells(opt, m)} for m in ALL_MODES}
    fin = {m: {s: r.final for s, r in by[m].items() if r.done} for m in by}
    div = {m: sorted(s for s, r in by[m].items() if r.diverged) for m in by}
    a = {"fin": fin, "div": div, "lr": g.chosen_lr(opt)}
    seeds = sorted(set(fin["sync"]) & set(fin["async"]))
    a["gaps"] = [fin["async"][s] - fin["sync"][s] for s in seeds]
    seeds_ef = sorted(set(fin["sync"]) & set(fin["async"]) & set(fin["async_ef"]))
    a["ef_gaps"] = [fin["async_ef"][s] - fin["sync"][s] for s in seeds_ef]
    a["ef_gain"] = [fin["async"][s] - fin["async_ef"][s] for s in seeds_ef]
    ms = {m: mean(list(fin[m].values())) for m in fin}
    a["mean"] = ms
    a["gap"] = mean(a["gaps"])
    a["share"] = None
    if ms["sync"] is not None and ms["async"] is not None and ms["async_ef"] is not None and ms["async"] > ms["sync"]:
        a["share"] = (ms["async"] - ms["async_ef"]) / (ms["async"] - ms["sync"])
    # Is the gap beyond seed noise? The paired gaps' standard error (needs >= 2 seeds).
    sd = std(a["gaps"])
    a["gap_sem"] = sd / math.sqrt(len(a["gaps"])) if sd is not None else None
    a["gap_clear"] = (a["gap"] is not None and a["gap_sem"] is not None and a["gap"] > 0
                      and a["gap"] > 2 * a["gap_sem"])
    sd_sync = std(list(fin["sync"].values()))
    a["sync_sd"] = sd_sync
    # every correction against the same seeds' sync and async: share = (async - corrected) / (async - sync)
    a["corr"] = {}
    for m, _ in CORRECTIONS:
        sd = sorted(set(fin["sync"]) & set(fin["async"]) & set(fin[m]))
        c = {"seeds": sd, "sync": mean([fin["sync"][x] for x in sd]), "async": mean([fin["async"][x] for x in sd]),
             "val": mean([fin[m][x] for x in sd]), "share": None}
        if sd and c["async"] > c["sync"]:
            c["share"] = (c["async"] - c["val"]) / (c["async"] - c["sync"])
        a["corr"][m] = c
    # broken: a finished run whose final val_loss is above the loss of a uniform guess, ln(vocab)
    vocab = next((r.cfg.get("model", {}).get("vocab_size") for r in g.runs if r.opt == opt and r.cfg), None)
    a["ln_vocab"] = math.log(vocab) if vocab else None
    a["broken"] = {m: sorted(x for x, v in fin[m].items() if a["ln_vocab"] and v > a["ln_vocab"]) for m in fin}
    a["untuned"] = opt in g.grid.get("untuned_lr", [])
    return a


def judge_gap(a):
    if a["gap"] is None:
        return "not measured"
    n = len(a["gaps"])
    if a["gap_sem"] is None:
        return f"{f4(a['gap'], True)} (1 seed: no noise estimate)"
    if a["gap"] <= 0:
        return f"none: async is not worse than sync ({f4(a['gap'], True)} ± {a['gap_sem']:.4f} s.e., {n} seeds)"
    if a["gap_clear"]:
        return (f"{f4(a['gap'], True)}, {times(a['gap'] / a['gap_sem']) if a['gap_sem'] > 0 else 'many'} standard "
                f"errors above zero ({n} seeds): a clear delay penalty")
    return f"{f4(a['gap'], True)} ± {a['gap_sem']:.4f} s.e. ({n} seeds): within seed noise"


# ---------------------------------------------------------------- plots
def gnuplot_ok():
    exe = shutil.which("gnuplot")
    if not exe:
        return None
    try:
        out = subprocess.run([exe, "-e", "set terminal"], capture_output=True, text=True, timeout=30)
        if "pngcairo" not in (out.stdout + out.stderr):
            return None
    except (OSError, subprocess.SubprocessError):
        return None
    return exe


MODE_COLORS = {"sync": "#1f77b4", "async": "#d62728", "async_ef": "#2ca02c", "async_ps": "#9467bd",
               "async_wp": "#ff7f0e", "async_dc": "#8c564b"}
OPT_COLORS = {"adamw": "#d62728", "muon": "#1f77b4", "normuon": "#17becf", "adan": "#9467bd", "lion": "#ff7f0e",
              "mars": "#8c564b", "soap": "#2ca02c", "sgd": "#7f7f7f"}
PNG_TERMINAL = "set terminal pngcairo size {w},{h} font 'sans,10'"


def run_gnuplot(exe, script, png, tmp):
    """Runs a gnuplot script (written to tmp) that draws png; True when the PNG was made."""
    sp = os.path.join(tmp, os.path.splitext(os.path.basename(png))[0] + ".gp")
    with open(sp, "w") as f:
        f.write(script)
    r = subprocess.run([exe, sp], capture_output=True, text=True)
    if r.returncode == 0 and os.path.exists(png):
        return True
    print(f"report: gnuplot failed for {png}: {r.stderr.strip()[:300]}", file=sys.stderr)
    return False


def smooth(xs, k):
    out, acc, q = [], 0.0, []
    for x in xs:
        q.append(x)
        acc += x
        if len(q) > k:
            acc -= q.pop(0)
        out.append(acc / len(q))
    return out


def plot_group(g, plots_dir, exe):
    """One PNG per optimizer: seed-mean train loss (smoothed) and val loss for each mode; full run and the
    second half zoomed. Returns {opt: path}."""
    made = {}
    if not exe:
        return made
    os.makedirs(plots_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for opt in g.optimizers:
            series = []
            for mode in ALL_MODES:
                runs = [r for r in g.cells(opt, mode) if r.done]
                if not runs:
                    continue
                steps = sorted(set.intersection(*[{r["step"] for r in run.rows if r.get("train_loss") is not None}
                                                  for run in runs]))
                tl = {s: mean([next(x["train_loss"] for x in run.rows if x["step"] == s) for run in runs]) for s in steps}
                vsteps = sorted(set.intersection(*[{r["step"] for r in run.rows if r.get("val_loss") is not None}
                                                   for run in runs]))
                vl = {s: mean([next(x["val_loss"] for x in run.rows if x["step"] == s and x.get("val_loss") is not None)
                               for run in runs]) for s in vsteps}
                k = max(1, g.steps // 30)
                sm = dict(zip(steps, smooth([tl[s] for s in steps], k)))
                path = os.path.join(tmp, f"{opt}_{mode}.dat")
                with open(path, "w") as f:
                    for s in sorted(set(steps) | set(vsteps)):
                        f.write(f"{s} {sm.get(s, 'NaN')} {vl.get(s, 'NaN')}\n")
                label = f"{MODE_LABEL[mode]} ({len(runs)} seed{'s' if len(runs) > 1 else ''})"
                series.append((path, label, MODE_COLORS[mode]))
            if not series:
                continue
            png = os.path.join(plots_dir, f"{g.name}_{opt}.png")
            half = g.steps // 2
            plots_full = ", ".join(
                f"'{p}' using 1:2 with lines lw 1.5 lc rgb '{c}' title '{l} train', "
                f"'{p}' using 1:3 with linespoints pt 7 ps 0.8 lw 1 dt 2 lc rgb '{c}' title 'val'"
                for p, l, c in series)
            plots_zoom = ", ".join(
                f"'{p}' using 1:2 with lines lw 1.5 lc rgb '{c}' notitle, "
                f"'{p}' using 1:3 with linespoints pt 7 ps 0.8 lw 1 dt 2 lc rgb '{c}' notitle"
                for p, l, c in series)
            script = f"""
{PNG_TERMINAL.format(w=1200, h=480)}
set output '{png}'
set datafile missing 'NaN'
set multiplot layout 1,2 title '{NAMES[opt]} (lr {g.chosen_lr(opt):g}{", default, not tuned" if opt in g.grid.get("untuned_lr", []) else ""}), {g.name}: seed-mean loss (train smoothed over {max(1, g.steps // 30)} steps)'
set xlabel 'step'; set ylabel 'loss'; set grid; set key top right
plot {plots_full}
set title 'second half (zoom)'; set xrange [{half}:{g.steps}]; set autoscale y
plot {plots_zoom}
unset multiplot
"""
            if run_gnuplot(exe, script, png, tmp):
                made[opt] = png
    return made


# ---------------------------------------------------------------- the document
def mode_cell(a, m):
    """A table cell for mode m of analyse()'s result: mean ± std over seeds, with diverged / broken marks."""
    s = pm(list(a["fin"][m].values())) if a["fin"][m] or not a["div"][m] else "diverged"
    if a["div"][m]:
        s += f" (diverged: seed {', '.join(map(str, a['div'][m]))})"
    if a["broken"][m]:
        s += f" (broken: above ln {round(math.exp(a['ln_vocab']))} = {a['ln_vocab']:.3f})"
    if not a["fin"][m] and not a["div"][m]:
        s = "not run"
    return s


def group_section(g, paper, plots, out_dir, lines, per_stage_note):
    grid = g.grid
    done = [r for r in g.runs if r.done]
    cfg = (done[0] if done else (g.runs[0] if g.runs else None))
    cfg = cfg.cfg if cfg else {}
    model, train = cfg.get("model", {}), cfg.get("train", {})
    batch = train.get("micro_batch_size", 0) * train.get("micro_batches", 0) * model.get("seq_len", 0)
    tokens = max((r.tokens for r in done), default=0)
    total_s = sum(r.seconds for r in g.runs)
    lines.append(f"## Group `{g.name}`\n")
    seeds = grid.get("seeds", [])
    lines.append(f"- Model: preset `{model.get('preset', grid.get('preset'))}`, {model_params(cfg) / 1e6:.2f}M parameters "
                 f"(d_model {model.get('d_model')}, {model.get('n_layers')} layers, {model.get('n_heads')} heads, "
                 f"ffn {model.get('ffn_hidden')}, vocab {model.get('vocab_size')}, seq {model.get('seq_len')}, "
                 f"tied embeddings: {str(model.get('tie_embeddings', True)).lower()}).")
    lines.append(f"- Data: corpus `{grid.get('corpus')}` (train `{cfg.get('data', {}).get('train')}`, "
                 f"val `{cfg.get('data', {}).get('val')}`).")
    lines.append(f"- Batch: {train.get('micro_batches')} micro-batches x {train.get('micro_batch_size')} sequences "
                 f"x {model.get('seq_len')} tokens = {batch} tokens per optimizer step; {g.steps} steps; "
                 f"{tokens} tokens seen per run; val_loss on {train.get('eval_tokens')} validation tokens.")
    extra = {k: v for k, v in grid.get("extra_sets", {}).items()}
    lines.append(f"- Schedule: cosine, warm-up {cfg.get('optim', {}).get('warmup_frac')} of the steps, decay to "
                 f"{cfg.get('optim', {}).get('min_lr_frac')} of peak; weight decay {cfg.get('optim', {}).get('weight_decay')}, "
                 f"clip {cfg.get('optim', {}).get('clip')}. Async = "
                 f"{'the one-device 2BW delay emulator (delay.emulate=one_step)' if grid.get('async_impl') == 'emulate' else 'a real 2-stage in-process PipeDream-2BW pipeline'}"
                 f"; EF coefficient 1.0. Seeds: {', '.join(str(s) for s in seeds)}. "
                 f"{train.get('threads')} thread(s) per run." + (f" Extra settings: `{extra}`." if extra else ""))
    bins = {}
    for r in done:
        bins.setdefault(r.binary or "unknown", []).append(r)
    bin_txt = ""
    if len(bins) > 1:
        bin_txt = " Binaries (from each run's train.log): " + "; ".join(
            f"`{b}` {len(rs)} run(s) (" + ", ".join(sorted({f'{NAMES[r.opt]} {r.mode}' for r in rs})) + ")"
            for b, rs in sorted(bins.items())) + "."
    lines.append(f"- Compute: {len(done)} finished run(s) of {len(g.runs)}, {fmt_time(total_s)} of training in all "
                 f"(from elapsed_s).{bin_txt}\n")

    # main table
    lines.append("| optimizer | lr | sync | async | gap (async − sync) | async + EF | share of the gap closed | "
                 "seeds | compute per run |")
    lines.append("|---|---|---|---|---|---|---|---|---|")
    analyses = {}
    for opt in g.optimizers:
        a = analyse(g, opt)
        analyses[opt] = a
        per_run = [r.seconds for r in g.runs if r.opt == opt and r.done]
        n = max((len(a["fin"][m]) for m in ("sync", "async", "async_ef")), default=0)
        lr_txt = f"{a['lr']:g}" + (" (lr not tuned (default))" if a["untuned"] else "") if a["lr"] is not None else "–"
        n_txt = f"{n}" + (" (1 seed: no noise estimate)" if n == 1 else "")
        lines.append(f"| {NAMES[opt]} | {lr_txt} | {mode_cell(a, 'sync')} | {mode_cell(a, 'async')} | {pm(a['gaps'], True)} | "
                     f"{mode_cell(a, 'async_ef')} | {pct(a['share'])} | {n_txt} | "
                     f"{fmt_time(mean(per_run)) if per_run else '–'} |" if a["lr"] is not None else
                     f"| {NAMES[opt]} | – | not run | not run | – | not run | – | 0 | – |")
    lines.append("")
    lines.append("Values are final validation losses, mean ± sample standard deviation over seeds; the gap is paired by "
                 "seed; the share closed is (async − async+EF) / (async − sync) of the seed means (– where there is "
                 "no positive gap). Rows marked \"1 seed\" have a single run per cell (no seed spread); \"lr not tuned (default)\" = the optimizer's default lr, no sweep.")
    if any(analyses[o]["fin"]["async_ps"] for o in analyses):
        P = grid.get("ps_stages")
        parts = []
        for o in analyses:
            ps = analyses[o]["fin"]["async_ps"]
            if not ps:
                continue
            sd = sorted(ps)
            def on(m):
                v = [analyses[o]["fin"][m][x] for x in sd if x in analyses[o]["fin"][m]]
                return f4(mean(v)) if len(v) == len(sd) else "–"
            parts.append(f"{NAMES[o]} {pm(list(ps.values()))} (seed {', '.join(map(str, sd))}; same seeds: sync "
                         f"{on('sync')}, 2BW async {on('async')})")
        stages = (f"{P} stages, stage s delayed by {P}-1-s steps, i.e. " + "/".join(str(P - 1 - i) for i in range(P))
                  if P else "per-stage delays")
        lines.append(f"Per-stage delay (original PipeDream, `delay.emulate=per_stage`, {stages}): " + "; ".join(parts) + ".")
    else:
        lines.append(f"Per-stage delay (original PipeDream, `delay.emulate=per_stage`): {per_stage_note}.")
    lines.append("")

    # corrections table: every optimizer with a weight-prediction or DC-ASGD run
    corr_opts = [o for o in analyses if analyses[o]["fin"]["async_wp"] or analyses[o]["fin"]["async_dc"]
                 or analyses[o]["div"]["async_wp"] or analyses[o]["div"]["async_dc"]]
    if corr_opts:
        lines.append("Delay corrections (one-step delay; `delay.correction=ef` with c = 1, `weight_prediction`, "
                     f"`dc_asgd` with dc_lambda {cfg.get('delay', {}).get('dc_lambda', 0.1)}; same lr as sync):\n")
        lines.append("| optimizer | lr | sync | async | async + EF | async + weight prediction | async + DC-ASGD | "
                     "share closed: EF | share closed: weight prediction | share closed: DC-ASGD | seeds |")
        lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
        for o in corr_opts:
            a = analyses[o]
            def v(m):
                if a["div"][m] and not a["fin"][m]:
                    return "diverged"
                return pm(list(a["fin"][m].values())) if a["fin"][m] else "not run"
            # shares on the seeds every correction that ran has (so the three are comparable), else on each one's own
            ran = [set(a["corr"][m]["seeds"]) for m, _ in CORRECTIONS if a["corr"][m]["seeds"]]
            common = sorted(set.intersection(*ran)) if ran else []
            def sh(m):
                c = a["corr"][m]
                sd = common if common else c["seeds"]
                if not c["seeds"]:
                    return "–"
                f = a["fin"]
                y, x0 = mean([f["async"][x] for x in sd]), mean([f["sync"][x] for x in sd])
                share = (y - mean([f[m][x] for x in sd])) / (y - x0) if y > x0 else None
                return pct(share) + f" (seed{'s' if len(sd) > 1 else ''} {', '.join(map(str, sd))})"
            seeds_txt = "; ".join(f"{lbl.strip('+ ')}: {len(a['fin'][m])}" for m, lbl in CORRECTIONS)
            lines.append(f"| {NAMES[o]} | {a['lr']:g} | {v('sync')} | {v('async')} | {v('async_ef')} | {v('async_wp')} | "
                         f"{v('async_dc')} | {sh('async_ef')} | {sh('async_wp')} | {sh('async_dc')} | "
                         f"sync {len(a['fin']['sync'])}, async {len(a['fin']['async'])}, {seeds_txt} |")
        lines.append("")
        lines.append("Each share is (async − corrected) / (async − sync), computed on the seeds that every correction "
                     "that ran has (named in the cell; so the shares of one row are comparable), against the same seeds' sync and async runs; above 100% = better than "
                     "sync, below 0% = worse than uncorrected async. Loss values are means ± sample std over the seeds "
                     "each cell ran.\n")

    # sweep
    sweep = grid.get("sweep", {})
    if sweep or grid.get("fixed_lr"):
        lines.append("Learning-rate choice (sync, seed " + str(grid.get("sweep_seed", seeds[0] if seeds else "?")) + ", final val_loss):\n")
        for opt in g.optimizers:
            if opt in grid.get("untuned_lr", []):
                ulr = grid.get("fixed_lr", {}).get(opt, g.chosen_lr(opt))
                if ulr is not None:
                    lines.append(f"- {NAMES[opt]}: lr {ulr:g}, the optimizer's default: lr not tuned (default), no sweep.")
                continue
            if opt in grid.get("fixed_lr", {}):
                lines.append(f"- {NAMES[opt]}: lr {grid['fixed_lr'][opt]:g} given (no sweep).")
                continue
            sw = sweep.get(opt)
            if not sw:
                continue
            pts = sorted(((float(k), v) for k, v in sw.items()), key=lambda t: t[0])
            edge = grid.get("chosen_at_edge", {}).get(opt)
            lines.append(f"- {NAMES[opt]}: " + ", ".join(f"{k:g} → {f4(v) if v is not None else 'diverged'}" for k, v in pts)
                         + f"; chosen {g.chosen_lr(opt):g}"
                         + (" (at the edge of the sweep: the optimum may lie beyond it)" if edge else "") + ".")
        lines.append("")

    # plots
    for opt in g.optimizers:
        if opt in plots:
            rel = os.path.relpath(plots[opt], out_dir)
            lines.append(f"![{NAMES[opt]} loss curves, {g.name}]({rel})")
    if plots:
        lines.append("")
    return analyses


def findings(g, analyses, paper, lines):
    """The generated comparison with the paper for one group."""
    out = []
    for opt, a in analyses.items():
        if a["gap"] is None:
            continue
        p = paper.get(opt)
        s = f"{NAMES[opt]}: the delay gap is {judge_gap(a)}"
        if p and p.get("gap") is not None:
            s += f"; the paper's is +{p['gap']:.3f} at 360M"
        out.append(s + ".")
    # AdamW vs Muon (and any other pair with the paper's numbers)
    A, M = analyses.get("adamw"), analyses.get("muon")
    if A and M and A["gap"] is not None and M["gap"] is not None:
        pa, pmu = paper.get("adamw", {}), paper.get("muon", {})
        pr = (pa.get("gap") / pmu.get("gap")) if pa.get("gap") and pmu.get("gap") else None
        paper_txt = f" (paper: {times(pr)} times)" if pr else ""
        if M["gap"] > 0 and A["gap"] > 0:
            r = A["gap"] / M["gap"]
            s = f"The AdamW gap is {times(r)} times the Muon gap{paper_txt}"
            if pr:
                if r >= 2 and A["gap_clear"]:
                    s += ": agrees with the paper that AdamW suffers far more from the one-step delay than Muon"
                    if r < pr / 3:
                        s += ", though the ratio is smaller than the paper's"
                elif r > 1:
                    s += ": same direction as the paper (AdamW hurt more), but much less pronounced"
                else:
                    s += ": disagrees with the paper (AdamW is not hurt more than Muon here)"
            out.append(s + ".")
        elif A["gap"] > 0 >= M["gap"]:
            s = (f"Muon shows no delay penalty ({f4(M['gap'], True)}) while AdamW's gap is {f4(A['gap'], True)}"
                 + (" (beyond seed noise)" if A["gap_clear"] else " (within seed noise)"))
            s += (": agrees with the paper's finding that Muon is robust to the delay and AdamW is not" if A["gap_clear"]
                  else ": the direction matches the paper, but AdamW's gap is not clearly above noise")
            out.append(s + ".")
        elif M["gap"] > 0 >= A["gap"]:
            out.append(f"AdamW shows no delay penalty ({f4(A['gap'], True)}) while Muon's gap is {f4(M['gap'], True)}: "
                       "the opposite of the paper's ordering.")
        else:
            out.append(f"Neither AdamW ({f4(A['gap'], True)}) nor Muon ({f4(M['gap'], True)}) is hurt by the one-step "
                       f"delay at this scale{paper_txt.replace(' times)', ' times the Muon gap)') if pr else ''}: "
                       "the delay effect the paper reports does not show here.")
    # the gaps relative to the sync loss (absolute losses differ by scale, so compare relative penalties)
    rel = []
    for opt, a in analyses.items():
        p = paper.get(opt, {})
        if a["gap"] is None or not a["mean"]["sync"] or not p.get("gap") or not p.get("sync"):
            continue
        ours, theirs = a["gap"] / a["mean"]["sync"], p["gap"] / p["sync"]
        r = ours / theirs
        how = ("much larger here" if r >= 2 else "somewhat larger here" if r > 1.25 else
               "about the same" if r >= 0.8 else "smaller here")
        rel.append(f"{NAMES[opt]} {100 * ours:.1f}% (paper {100 * theirs:.1f}%: {how})")
    if rel:
        out.append("Relative to the sync loss, the delay penalty is " + "; ".join(rel) + ".")
    # per-stage delay against 2BW, same seeds
    for opt, a in analyses.items():
        ps = a["fin"]["async_ps"]
        seeds = [x for x in ps if x in a["fin"]["async"] and x in a["fin"]["sync"]]
        if not seeds:
            continue
        d = mean([ps[x] - a["fin"]["async"][x] for x in seeds])
        g = mean([ps[x] - a["fin"]["sync"][x] for x in seeds])
        noise = std(list(a["fin"]["async"].values()))
        out.append(f"{NAMES[opt]}, original PipeDream per-stage delay ({len(seeds)} seed{'s' if len(seeds) > 1 else ''}): "
                   f"{f4(g, True)} against sync, {f4(d, True)} against 2BW's one-step delay"
                   + (f" (within twice the seed spread of the 2BW runs, ±{noise:.4f}: no measurable difference)"
                      if noise is not None and abs(d) < 2 * noise else
                      " (worse than 2BW, as the paper reports for deep PipeDream pipelines)" if d > 0 else
                      " (not worse than 2BW here, unlike the paper's 16-stage finding)") + ".")
    # EF
    for opt, a in analyses.items():
        if not a["ef_gain"]:
            continue
        p = paper.get(opt, {})
        ptxt = f" (paper: {pct(p['share'])})" if p.get("share") is not None else ""
        gain = mean(a["ef_gain"])
        if a["share"] is not None and len(a["ef_gain"]) == 1:
            out.append(f"EF closes {pct(a['share'])} of the {NAMES[opt]} gap{ptxt} (1 seed, lr not tuned: "
                       "indicative only)." if a["untuned"] else
                       f"EF closes {pct(a['share'])} of the {NAMES[opt]} gap{ptxt} (1 seed: indicative only).")
            continue
        if a["share"] is not None and a["gap_clear"]:
            s = f"EF closes {pct(a['share'])} of the {NAMES[opt]} gap{ptxt}"
            if p.get("share") is not None:
                if 0.5 <= a["share"] <= 1.2 or abs(a["share"] - p["share"]) <= 0.25:
                    s += ", in line with the paper's 50–90% range" if 0.5 <= a["share"] <= 0.9 else ", close to the paper"
                elif a["share"] > 1.2:
                    s += ": more than the whole gap (EF beats sync here)"
                elif a["share"] < 0:
                    s += ": EF makes the delayed run worse, unlike the paper"
                else:
                    s += ": less than the paper's share"
            out.append(s + ".")
        else:
            verdict = "improves on" if gain > 0 else "is worse than"
            out.append(f"{NAMES[opt]}: EF {verdict} plain async by {abs(gain):.4f} on average (seed-paired)"
                       f"; with no clear gap to close, its share of the gap{ptxt} is not measurable here.")
    lines.append("What agrees with the paper and what does not (generated from the numbers above):\n")
    lines.extend(f"- {s}" for s in out)
    lines.append("")
    return out


# ---------------------------------------------------------------- horizon study (issue #4)
# Groups made by run_comparison.py with --tag horizon that differ only in --steps: <preset>-<corpus>-<steps>st-horizon.
HORIZON_RE = re.compile(r"^(.+)-(\d+)st-((?:.+-)?horizon)$")
HORIZON_BUDGETS, HORIZON_FACTOR = 3, 4  # the study: three token budgets, each 4x the previous


def horizon_family(name):
    """('tiny-prose', 'horizon') for a horizon group such as tiny-prose-400st-horizon; None for any other group."""
    m = HORIZON_RE.match(name)
    return (m.group(1), m.group(3)) if m else None


def horizon_missing(budgets):
    """The study's ladder (HORIZON_BUDGETS budgets, each HORIZON_FACTOR x the previous, from the smallest present)
    and the budgets of it not present; (None, None) when the present ones are not on such a ladder."""
    b = sorted(set(budgets))
    ladder = [b[0] * HORIZON_FACTOR ** i for i in range(HORIZON_BUDGETS)]
    if not set(b) <= set(ladder):
        return None, None
    return ladder, [x for x in ladder if x not in b]


def horizon_command(g, steps):
    """The run_comparison.py command line that makes (or completes) this family's group at `steps`, from g's grid."""
    gr = g.grid
    cmd = ["experiments/run_comparison.py", "--optimizers", ",".join(g.optimizers),
           "--seeds", ",".join(str(x) for x in gr.get("seeds", []))]
    untuned = gr.get("untuned_lr", [])
    given = {o: lr for o, lr in gr.get("fixed_lr", {}).items() if o not in untuned}
    if given:
        cmd += ["--lr", ",".join(f"{o}={lr:g}" for o, lr in given.items())]
    if untuned:
        cmd += ["--default-lr", ",".join(untuned)]
    if gr.get("lr_factors") and gr["lr_factors"] != [0.5, 1.0, 2.0] and len(given) + len(untuned) < len(g.optimizers):
        cmd += ["--lr-factors", ",".join(f"{x:g}" for x in gr["lr_factors"])]
    if gr.get("preset", "tiny") != "tiny":
        cmd += ["--preset", gr["preset"]]
    if gr.get("config") and gr["config"] != PRESETS.get(gr.get("preset", "tiny"), ("",))[0]:
        cmd += ["--config", gr["config"]]
    cmd += ["--corpus", gr.get("corpus", "default"), "--steps", str(steps)]
    if gr.get("modes") and gr["modes"] != MODES:
        cmd += ["--modes", ",".join(gr["modes"])]
    if "async_ps" in gr.get("modes", []) and gr.get("ps_stages", 4) != 4:
        cmd += ["--ps-stages", str(gr["ps_stages"])]
    if gr.get("async_impl", "emulate") != "emulate":
        cmd += ["--async-impl", gr["async_impl"]]
    if gr.get("threads", 1) != 1:
        cmd += ["--threads", str(gr["threads"])]
    implied = dict(PRESETS.get(gr.get("preset"), ("", {}))[1], **CORPORA.get(gr.get("corpus"), {}))
    for k, v in gr.get("extra_sets", {}).items():
        if implied.get(k) != v:
            cmd += ["--set", f"{k}={v}"]
    return " ".join(cmd + ["--tag", gr.get("tag") or horizon_family(g.name)[1]])


def horizon_rows(gs, opt):
    """One dict per budget (group, sorted by steps): analyse()'s numbers plus tokens seen and tokens per parameter,
    both from the finished runs (metrics.jsonl's tokens, config.toml's model)."""
    rows = []
    for g in gs:
        a = analyse(g, opt)
        done = [r for r in g.runs if r.opt == opt and r.done]
        tokens = max((r.tokens for r in done), default=0) or None
        params = model_params(done[0].cfg) if done and done[0].cfg.get("model") else None
        sync = a["mean"]["sync"]
        rows.append({"g": g, "steps": g.steps, "a": a, "tokens": tokens, "params": params,
                     "tpp": tokens / params if tokens and params else None,
                     "rel": a["gap"] / sync if a["gap"] is not None and sync else None,
                     "gap": a["gap"], "gap_sem": a["gap_sem"], "ef_gap": mean(a["ef_gaps"]),
                     "ef_sem": std(a["ef_gaps"]) / math.sqrt(len(a["ef_gaps"])) if len(a["ef_gaps"]) > 1 else None})
    return rows


def trend(vals):
    """How a sequence (at least two numbers, in budget order) moves: 'shrinks', 'grows' or 'is not monotone'."""
    d = [y - x for x, y in zip(vals, vals[1:])]
    if all(x < 0 for x in d):
        return "shrinks"
    if all(x > 0 for x in d):
        return "grows"
    return "is not monotone"


def plot_horizon(family, rows_by_opt, png, exe):
    """gap (async − sync, solid) and EF-corrected gap (async+EF − sync, dashed) against tokens seen (log x), one colour
    per optimizer; a second x axis in tokens per parameter. True when the PNG was made."""
    if not exe:
        return False
    os.makedirs(os.path.dirname(png), exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        series, all_rows = [], []
        for opt, rows in rows_by_opt.items():
            for key, sem, what, dt in (("gap", "gap_sem", "async − sync", 1), ("ef_gap", "ef_sem", "async+EF − sync", 2)):
                pts = [r for r in rows if r["tokens"] and r[key] is not None]
                if not pts:
                    continue
                path = os.path.join(tmp, f"{opt}_{key}.dat")
                with open(path, "w") as f:
                    for r in pts:
                        f.write(f"{r['tokens']} {r[key]} {r[sem] if r[sem] is not None else 0}\n")
                errs = all(r[sem] is not None for r in pts)
                style = "yerrorlines" if errs else "linespoints"
                series.append(f"'{path}' using 1:2{':3' if errs else ''} with {style} pt 7 ps 1 lw 2 dt {dt} "
                              f"lc rgb '{OPT_COLORS.get(opt, '#000000')}' title '{NAMES[opt]}: {what}"
                              f"{' (± s.e.)' if errs else ''}'")
                all_rows += pts
        if not series:
            return False
        lo, hi = min(r["tokens"] for r in all_rows), max(r["tokens"] for r in all_rows)
        params = next((r["params"] for r in all_rows if r["params"]), None)
        budgets = sorted({(r["tokens"], r["steps"]) for r in all_rows})
        xtics = ", ".join(f'"{fmt_count(t)}\\n{st} steps" {t}' for t, st in budgets)  # in double quotes gnuplot breaks the line
        x2tics = ", ".join(f"'{t / params:.3g}' {t / params}" for t, _ in budgets) if params else ""
        x2 = (f"set logscale x2; set x2range [{lo / 1.6 / params}:{hi * 1.6 / params}]; set x2tics nomirror ({x2tics})\n"
              f"set x2label 'tokens per parameter ({params / 1e6:.2f}M parameters)'\n" if params else "")
        script = f"""
{PNG_TERMINAL.format(w=900, h=560)}
set output '{png}'
set title 'Horizon study, {family[0]}-*st-{family[1]}: final val-loss gap against tokens seen'
set logscale x; set xrange [{lo / 1.6}:{hi * 1.6}]; set xtics nomirror ({xtics})
set xlabel 'tokens seen (log scale)' offset 0,-1; set bmargin 5; set ylabel 'final val-loss gap to sync'
{x2}set grid; set key top right
plot {", ".join(series)}, 0 with lines lc rgb '#808080' dt 3 notitle
"""
        return run_gnuplot(exe, script, png, tmp)


def horizon_section(hgroups, paper_path, plots_dir, out_dir, exe, lines):
    """'## Horizon study': per family of horizon groups (same preset, corpus and tag, different --steps), one table
    per optimizer with a row per budget, the gap plot, and generated sentences."""
    fams = {}
    for g in sorted(hgroups, key=lambda g: g.steps):
        fams.setdefault(horizon_family(g.name), []).append(g)
    lines.append("## Horizon study\n")
    lines.append(f"The sync/async gap and the EF effect at growing token budgets (issue #4: {HORIZON_BUDGETS} budgets, "
                 f"each {HORIZON_FACTOR}× the previous). Each budget is a separate group that differs only in its "
                 "`--steps`; these groups are reported only here, not as group sections of their own.\n")
    paper_tpp = paper_tokens_per_param(paper_path)
    for fam, gs in sorted(fams.items()):
        label = f"{fam[0]}-<steps>st-{fam[1]}"
        if len(fams) > 1:
            lines.append(f"### `{label}`\n")
        budgets = [g.steps for g in gs]
        lines.append("Groups: " + "; ".join(
            f"`{g.name}` ({sum(r.done for r in g.runs)} of {len(g.runs)} runs finished, "
            f"{fmt_time(sum(r.seconds for r in g.runs))})" for g in gs) + ".")
        ladder, missing = horizon_missing(budgets)
        if ladder is None:
            lines.append(f"The budgets present ({', '.join(map(str, budgets))} steps) are not {HORIZON_BUDGETS} budgets "
                         f"each {HORIZON_FACTOR}× the previous; all are reported.")
        elif missing:
            lines.append(f"Budgets present: {', '.join(map(str, budgets))} steps; missing: "
                         f"{', '.join(map(str, missing))} steps (not run yet; the ladder {' → '.join(map(str, ladder))} "
                         f"is assumed to start at the smallest budget present). To run them: "
                         + "; ".join(f"`{horizon_command(gs[-1], x)}`" for x in missing) + ".")
        opts = [o for o in ALL_OPTIMIZERS if any(o in g.optimizers for g in gs)]
        rows_by_opt = {o: horizon_rows(gs, o) for o in opts}
        # set-up, from the runs' config.toml and grid.json
        cfg = next((r.cfg for g in gs for r in g.runs if r.done and r.cfg.get("model")), {})
        lr_txt = []
        for o in opts:
            lrs = sorted({g.chosen_lr(o) for g in gs if g.chosen_lr(o) is not None})
            given = {o in g.grid.get("fixed_lr", {}) for g in gs if g.chosen_lr(o) is not None}
            if lrs:
                lr_txt.append(f"{NAMES[o]} {' / '.join(f'{x:g}' for x in lrs)}"
                              + (" (differs between budgets!)" if len(lrs) > 1 else "")
                              + (" (given, no sweep)" if given == {True} else " (from each budget's sync sweep)"
                                 if given == {False} else " (given at some budgets, swept at others)"))
        if cfg:
            m, o_ = cfg.get("model", {}), cfg.get("optim", {})
            lines.append(f"Set-up: preset `{m.get('preset', gs[0].grid.get('preset'))}`, {model_params(cfg) / 1e6:.2f}M "
                         f"parameters (vocab {m.get('vocab_size')}), corpus `{gs[0].grid.get('corpus')}`, "
                         f"{gs[0].grid.get('tokens_per_step')} tokens per step"
                         + (f"; lr {', '.join(lr_txt)}" if lr_txt else "") + ". Each budget is "
                         f"its own run with its own cosine schedule (warm-up {o_.get('warmup_frac')} of its steps, "
                         f"decay to {o_.get('min_lr_frac')} of peak), so a longer budget also decays later.")
        lines.append("")
        # the tables
        unfinished = []
        for o in opts:
            rows = rows_by_opt[o]
            lines.append(f"**{NAMES[o]}**\n")
            lines.append("| steps | tokens seen | tokens per parameter | sync | async | gap (async − sync) | gap / sync | "
                         "async + EF | EF gap (async+EF − sync) | share of the gap closed | seeds |")
            lines.append("|---|---|---|---|---|---|---|---|---|---|---|")
            for r in rows:
                a = r["a"]
                n, n_ef = len(a["gaps"]), len(a["ef_gaps"])
                seeds = (f"{n}" + (f" (EF {n_ef})" if n_ef != n else "") + (" (no noise estimate)" if n == 1 else "")
                         if n else "0")
                tpp = f"{r['tpp']:.3g}" if r["tpp"] else "–"
                rel = f"{100 * r['rel']:+.2f}%" if r["rel"] is not None else "–"
                lines.append(f"| {r['steps']} | {fmt_count(r['tokens']) if r['tokens'] else '–'} | {tpp} | "
                             f"{mode_cell(a, 'sync')} | {mode_cell(a, 'async')} | {pm(a['gaps'], True)} | {rel} | "
                             f"{mode_cell(a, 'async_ef')} | {pm(a['ef_gaps'], True)} | {pct(a['share'])} | {seeds} |")
                todo = [MODE_LABEL[m] for m in ("sync", "async", "async_ef") if m in r["g"].grid.get("modes", [])
                        and not a["fin"][m] and not a["div"][m]]
                if todo:
                    unfinished.append(f"{NAMES[o]} at {r['steps']} steps: {', '.join(todo)}")
            lines.append("")
        lines.append("Final validation losses, mean ± sample std over seeds; gaps paired by seed; gap / sync = the "
                     "gap relative to the sync loss; share closed = (async − async+EF) / (async − sync) of the seed "
                     "means (– where there is no positive gap). Tokens seen from the runs' metrics.jsonl.")
        if unfinished:
            lines.append("Not finished yet: " + "; ".join(unfinished) + ".")
        lines.append("Reproduce one budget: `" + horizon_command(gs[0], "STEPS") + "` with STEPS = "
                     + ", ".join(map(str, budgets)) + ".")
        lines.append("")
        # the plot
        png = os.path.join(plots_dir, "horizon_gap.png" if len(fams) == 1 else f"horizon_gap_{fam[0]}-{fam[1]}.png")
        if plot_horizon(fam, rows_by_opt, png, exe):
            lines.append(f"![val-loss gap against tokens seen, {label}]({os.path.relpath(png, out_dir)})\n")
        # generated sentences
        out = []
        for o in opts:
            rows = [r for r in rows_by_opt[o] if r["a"]["gap"] is not None and r["tokens"]]
            if not rows:
                out.append(f"{NAMES[o]}: no budget has both a finished sync and async run yet.")
                continue
            at = " → ".join(f"{f4(r['a']['gap'], True)} ({100 * r['rel']:+.2f}% of sync) at {r['steps']} steps "
                            f"({fmt_count(r['tokens'])} tokens" + (f", {r['tpp']:.3g} per parameter)" if r["tpp"] else ")")
                            for r in rows)
            if len(rows) == 1:
                out.append(f"{NAMES[o]}: the delay gap is {at}; one budget only, so no trend yet.")
                continue
            first, last = rows[0], rows[-1]
            g = [r["a"]["gap"] for r in rows]
            s = f"{NAMES[o]}: the delay gap {trend(g)} with tokens: {at}"
            if trend(g) == "is not monotone":
                s += f"; from the first to the last budget it {trend([g[0], g[-1]])}"
            if g[0] > 0 and g[-1] > 0 and last["tokens"] > first["tokens"]:
                per = (g[-1] / g[0]) ** (math.log(HORIZON_FACTOR) / math.log(last["tokens"] / first["tokens"]))
                s += f" (×{per:.2f} per {HORIZON_FACTOR}× tokens on average)"
            nonpos = [str(r["steps"]) for r in rows if r["a"]["gap"] <= 0]
            if nonpos:
                s += f"; no delay penalty (gap ≤ 0) at {', '.join(nonpos)} steps"
            rel = [r["rel"] for r in rows]
            tr, tg = trend(rel), trend(g)
            s += (f". Relative to the sync loss it {tr}" + (" too" if tr == tg and tr != "is not monotone" else "")
                  + f" ({100 * rel[0]:+.2f}% → {100 * rel[-1]:+.2f}%)")
            s1, s2 = first["a"]["gap_sem"], last["a"]["gap_sem"]
            if s1 is not None and s2 is not None and (s1 > 0 or s2 > 0):
                z = (g[-1] - g[0]) / math.sqrt(s1 ** 2 + s2 ** 2)
                s += (f". The change from {first['steps']} to {last['steps']} steps is {abs(z):.1f} standard errors: "
                      + ("beyond seed noise" if abs(z) > 2 else "within seed noise"))
            else:
                s += ". With 1 seed per budget there is no noise estimate: the trend is indicative only"
            out.append(s + ".")
        for o in opts:
            rows = [r for r in rows_by_opt[o] if r["a"]["ef_gaps"] and r["tokens"]]
            if not rows:
                continue
            shares = [(r["steps"], r["a"]["share"]) for r in rows]
            meas = [x for _, x in shares if x is not None]
            s = (f"{NAMES[o]}, EF: the share of the gap it closes is " + " → ".join(
                f"{pct(x) if x is not None else '– (no positive gap)'} at {st} steps" for st, x in shares))
            if len(meas) >= 2:
                spread = max(meas) - min(meas)
                if spread <= 0.15:
                    s += f": it holds (within {100 * spread:.0f} percentage points)"
                else:
                    tr = trend(meas)
                    s += (": it falls with tokens" if tr == "shrinks" else ": it rises with tokens"
                          if tr == "grows" else ": it varies") + f" ({pct(min(meas))} to {pct(max(meas))})"
            elif len(rows) > 1:
                s += ": too few budgets with a positive gap to tell whether its share holds"
            efg = [r["ef_gap"] for r in rows]
            s += (f"; the EF-corrected gap goes {' → '.join(f4(x, True) for x in efg)} ({trend(efg).replace('is ', '')})"
                  if len(efg) > 1 else f"; the EF-corrected gap is {f4(efg[0], True)}")
            out.append(s + ".")
        A, M = rows_by_opt.get("adamw"), rows_by_opt.get("muon")
        if A and M:
            ratios = [(ra["steps"], ra["a"]["gap"] / rm["a"]["gap"]) for ra, rm in zip(A, M)
                      if ra["a"]["gap"] is not None and rm["a"]["gap"] is not None and ra["a"]["gap"] > 0
                      and rm["a"]["gap"] > 0]
            if ratios:
                out.append("The AdamW gap is " + " / ".join(times(x) for _, x in ratios) + " times the Muon gap at "
                           + " / ".join(str(st) for st, _ in ratios) + " steps"
                           + (f" ({trend([x for _, x in ratios]).replace('is ', '')} with "
                              "tokens)." if len(ratios) > 1 else "."))
        tpp = [r["tpp"] for rows in rows_by_opt.values() for r in rows if r["tpp"]]
        if paper_tpp and tpp:
            out.append(f"The paper trains at {paper_tpp:g} tokens per parameter; the largest budget here reaches "
                       f"{max(tpp):.3g}" + (" (beyond the paper's)." if max(tpp) >= paper_tpp else
                                            f", {times(paper_tpp / max(tpp))} times less."))
        if out:
            lines.append("What the budgets show (generated from the numbers above):\n")
            lines.extend(f"- {x}" for x in out)
            lines.append("")


def paper_section(paper, groups_analyses, lines, paper_path):
    lines.append("## Side by side with the paper (Table 1–2, SmolLM2-360M, final validation loss)\n")
    if not paper:
        lines.append("PAPER.md was not found, so the paper's numbers are not shown.\n")
        return
    lines.append(f"Paper numbers read from `{os.path.relpath(paper_path, REPO) if paper_path.startswith(REPO) else os.path.basename(paper_path)}`; "
                 "ours are the seed means of each group. Absolute losses are not comparable (a 360M model on FineWeb-Edu "
                 "at 20 tokens per parameter against a ~1M model on a few MB of books); the gaps and shares are.\n")
    lines.append("| optimizer | source | sync | async | gap | async + EF | share closed |")
    lines.append("|---|---|---|---|---|---|---|")
    for opt in ALL_OPTIMIZERS:
        ours = [(gname, a[opt]) for gname, a in groups_analyses if opt in a and a[opt]["gap"] is not None]
        p = paper.get(opt)
        if not p and not ours:
            continue
        if p:
            lines.append(f"| {NAMES[opt]} | paper, 360M | {f4(p['sync'])[:-1]} | {f4(p['async'])[:-1]} | "
                         f"{'+%.3f' % p['gap'] if p['gap'] is not None else '–'} | "
                         f"{f4(p['ef'])[:-1] if p['ef'] is not None else '–'} | {pct(p['share'])} |")
        for gname, a in ours:
            m = a["mean"]
            tag = (f", {len(a['gaps'])} seed" + ("s" if len(a["gaps"]) > 1 else "")
                   + (", lr not tuned (default)" if a["untuned"] else ""))
            lines.append(f"| {NAMES[opt]} | ours, `{gname}`{tag} | {f4(m['sync'])} | {f4(m['async'])} | {f4(a['gap'], True)} | "
                         f"{f4(m['async_ef'])} | {pct(a['share'])} |")
    lines.append("")


def main(argv):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs-dir", default=os.path.join(REPO, "experiments", "runs"))
    ap.add_argument("--groups", default="", help="comma list of group names (default: all with a grid.json)")
    ap.add_argument("--out", default=os.path.join(REPO, "experiments", "RESULTS.md"))
    ap.add_argument("--plots", default=None, help="folder for the PNGs (default: plots/ beside --out)")
    ap.add_argument("--paper", default=None, help="PAPER.md (default: ../shared/PAPER.md or shared/PAPER.md)")
    a = ap.parse_args(argv)
    out_dir = os.path.dirname(os.path.abspath(a.out))
    plots_dir = a.plots or os.path.join(out_dir, "plots")
    if a.groups:
        names = [x for x in a.groups.split(",") if x]
    else:
        names = sorted(n for n in os.listdir(a.runs_dir) if os.path.exists(os.path.join(a.runs_dir, n, "grid.json"))) \
            if os.path.isdir(a.runs_dir) else []
    if not names:
        raise SystemExit(f"report: no run groups (grid.json) in {a.runs_dir}")
    groups = [Group(a.runs_dir, n) for n in names]
    hgroups = [g for g in groups if horizon_family(g.name)]  # reported in the horizon study only
    all_groups, groups = groups, [g for g in groups if not horizon_family(g.name)]
    # the group with the most finished runs first (the headline), the rest in name order
    groups.sort(key=lambda g: (-sum(r.done for r in g.runs), g.name))
    paper_path = find_paper(a.paper)
    paper = parse_paper(paper_path)
    exe = gnuplot_ok()

    lines = ["# onestep: sync vs async (PipeDream-2BW) vs async + EF at small scale", "",
             "Generated by `experiments/report.py` from the runs of `experiments/run_comparison.py`; do not edit by hand "
             "(rerun the report instead). Every number and every comparison sentence below comes from the runs' "
             "metrics.jsonl and PAPER.md.", ""]
    all_s = sum(r.seconds for g in all_groups for r in g.runs)
    n_done = sum(r.done for g in all_groups for r in g.runs)
    lines.append(f"Total: {n_done} finished runs in {len(all_groups)} group(s), {fmt_time(all_s)} of training compute "
                 "(sum of the runs' elapsed_s; one thread each, on a 2-core machine, at most two runs at a time).\n")
    groups_analyses, summary = [], []
    body = []
    for g in groups:
        plots = plot_group(g, plots_dir, exe)
        ps = g.grid.get("per_stage_supported")
        per_stage_note = ("not run (per_stage emulator missing)" if ps is False else
                          "not run in this group (the binary has the emulator: add `--modes sync,async,async_ef,async_ps`)"
                          if ps else "not run")
        an = group_section(g, paper, plots, out_dir, body, per_stage_note)
        summary.append((g.name, findings(g, an, paper, body)))
        groups_analyses.append((g.name, an))
    if not exe:
        body.append("(gnuplot with pngcairo was not found: no loss-curve plots.)\n")
    lines += body
    if hgroups:
        horizon_section(hgroups, paper_path, plots_dir, out_dir, exe, lines)
    paper_section(paper, groups_analyses, lines, paper_path or "")
    lines.append("## Notes\n")
    lines.append("- sync = plain single-device training; async = `delay.emulate=one_step` (the gradient of W(t-1) applied "
                 "to W(t), PipeDream-2BW's update, bit-identical to the 2-stage pipeline); async + EF = the same plus "
                 "`delay.correction=ef`, `ef_coef=1`; async + weight prediction / + DC-ASGD = the same delay with "
                 "`delay.correction=weight_prediction` / `delay.correction=dc_asgd` (modes async_wp / async_dc of the runner).")
    lines.append("- The learning rate is tuned per optimizer in sync mode only (a 3-point sweep) and reused unchanged for "
                 "the delayed runs, as in the paper. For Muon the sweep scales the Muon-group lr and the AdamW-group lr "
                 "together. Optimizers listed with \"lr not tuned (default)\" were run at the binary's default lr without a "
                 "sweep (`run_comparison.py --default-lr OPTS`).")
    lines.append("- Reproduce: `experiments/run_comparison.py --only-headline ...` (see each group's grid.json for its "
                 "exact settings), then `experiments/report.py`.")
    os.makedirs(out_dir, exist_ok=True)
    with open(a.out, "w", encoding="utf-8") as f:
        f.write("\n".join(lines).rstrip() + "\n")
    print(f"report: wrote {a.out}" + (f" and plots in {plots_dir}" if exe else " (no gnuplot: no plots)"))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
