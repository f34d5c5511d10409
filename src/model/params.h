// The parameter table: every weight of a stage lives in one flat float buffer; this table names each
// slice (Hugging Face Llama names, [out_features, in_features] layout) and its role for the optimizer.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace onestep {

// Role decides optimizer routing: Muon-family optimizers take `matrix` (2-D hidden matrices), the rest go
// to AdamW. `head` is an untied output head, or a tied copy living on the last pipeline stage.
enum class ParamRole { embedding, head, matrix, norm };
const char* role_name(ParamRole r);

struct ParamInfo {
  std::string name;              // e.g. "model.layers.3.self_attn.q_proj.weight"
  std::vector<int64_t> shape;    // 1-D {n} or 2-D {rows(out), cols(in)}
  int64_t offset = 0;            // into the flat buffer, in floats
  int64_t numel = 0;
  ParamRole role = ParamRole::norm;
  int64_t rows() const { return shape[0]; }
  int64_t cols() const { return shape.size() > 1 ? shape[1] : 1; }
};

// Elements of a tensor of this shape.
inline int64_t shape_numel(const std::vector<int64_t>& shape) {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

class ParamTable {
 public:
  // Appends a parameter at the end of the flat buffer; returns its offset.
  int64_t add(std::string name, std::vector<int64_t> shape, ParamRole role);
  const std::vector<ParamInfo>& all() const { return params_; }
  const ParamInfo* find(const std::string& name) const;  // null when absent
  const ParamInfo& at(const std::string& name) const;    // internal_error when absent
  int64_t total() const { return total_; }
  size_t size() const { return params_.size(); }

 private:
  std::vector<ParamInfo> params_;
  int64_t total_ = 0;
};

}  // namespace onestep
