#include "train/checkpoint.h"

#include <cstdio>
#include <deque>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "core/error.h"
#include "io/safetensors.h"

namespace fs = std::filesystem;

namespace onestep {
namespace {

std::string step_name(int64_t step) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "step_%08lld", static_cast<long long>(step));
  return buf;
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) bad_input(path, "cannot read");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

void write_text_atomic(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) internal_error("cannot write " + tmp);
  }
  fs::rename(tmp, path);
}

// Visits (tensor name, pointer, shape) of every tensor a stage checkpoints; `load` decides the direction.
template <class F>
void for_each_tensor(StageState& s, F&& f) {
  for (const auto& p : s.stage.params().all()) {
    f("weights." + p.name, s.weights.data() + p.offset, p.shape);
    for (size_t k = 0; k < s.older.size(); ++k)  // "stale." = W(t-1), "stale2." = W(t-2), ...
      f((k == 0 ? std::string("stale.") : "stale" + std::to_string(k + 1) + ".") + p.name, s.older[k].data() + p.offset, p.shape);
    if (!s.prev_update.empty()) f("prev_update." + p.name, s.prev_update.data() + p.offset, p.shape);
  }
  for (auto& b : s.optimizer->state_buffers()) f("optim." + b.name, b.data, b.shape);
}

// All state*.safetensors files of a checkpoint folder (one, or one per process of an MPI run).
class CheckpointFiles {
 public:
  explicit CheckpointFiles(const std::string& dir) {
    std::vector<std::string> paths;
    for (const auto& e : fs::directory_iterator(dir)) {
      const std::string n = e.path().filename().string();
      if (n.rfind("state", 0) == 0 && e.path().extension() == ".safetensors") paths.push_back(e.path().string());
    }
    std::sort(paths.begin(), paths.end());
    if (paths.empty()) bad_input(dir, "no state*.safetensors file: not a complete checkpoint");
    for (const auto& p : paths) readers_.emplace_back(p);
  }
  void read_into(const std::string& name, float* dst, const std::vector<int64_t>& shape) const {
    for (const auto& r : readers_)
      if (r.has(name)) return r.read_into(name, dst, shape);
    readers_.front().read_into(name, dst, shape);  // reports the missing tensor, naming the file
  }

 private:
  std::vector<SafetensorsReader> readers_;
};

}  // namespace

std::string checkpoint_tmp_dir(const std::string& run_dir, int64_t step) {
  return (fs::path(run_dir) / "checkpoints" / (step_name(step) + ".tmp")).string();
}

void write_checkpoint_part(const std::string& tmp_dir, const std::string& part, const std::vector<StageState*>& stages) {
  std::vector<TensorRef> tensors;
  std::deque<std::vector<float>> staged;  // host copies of device tensors, alive until written
  for (StageState* s : stages)
    for_each_tensor(*s, [&](const std::string& name, float* data, const std::vector<int64_t>& shape) {
      if (s->device() != Device::cpu) {
        std::vector<float>& host = staged.emplace_back(static_cast<size_t>(shape_numel(shape)));
        device_memory::copy(host.data(), data, host.size() * sizeof(float), device_memory::Copy::device_to_host);
        data = host.data();
      }
      tensors.push_back({name, shape, data});
    });
  write_safetensors((fs::path(tmp_dir) / ("state" + part + ".safetensors")).string(), tensors,
                    {{"format", "onestep-checkpoint-v1"}});
}

void finish_checkpoint(const std::string& run_dir, int64_t step, const RunConfig& config, int64_t optimizer_steps,
                       bool has_prev_update, int stages, int keep) {
  const fs::path root = fs::path(run_dir) / "checkpoints";
  const fs::path tmp_dir = checkpoint_tmp_dir(run_dir, step);
  const fs::path final_dir = root / step_name(step);
  nlohmann::json meta;
  meta["format"] = "onestep-checkpoint-v1";
  meta["step"] = step;
  meta["optimizer_steps"] = optimizer_steps;
  meta["has_prev_update"] = has_prev_update;
  // Batches are a pure function of (seed, step, micro-batch): the step is the whole data cursor, and the
  // counter-based RNG has no hidden state.
  meta["data_cursor"] = {{"next_step", step}};
  meta["rng"] = {{"kind", "counter-based splitmix64"}, {"seed", config.train.seed}};
  meta["stages"] = stages;
  write_text_atomic((tmp_dir / "state.json").string(), meta.dump(2) + "\n");
  write_text_atomic((tmp_dir / "config.toml").string(), to_toml(config));
  fs::remove_all(final_dir);
  fs::rename(tmp_dir, final_dir);
  write_text_atomic((root / "latest").string(), step_name(step) + "\n");
  // Retention: the newest `keep` complete folders survive.
  std::vector<fs::path> done;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string n = e.path().filename().string();
    if (e.is_directory() && n.rfind("step_", 0) == 0 && n.find(".tmp") == std::string::npos) done.push_back(e.path());
  }
  std::sort(done.begin(), done.end());
  for (size_t i = 0; i + keep < done.size(); ++i) fs::remove_all(done[i]);
}

void save_checkpoint(const std::string& run_dir, int64_t step, const RunConfig& config,
                     const std::vector<StageState*>& stages, int keep) {
  const std::string tmp = checkpoint_tmp_dir(run_dir, step);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  write_checkpoint_part(tmp, "", stages);
  finish_checkpoint(run_dir, step, config, stages.front()->optimizer->steps_taken(), stages.front()->has_prev_update,
                    static_cast<int>(stages.size()), keep);
}

std::string latest_checkpoint(const std::string& run_dir) {
  const fs::path latest = fs::path(run_dir) / "checkpoints" / "latest";
  if (!fs::exists(latest)) return "";
  std::string name = read_text(latest.string());
  while (!name.empty() && (name.back() == '\n' || name.back() == ' ')) name.pop_back();
  const fs::path dir = latest.parent_path() / name;
  if (!fs::exists(dir / "state.json")) bad_input(latest.string(), "names '" + name + "', which is not a complete checkpoint");
  return dir.string();
}

std::string resolve_checkpoint_dir(const std::string& path) {
  const fs::path p(path);
  if (fs::is_directory(p) && fs::exists(p / "state.json")) return p.string();
  if (fs::is_regular_file(p) && p.filename() == "latest") return latest_checkpoint(p.parent_path().parent_path().string());
  if (fs::is_directory(p)) {
    std::string d = latest_checkpoint(p.string());
    if (!d.empty()) return d;
  }
  bad_input(path, "not a checkpoint (expected a step folder with state.json, a run folder, or checkpoints/latest)");
}

RunConfig checkpoint_config(const std::string& ckpt_dir) {
  const std::string path = (fs::path(ckpt_dir) / "config.toml").string();
  return parse_config(read_text(path), path);
}

int64_t load_checkpoint(const std::string& ckpt_dir, const std::vector<StageState*>& stages) {
  const std::string meta_path = (fs::path(ckpt_dir) / "state.json").string();
  nlohmann::json meta;
  try {
    meta = nlohmann::json::parse(read_text(meta_path));
  } catch (const nlohmann::json::exception& e) {
    bad_input(meta_path, std::string("not valid JSON: ") + e.what());
  }
  if (meta.value("format", "") != "onestep-checkpoint-v1") bad_input(meta_path, "format: expected onestep-checkpoint-v1");
  const CheckpointFiles files(ckpt_dir);
  for (StageState* s : stages) {
    std::vector<float> host;  // staging for device tensors
    for_each_tensor(*s, [&](const std::string& name, float* data, const std::vector<int64_t>& shape) {
      if (s->device() == Device::cpu) return files.read_into(name, data, shape);
      host.resize(static_cast<size_t>(shape_numel(shape)));
      files.read_into(name, host.data(), shape);
      device_memory::copy(data, host.data(), host.size() * sizeof(float), device_memory::Copy::host_to_device);
    });
    s->optimizer->set_steps_taken(meta.at("optimizer_steps").get<int64_t>());
    s->has_prev_update = meta.value("has_prev_update", false);
  }
  return meta.at("step").get<int64_t>();
}

}  // namespace onestep

namespace onestep {
void load_weights(const std::string& ckpt_dir, const Stage& stage, float* weights) {
  const CheckpointFiles files(ckpt_dir);
  for (const auto& p : stage.params().all()) files.read_into("weights." + p.name, weights + p.offset, p.shape);
}
}  // namespace onestep
