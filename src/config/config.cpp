#include "config/config.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <fstream>
#include <sstream>
#include <toml++/toml.h>
#include <variant>

#include "core/error.h"

namespace onestep {
namespace {

// One config key bound to the member it sets. The list below is the single source of truth for the
// key names, their types, parsing, and printing.
using FieldPtr = std::variant<int*, int64_t*, float*, double*, bool*, std::string*>;
struct Field {
  const char* section;
  const char* key;
  FieldPtr ptr;
};

std::vector<Field> fields_of(RunConfig& c) {
  ModelConfig& m = c.model;
  TrainConfig& t = c.train;
  OptimConfig& o = c.optim;
  return {
      {"model", "preset", &m.preset},           {"model", "vocab_size", &m.vocab_size},
      {"model", "d_model", &m.d_model},         {"model", "n_layers", &m.n_layers},
      {"model", "n_heads", &m.n_heads},         {"model", "n_kv_heads", &m.n_kv_heads},
      {"model", "ffn_hidden", &m.ffn_hidden},   {"model", "seq_len", &m.seq_len},
      {"model", "rope_theta", &m.rope_theta},   {"model", "norm_eps", &m.norm_eps},
      {"model", "tie_embeddings", &m.tie_embeddings},
      {"data", "train", &c.data.train},         {"data", "val", &c.data.val},
      {"data", "tokenizer", &c.data.tokenizer},
      {"train", "steps", &t.steps},             {"train", "micro_batch_size", &t.micro_batch_size},
      {"train", "micro_batches", &t.micro_batches}, {"train", "seed", &t.seed},
      {"train", "eval_every", &t.eval_every},   {"train", "eval_tokens", &t.eval_tokens},
      {"train", "ckpt_every", &t.ckpt_every},   {"train", "keep_ckpts", &t.keep_ckpts},
      {"train", "log_every", &t.log_every},     {"train", "threads", &t.threads},
      {"train", "device", &t.device},         {"train", "precision", &t.precision},
      {"optim", "name", &o.name},               {"optim", "lr", &o.lr},
      {"optim", "warmup_frac", &o.warmup_frac}, {"optim", "min_lr_frac", &o.min_lr_frac},
      {"optim", "weight_decay", &o.weight_decay}, {"optim", "clip", &o.clip},
      {"optim", "beta1", &o.beta1},             {"optim", "beta2", &o.beta2},
      {"optim", "beta3", &o.beta3},             {"optim", "eps", &o.eps},
      {"optim", "momentum", &o.momentum},       {"optim", "nesterov", &o.nesterov},
      {"optim", "ns_steps", &o.ns_steps},       {"optim", "muon_scale", &o.muon_scale},
      {"optim", "adamw_lr", &o.adamw_lr},       {"optim", "adamw_beta1", &o.adamw_beta1},
      {"optim", "adamw_beta2", &o.adamw_beta2}, {"optim", "adamw_eps", &o.adamw_eps},
      {"optim", "gamma", &o.gamma},             {"optim", "precond_freq", &o.precond_freq},
      {"pipeline", "stages", &c.pipeline.stages}, {"pipeline", "schedule", &c.pipeline.schedule},
      {"pipeline", "sync_start_steps", &c.pipeline.sync_start_steps},
      {"pipeline", "lookahead", &c.pipeline.lookahead},
      {"pipeline", "transport", &c.pipeline.transport}, {"pipeline", "trace", &c.pipeline.trace},
      {"pipeline", "balance", &c.pipeline.balance},
      {"delay", "emulate", &c.delay.emulate},   {"delay", "correction", &c.delay.correction},
      {"delay", "ef_coef", &c.delay.ef_coef},   {"delay", "dc_lambda", &c.delay.dc_lambda},
      {"delay", "ef_adamw_params", &c.delay.ef_adamw_params},
  };
}

const char* type_name(const FieldPtr& p) {
  return std::visit(
      [](auto* v) -> const char* {
        using T = std::remove_pointer_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) return "a boolean";
        else if constexpr (std::is_same_v<T, std::string>) return "a string";
        else if constexpr (std::is_integral_v<T>) return "an integer";
        else return "a number";
      },
      p);
}

// Sets the field from a TOML node; throws naming `where` and "section.key" on a type mismatch.
void assign(const Field& f, const toml::node& node, const std::string& where) {
  const std::string name = std::string(f.section) + "." + f.key;
  auto wrong = [&]() { bad_input(where, name + ": expected " + type_name(f.ptr)); };
  std::visit(
      [&](auto* v) {
        using T = std::remove_pointer_t<decltype(v)>;
        if constexpr (std::is_same_v<T, bool>) {
          if (!node.is_boolean()) wrong();
          *v = node.as_boolean()->get();
        } else if constexpr (std::is_same_v<T, std::string>) {
          if (!node.is_string()) wrong();
          *v = node.as_string()->get();
        } else if constexpr (std::is_integral_v<T>) {
          if (!node.is_integer()) wrong();
          int64_t x = node.as_integer()->get();
          if (x < static_cast<int64_t>(std::numeric_limits<T>::min()) ||
              x > static_cast<int64_t>(std::numeric_limits<T>::max()))
            bad_input(where, name + ": " + std::to_string(x) + " is out of range");
          *v = static_cast<T>(x);
        } else {
          if (node.is_integer()) *v = static_cast<T>(node.as_integer()->get());
          else if (node.is_floating_point()) *v = static_cast<T>(node.as_floating_point()->get());
          else wrong();
        }
      },
      f.ptr);
}

const Field* find_field(const std::vector<Field>& fields, const std::string& section, const std::string& key) {
  for (const auto& f : fields)
    if (section == f.section && key == f.key) return &f;
  return nullptr;
}

std::string format_value(const FieldPtr& p) {
  return std::visit(
      [](auto* v) -> std::string {
        using T = std::remove_pointer_t<decltype(v)>;
        std::ostringstream os;
        if constexpr (std::is_same_v<T, bool>) os << (*v ? "true" : "false");
        else if constexpr (std::is_same_v<T, std::string>) os << toml::value<std::string>(*v);
        else if constexpr (std::is_integral_v<T>) os << *v;
        else {
          if (std::isnan(*v)) return "nan";
          os << toml::value<double>(static_cast<double>(*v));
        }
        return os.str();
      },
      p);
}

struct Override {
  std::string section, key, text;
};

Override split_override(const std::string& s) {
  auto eq = s.find('=');
  auto dot = s.find('.');
  if (eq == std::string::npos || dot == std::string::npos || dot > eq)
    bad_input("--set", "'" + s + "': expected section.key=value");
  return {s.substr(0, dot), s.substr(dot + 1, eq - dot - 1), s.substr(eq + 1)};
}

// Reads an override's value as a TOML value ("3", "1e-3", "true", "\"x\""); a bare word is a string.
toml::table parse_override_value(const Override& o) {
  try {
    return toml::parse("v = " + o.text);
  } catch (const toml::parse_error&) {
    toml::table t;
    t.insert("v", o.text);
    return t;
  }
}

}  // namespace

RunConfig parse_config(const std::string& toml_text, const std::string& where,
                       const std::vector<std::string>& overrides) {
  toml::table doc;
  try {
    doc = toml::parse(toml_text, where);
  } catch (const toml::parse_error& e) {
    std::ostringstream os;
    os << "line " << e.source().begin.line << ": " << e.description();
    bad_input(where, os.str());
  }
  std::vector<Override> ovs;
  for (const auto& s : overrides) ovs.push_back(split_override(s));

  RunConfig c;
  c.source = where;
  auto fields = fields_of(c);

  // 1. The preset sets every model shape; explicit model keys then override it.
  std::string preset;
  if (auto* p = doc["model"]["preset"].node()) {
    if (!p->is_string()) bad_input(where, "model.preset: expected a string");
    preset = p->as_string()->get();
  }
  for (const auto& o : ovs)
    if (o.section == "model" && o.key == "preset") preset = o.text;
  if (!preset.empty()) {
    try {
      c.model = model_preset(preset);
    } catch (const Error& e) {
      bad_input(where, std::string("model.preset: ") + e.what());
    }
  }

  // 2. The file's keys.
  for (const auto& [section, node] : doc) {
    const toml::table* tbl = node.as_table();
    if (!tbl) bad_input(where, std::string(section.str()) + ": expected a [section] table");
    for (const auto& [key, value] : *tbl) {
      const Field* f = find_field(fields, std::string(section.str()), std::string(key.str()));
      if (!f) bad_input(where, std::string(section.str()) + "." + std::string(key.str()) + ": unknown key");
      assign(*f, value, where);
    }
  }
  // 3. Overrides.
  for (const auto& o : ovs) {
    const Field* f = find_field(fields, o.section, o.key);
    if (!f) bad_input("--set", o.section + "." + o.key + ": unknown key");
    toml::table t = parse_override_value(o);
    // A string key given a bare word that TOML read as a number/bool ("--set data.train=1") stays a string.
    if (std::holds_alternative<std::string*>(f->ptr) && !t["v"].is_string()) {
      t.insert_or_assign("v", o.text);
    }
    assign(*f, *t["v"].node(), "--set");
  }
  resolve_optim_defaults(c.optim, where);
  validate_run_config(c, where);
  return c;
}

RunConfig load_config(const std::string& path, const std::vector<std::string>& overrides) {
  std::ifstream in(path, std::ios::binary);
  if (!in) bad_input(path, "cannot open the config file");
  std::stringstream ss;
  ss << in.rdbuf();
  return parse_config(ss.str(), path, overrides);
}

std::string to_toml(const RunConfig& c_in) {
  RunConfig c = c_in;
  auto fields = fields_of(c);
  std::ostringstream os;
  std::string section;
  for (const auto& f : fields) {
    if (section != f.section) {
      if (!section.empty()) os << "\n";
      section = f.section;
      os << "[" << section << "]\n";
    }
    std::string v = format_value(f.ptr);
    if (v == "nan") continue;  // an optimizer key this optimizer does not use
    os << f.key << " = " << v << "\n";
  }
  return os.str();
}

void validate_run_config(const RunConfig& c, const std::string& where) {
  validate_model_config(c.model, where);
  auto need = [&](bool ok, const std::string& key, const std::string& expected) {
    if (!ok) bad_input(where, key + ": expected " + expected);
  };
  const TrainConfig& t = c.train;
  need(t.steps >= 1, "train.steps", "at least 1");
  need(t.micro_batch_size >= 1, "train.micro_batch_size", "at least 1");
  need(t.micro_batches >= 1, "train.micro_batches", "at least 1");
  need(t.eval_every >= 0, "train.eval_every", "0 (off) or a positive number of steps");
  need(t.eval_tokens >= 1, "train.eval_tokens", "at least 1");
  need(t.ckpt_every >= 0, "train.ckpt_every", "0 (off) or a positive number of steps");
  need(t.keep_ckpts >= 1, "train.keep_ckpts", "at least 1");
  need(t.log_every >= 1, "train.log_every", "at least 1");
  need(t.threads >= 0, "train.threads", "0 (all cores) or a positive count");
  need(t.device == "cpu" || t.device == "cuda", "train.device", "cpu or cuda; got '" + t.device + "'");
  need(t.precision == "fp32" || t.precision == "tf32" || t.precision == "bf16", "train.precision",
       "fp32, tf32 or bf16; got '" + t.precision + "'");
  need(t.precision == "fp32" || t.device == "cuda", "train.precision",
       "'" + t.precision + "' needs train.device = \"cuda\" (the CPU kernels compute in fp32)");
  const OptimConfig& o = c.optim;
  need(std::isfinite(o.warmup_frac) && o.warmup_frac >= 0 && o.warmup_frac < 1, "optim.warmup_frac", "a number in [0, 1)");
  need(std::isfinite(o.min_lr_frac) && o.min_lr_frac >= 0 && o.min_lr_frac <= 1, "optim.min_lr_frac", "a number in [0, 1]");
  need(std::isfinite(o.weight_decay) && o.weight_decay >= 0, "optim.weight_decay", "a finite number >= 0");
  need(std::isfinite(o.clip) && o.clip >= 0, "optim.clip", "a finite number >= 0 (0 turns clipping off)");
  const PipelineConfig& p = c.pipeline;
  const std::vector<std::string> schedules = {"none", "gpipe", "1f1b", "2bw", "pipedream", "sync_start"};
  need(std::find(schedules.begin(), schedules.end(), p.schedule) != schedules.end(), "pipeline.schedule",
       "one of none, gpipe, 1f1b, 2bw, pipedream, sync_start; got '" + p.schedule + "'");
  need(p.stages >= 1, "pipeline.stages", "at least 1");
  need(p.stages <= c.model.n_layers, "pipeline.stages",
       "at most model.n_layers (" + std::to_string(c.model.n_layers) + ")");
  need(p.transport == "inproc" || p.transport == "mpi" || p.transport == "nccl", "pipeline.transport",
       "inproc, mpi or nccl; got '" + p.transport + "'");
  need(p.sync_start_steps >= 0, "pipeline.sync_start_steps", "at least 0");
  need(p.lookahead >= 0 && p.lookahead <= 64, "pipeline.lookahead", "0..64 (extra micro-batches in flight per stage)");
  need(p.balance == "params" || p.balance == "measured", "pipeline.balance", "params or measured; got '" + p.balance + "'");
  const DelayConfig& d = c.delay;
  need(d.emulate == "none" || d.emulate == "one_step" || d.emulate == "per_stage", "delay.emulate",
       "none, one_step or per_stage; got '" + d.emulate + "'");
  need(d.correction == "none" || d.correction == "ef" || d.correction == "dc_asgd" || d.correction == "weight_prediction",
       "delay.correction", "none, ef, dc_asgd or weight_prediction; got '" + d.correction + "'");
  need(std::isfinite(d.dc_lambda) && d.dc_lambda >= 0, "delay.dc_lambda", "a finite number >= 0");
  need(std::isfinite(d.ef_coef), "delay.ef_coef", "a finite number");
}

}  // namespace onestep
