// Training plots drawn with gnuplot (Debian gnuplot-nox). Each plot leaves its data (*.dat) and script (*.gp)
// beside the PNG; the scripts use paths relative to their folder, so `cd DIR/plots && gnuplot loss.gp` redraws.
//
// Failure policy: plotting is a by-product of training and never stops it. Both functions return false and
// print one warning line to stderr ("warning: plots: ...") on any problem, and never throw for it: gnuplot
// missing or failing, a missing or unreadable metrics.jsonl, or a malformed line in it (the warning names
// the file and line, e.g. "runs/x/metrics.jsonl:7: ...").
#pragma once
#include <string>
#include <vector>

namespace onestep {

// Reads DIR/metrics.jsonl (one JSON object per line: step, tokens, train_loss, lr, grad_norm, tok_per_s,
// elapsed_s, optional val_loss, optional stage_idle_frac array; null values, as NaN is written, are skipped)
// and writes DIR/plots/loss.png (train loss vs step, val loss on the same axes), DIR/plots/lr.png (learning
// rate vs step) and DIR/plots/throughput.png (tokens/s vs step, and each stage's idle fraction on the right
// axis when present), with their .dat and .gp files. Uses the pngcairo terminal, png when that is missing.
bool write_plots(const std::string& run_dir);

// Several runs' train loss (lines) and val loss (points) on one plot against step; labels[i] names
// run_dirs[i]. Writes out_png and, beside it, its .dat and .gp (out_png with the extension replaced).
bool plot_loss_comparison(const std::vector<std::string>& run_dirs, const std::vector<std::string>& labels,
                          const std::string& out_png, const std::string& title);

}  // namespace onestep
