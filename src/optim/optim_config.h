// The [optim] section. Values left at NaN / -1 mean "this optimizer's own default" (PAPER.md §3) and are
// filled in by resolve_optim_defaults(), so the resolved config.toml always shows what was used.
#pragma once
#include <cmath>
#include <string>

namespace onestep {

struct OptimConfig {
  std::string name = "adamw";        // adamw muon normuon adan lion mars soap sgd
  double lr = NAN;                   // peak learning rate (Muon family: of the Muon group); adamw 3e-3, muon 0.02
  double warmup_frac = 0.1;          // linear warm-up over this fraction of the steps
  double min_lr_frac = 0.1;          // cosine decay to this fraction of the peak
  double weight_decay = 0.1;         // decoupled
  double clip = 1.0;                 // global grad-norm clipping; 0 turns it off
  double beta1 = NAN, beta2 = NAN, beta3 = NAN;  // adamw/adan/lion/mars/soap; normuon: beta2 (row moment)
  double eps = NAN;
  double momentum = NAN;             // Muon family / SGD (muon, normuon: 0.95; sgd: 0.9)
  bool nesterov = true;              // Muon family / SGD
  int ns_steps = 5;                  // Newton-Schulz iterations
  std::string muon_scale = "spectral";  // "spectral": sqrt(max(1, rows/cols)); "adamw_rms": 0.2 sqrt(max(rows, cols))
  double adamw_lr = NAN;             // the AdamW group's peak lr in Muon-family runs (default 3e-3, see resolve)
  double adamw_beta1 = 0.9, adamw_beta2 = 0.95, adamw_eps = 1e-8;  // AdamW group of Muon-family runs
  double gamma = NAN;                // MARS gradient-correction scale (default 0.025)
  int precond_freq = -1;             // SOAP eigenbasis refresh period in steps (default 10)
};

// Fills the NaN fields with the optimizer's defaults. Throws bad_input for an unknown name.
void resolve_optim_defaults(OptimConfig& c, const std::string& where);

// Learning-rate multiplier in [min_lr_frac, 1]: linear warm-up for warmup_frac * total steps, then cosine
// decay to min_lr_frac at the last step. step is 0-based.
double lr_scale_at(long step, long total_steps, double warmup_frac, double min_lr_frac);

}  // namespace onestep
