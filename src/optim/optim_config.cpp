#include "optim/optim_config.h"

#include <algorithm>
#include <cmath>
#include <sstream>
#include <vector>

#include "core/error.h"
#include "optim/optim_names.h"

namespace onestep {

// The one list of optimizer names. A new optimizer is added here (implemented = false until it is), with its
// defaults in resolve_optim_defaults() and its construction in make_optimizer().
const std::vector<OptimName>& optim_names() {
  static const std::vector<OptimName> names = {
      {"adamw", true}, {"muon", true}, {"normuon", true}, {"adan", true},
      {"lion", true},  {"mars", true}, {"soap", true},    {"sgd", true},
  };
  return names;
}

static std::string join_names(bool implemented_only) {
  std::ostringstream os;
  bool first = true;
  for (const auto& n : optim_names()) {
    if (implemented_only && !n.implemented) continue;
    if (!first) os << ", ";
    os << n.name;
    first = false;
  }
  return os.str();
}

namespace {

std::string num(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

void fill(double& field, double value) {
  if (std::isnan(field)) field = value;
}

void check_positive(const std::string& where, const char* key, double v) {
  if (!(std::isfinite(v) && v > 0))
    bad_input(where, std::string("optim.") + key + ": must be a finite number > 0; got " + num(v));
}

void check_beta(const std::string& where, const char* key, double v) {
  if (!(v >= 0 && v < 1)) bad_input(where, std::string("optim.") + key + ": must be in [0, 1); got " + num(v));
}

void check_unit(const std::string& where, const char* key, double v) {
  if (!(v >= 0 && v <= 1)) bad_input(where, std::string("optim.") + key + ": must be in [0, 1]; got " + num(v));
}

void check_nonneg(const std::string& where, const char* key, double v) {
  if (!(std::isfinite(v) && v >= 0))
    bad_input(where, std::string("optim.") + key + ": must be a finite number >= 0; got " + num(v));
}

}  // namespace

// Defaults (PAPER.md §3). Fields an optimizer does not use stay NaN / -1 ("not applicable"). The betas are
// PAPER.md's; the learning rates other than AdamW's and Muon's are untuned starting points (the paper tunes
// lr per optimizer and does not give its values).
//   adamw:   lr 3e-3, beta1 0.9, beta2 0.95, eps 1e-8.
//   muon:    lr 0.02 (the Muon group), momentum 0.95 (Nesterov by default), eps 1e-7 (the Frobenius
//            normalisation X = q / (||q||_F + eps)), adamw_lr 3e-3 for the AdamW group (embedding, head,
//            norms) with adamw_beta1/adamw_beta2/adamw_eps (0.9, 0.95, 1e-8).
//   normuon: as muon (lr 0.02, momentum 0.95, adamw_lr 3e-3), beta2 0.95 for the per-row second moment,
//            eps 1e-8 in X / (sqrt(v_row) + eps) (the Newton-Schulz normalisation keeps Muon's 1e-7).
//   adan:    lr 3e-3, (beta1, beta2, beta3) = (0.98, 0.92, 0.99) in the PyTorch convention, eps 1e-8.
//   lion:    lr 3e-4, (beta1, beta2) = (0.9, 0.99).
//   mars:    lr 3e-3, (beta1, beta2) = (0.95, 0.99), eps 1e-8, gamma 0.025.
//   soap:    lr 3e-3, (beta1, beta2) = (0.95, 0.95), eps 1e-8, precond_freq 10.
//   sgd:     lr 0.1, momentum 0.9 (Nesterov by default).
void resolve_optim_defaults(OptimConfig& c, const std::string& where) {
  const OptimName* found = nullptr;
  for (const auto& n : optim_names())
    if (c.name == n.name) found = &n;
  if (!found) bad_input(where, "optim.name: expected one of " + join_names(false) + "; got '" + c.name + "'");
  if (!found->implemented)
    bad_input(where, "optim.name: '" + c.name + "' is not implemented yet; available: " + join_names(true));

  if (c.name == "adamw") {
    fill(c.lr, 3e-3);
    fill(c.beta1, 0.9);
    fill(c.beta2, 0.95);
    fill(c.eps, 1e-8);
  } else if (c.name == "muon") {
    fill(c.lr, 0.02);
    fill(c.momentum, 0.95);
    fill(c.eps, 1e-7);
    fill(c.adamw_lr, 3e-3);
  } else if (c.name == "normuon") {
    fill(c.lr, 0.02);
    fill(c.momentum, 0.95);
    fill(c.beta2, 0.95);
    fill(c.eps, 1e-8);
    fill(c.adamw_lr, 3e-3);
  } else if (c.name == "adan") {
    fill(c.lr, 3e-3);
    fill(c.beta1, 0.98);
    fill(c.beta2, 0.92);
    fill(c.beta3, 0.99);
    fill(c.eps, 1e-8);
  } else if (c.name == "lion") {
    fill(c.lr, 3e-4);
    fill(c.beta1, 0.9);
    fill(c.beta2, 0.99);
  } else if (c.name == "mars") {
    fill(c.lr, 3e-3);
    fill(c.beta1, 0.95);
    fill(c.beta2, 0.99);
    fill(c.eps, 1e-8);
    fill(c.gamma, 0.025);
  } else if (c.name == "soap") {
    fill(c.lr, 3e-3);
    fill(c.beta1, 0.95);
    fill(c.beta2, 0.95);
    fill(c.eps, 1e-8);
    if (c.precond_freq == -1) c.precond_freq = 10;
  } else if (c.name == "sgd") {
    fill(c.lr, 0.1);
    fill(c.momentum, 0.9);
  }

  // Validation: every message names its key.
  check_positive(where, "lr", c.lr);
  check_unit(where, "warmup_frac", c.warmup_frac);
  check_unit(where, "min_lr_frac", c.min_lr_frac);
  check_nonneg(where, "weight_decay", c.weight_decay);
  check_nonneg(where, "clip", c.clip);
  if (!std::isnan(c.beta1)) check_beta(where, "beta1", c.beta1);
  if (!std::isnan(c.beta2)) check_beta(where, "beta2", c.beta2);
  if (!std::isnan(c.beta3)) check_beta(where, "beta3", c.beta3);
  if (!std::isnan(c.momentum)) check_beta(where, "momentum", c.momentum);
  if (!std::isnan(c.eps)) check_positive(where, "eps", c.eps);
  if (c.name == "mars") check_nonneg(where, "gamma", c.gamma);
  if (c.name == "soap" && c.precond_freq < 1)
    bad_input(where, "optim.precond_freq: must be >= 1; got " + std::to_string(c.precond_freq));
  if (is_muon_family(c.name)) {
    if (c.ns_steps < 1) bad_input(where, "optim.ns_steps: must be >= 1; got " + std::to_string(c.ns_steps));
    if (c.muon_scale != "spectral" && c.muon_scale != "adamw_rms")
      bad_input(where, "optim.muon_scale: expected one of spectral, adamw_rms; got '" + c.muon_scale + "'");
    check_positive(where, "adamw_lr", c.adamw_lr);
    check_beta(where, "adamw_beta1", c.adamw_beta1);
    check_beta(where, "adamw_beta2", c.adamw_beta2);
    check_positive(where, "adamw_eps", c.adamw_eps);
  }
}

// Learning-rate multiplier, step 0-based, T = total_steps:
//   W = ceil(warmup_frac * T)   (warm-up steps; a 1e-9 guard keeps e.g. 0.1 * 30 at 3, not 4)
//   step <  W:  (step + 1) / W                                   -> exactly 1.0 at step W-1
//   step >= W:  p = min(1, (step - W) / max(1, T - W - 1))
//               min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + cos(pi * p))
//               -> 1.0 at step W, exactly min_lr_frac at step T-1 (and after).
// If W >= T the whole run is warm-up. T <= 0 gives 1.
double lr_scale_at(long step, long total_steps, double warmup_frac, double min_lr_frac) {
  if (total_steps <= 0) return 1.0;
  if (step < 0) step = 0;
  const long W = static_cast<long>(std::ceil(warmup_frac * static_cast<double>(total_steps) - 1e-9));
  if (step < W) return static_cast<double>(step + 1) / static_cast<double>(W);
  const long span = std::max(1L, total_steps - W - 1);
  double p = static_cast<double>(step - W) / static_cast<double>(span);
  if (p >= 1.0) return min_lr_frac;
  return min_lr_frac + (1.0 - min_lr_frac) * 0.5 * (1.0 + std::cos(M_PI * p));
}

}  // namespace onestep
