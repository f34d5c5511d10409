#include "core/error.h"
#include "optim/adamw.h"
#include "optim/muon.h"
#include "optim/optimizer.h"

namespace onestep {

// Routing: an "adamw" run puts every parameter in one AdamW group. A "muon" run gives ParamRole::matrix
// (2-D hidden matrices) to Muon and the embedding, head and norms to AdamW with adamw_lr / adamw_beta1 /
// adamw_beta2 / adamw_eps. Weight decay: weight_decay for everything 2-D, none for norms (see decays()).
std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& config, const ParamTable& table) {
  OptimConfig c = config;
  resolve_optim_defaults(c, "[optim]");  // idempotent: a resolved config passes through unchanged
  if (c.name == "adamw") {
    AdamWHyper h{c.lr, c.beta1, c.beta2, c.eps, c.weight_decay};
    return std::make_unique<AdamW>(table, h);
  }
  if (c.name == "muon") {
    MuonHyper m;
    m.lr = c.lr;
    m.momentum = c.momentum;
    m.nesterov = c.nesterov;
    m.ns_steps = c.ns_steps;
    m.eps = c.eps;
    m.adamw_rms_scale = c.muon_scale == "adamw_rms";
    m.weight_decay = c.weight_decay;
    AdamWHyper a{c.adamw_lr, c.adamw_beta1, c.adamw_beta2, c.adamw_eps, c.weight_decay};
    return std::make_unique<Muon>(table, m, a);
  }
  internal_error("make_optimizer: no construction for optimizer '" + c.name + "'");
}

}  // namespace onestep
