#include "model/params.h"

#include "core/error.h"

namespace onestep {

const char* role_name(ParamRole r) {
  switch (r) {
    case ParamRole::embedding: return "embedding";
    case ParamRole::head: return "head";
    case ParamRole::matrix: return "matrix";
    case ParamRole::norm: return "norm";
  }
  return "?";
}

int64_t ParamTable::add(std::string name, std::vector<int64_t> shape, ParamRole role) {
  ParamInfo p;
  p.name = std::move(name);
  p.shape = std::move(shape);
  p.numel = shape_numel(p.shape);
  p.offset = total_;
  p.role = role;
  // Keep every parameter 16-float (64-byte) aligned inside the flat buffer for vector loads.
  total_ += (p.numel + 15) / 16 * 16;
  params_.push_back(std::move(p));
  return params_.back().offset;
}

const ParamInfo* ParamTable::find(const std::string& name) const {
  for (const auto& p : params_)
    if (p.name == name) return &p;
  return nullptr;
}

const ParamInfo& ParamTable::at(const std::string& name) const {
  const ParamInfo* p = find(name);
  if (!p) internal_error("no parameter named " + name);
  return *p;
}

}  // namespace onestep
