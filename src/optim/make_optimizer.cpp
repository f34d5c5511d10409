#include "core/error.h"
#include "optim/adamw.h"
#include "optim/adan.h"
#include "optim/lion.h"
#include "optim/mars.h"
#include "optim/muon.h"
#include "optim/optim_names.h"
#include "optim/normuon.h"
#include "optim/optimizer.h"
#include "optim/sgd.h"
#include "optim/soap.h"

namespace onestep {

// Routing (weight decay everywhere: weight_decay for everything 2-D, none for norms, see decays()):
//   adamw, adan, lion, sgd: every parameter.
//   muon, normuon: ParamRole::matrix (2-D hidden matrices) to Muon / NorMuon; the embedding, head and norms
//     to AdamW with adamw_lr / adamw_beta1 / adamw_beta2 / adamw_eps.
//   mars: every 2-D parameter (matrices, embedding, head) to MARS; 1-D ones to AdamW with MARS's lr/betas/eps.
//   soap: ParamRole::matrix with both dimensions <= kSoapMaxDim to SOAP; the rest to AdamW with SOAP's
//     lr/betas/eps.
std::unique_ptr<Optimizer> make_optimizer(const OptimConfig& config, const ParamTable& table) {
  OptimConfig c = config;
  resolve_optim_defaults(c, "[optim]");  // idempotent: a resolved config passes through unchanged
  if (c.name == "adamw") {
    AdamWHyper h{c.lr, c.beta1, c.beta2, c.eps, c.weight_decay};
    return std::make_unique<AdamW>(table, h);
  }
  if (is_muon_family(c.name)) {
    MuonHyper m;
    m.lr = c.lr;
    m.momentum = c.momentum;
    m.nesterov = c.nesterov;
    m.ns_steps = c.ns_steps;
    m.adamw_rms_scale = c.muon_scale == "adamw_rms";
    m.weight_decay = c.weight_decay;
    AdamWHyper a{c.adamw_lr, c.adamw_beta1, c.adamw_beta2, c.adamw_eps, c.weight_decay};
    if (c.name == "muon") {
      m.eps = c.eps;
      return std::make_unique<Muon>(table, m, a);
    }
    NorMuonHyper n;
    n.muon = m;  // Newton–Schulz eps stays Muon's default 1e-7; eps is the row normalisation's
    n.beta2 = c.beta2;
    n.eps = c.eps;
    return std::make_unique<NorMuon>(table, n, a);
  }
  if (c.name == "adan") {
    AdanHyper h{c.lr, c.beta1, c.beta2, c.beta3, c.eps, c.weight_decay};
    return std::make_unique<Adan>(table, h);
  }
  if (c.name == "lion") {
    LionHyper h{c.lr, c.beta1, c.beta2, c.weight_decay};
    return std::make_unique<Lion>(table, h);
  }
  if (c.name == "mars") {
    MarsHyper h{c.lr, c.beta1, c.beta2, c.eps, c.gamma, c.weight_decay};
    return std::make_unique<Mars>(table, h);
  }
  if (c.name == "soap") {
    SoapHyper h{c.lr, c.beta1, c.beta2, c.eps, c.precond_freq, c.weight_decay};
    return std::make_unique<Soap>(table, h);
  }
  if (c.name == "sgd") {
    SgdHyper h{c.lr, c.momentum, c.nesterov, c.weight_decay};
    return std::make_unique<Sgd>(table, h);
  }
  internal_error("make_optimizer: no construction for optimizer '" + c.name + "'");
}

}  // namespace onestep
