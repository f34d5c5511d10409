// Every optimizer: checkpoint state round trip (bit for bit), determinism, untouched gaps, unique names.
#include <gtest/gtest.h>

#include <cstring>
#include <limits>
#include <map>
#include <set>
#include <vector>

#include "optim/optim_names.h"
#include "optim/optimizer.h"
#include "reference.h"

using namespace onestep;

namespace {

ParamTable model_like_table() {
  ParamTable t;
  t.add("model.embed_tokens.weight", {12, 8}, ParamRole::embedding);
  t.add("model.layers.0.input_layernorm.weight", {8}, ParamRole::norm);
  t.add("model.layers.0.self_attn.q_proj.weight", {8, 8}, ParamRole::matrix);
  t.add("model.layers.0.mlp.up_proj.weight", {20, 8}, ParamRole::matrix);
  t.add("model.layers.0.mlp.down_proj.weight", {8, 20}, ParamRole::matrix);
  t.add("model.norm.weight", {8}, ParamRole::norm);
  t.add("lm_head.weight", {12, 8}, ParamRole::head);
  return t;
}

OptimConfig config_for(const std::string& name) {
  OptimConfig c;
  c.name = name;
  if (name == "soap") c.precond_freq = 2;  // refreshes at steps 3 and 5: one before, one after the copy
  return c;
}

int64_t numel(const StateBuffer& b) {
  int64_t n = 1;
  for (int64_t d : b.shape) n *= d;
  return n;
}

}  // namespace

class AllOptimizers : public ::testing::TestWithParam<std::string> {};

TEST_P(AllOptimizers, StateRoundTripIsBitExact) {
  ParamTable t = model_like_table();
  const int64_t N = t.total();
  auto x = optim_test::gaussian(N, 900, 0.5f);
  auto a = make_optimizer(config_for(GetParam()), t);
  std::vector<float> ua(N), ub(N);
  const double scales[5] = {0.2, 0.6, 1.0, 0.9, 0.7};
  for (int s = 0; s < 3; ++s) {
    auto g = optim_test::gaussian(N, 901 + s, 0.3f);
    a->compute_update(ua.data(), x.data(), g.data(), scales[s]);
    for (int64_t k = 0; k < N; ++k) x[k] -= ua[k];
  }
  // A fresh optimizer restored from the state buffers and the step count.
  auto b = make_optimizer(config_for(GetParam()), t);
  auto sa = a->state_buffers(), sb = b->state_buffers();
  ASSERT_EQ(sa.size(), sb.size());
  std::map<std::string, StateBuffer> by_name;
  for (const auto& s : sb) by_name[s.name] = s;
  ASSERT_EQ(by_name.size(), sb.size()) << "state names must be unique";
  for (const auto& s : sa) {
    ASSERT_TRUE(by_name.count(s.name)) << s.name;
    ASSERT_EQ(by_name[s.name].shape, s.shape) << s.name;
    std::memcpy(by_name[s.name].data, s.data, sizeof(float) * numel(s));
  }
  b->set_steps_taken(a->steps_taken());
  const float sentinel = std::numeric_limits<float>::quiet_NaN();
  for (int s = 3; s < 5; ++s) {
    auto g = optim_test::gaussian(N, 901 + s, 0.3f);
    std::fill(ua.begin(), ua.end(), sentinel);
    std::fill(ub.begin(), ub.end(), sentinel);
    a->compute_update(ua.data(), x.data(), g.data(), scales[s]);
    b->compute_update(ub.data(), x.data(), g.data(), scales[s]);
    EXPECT_EQ(0, std::memcmp(ua.data(), ub.data(), sizeof(float) * N)) << "step " << s + 1;
    // Every parameter element is written (finite), every gap is left alone.
    std::vector<bool> inside(N, false);
    for (const auto& p : t.all())
      for (int64_t i = 0; i < p.numel; ++i) inside[p.offset + i] = true;
    for (int64_t k = 0; k < N; ++k) {
      if (inside[k]) { EXPECT_TRUE(std::isfinite(ua[k])) << k; }
      else { EXPECT_TRUE(std::isnan(ua[k])) << "gap " << k << " was written"; }
    }
    for (int64_t k = 0; k < N; ++k) x[k] -= ua[k];
  }
  EXPECT_EQ(a->steps_taken(), 5);
  EXPECT_EQ(b->steps_taken(), 5);
  sa = a->state_buffers();
  sb = b->state_buffers();
  for (size_t i = 0; i < sa.size(); ++i) {
    EXPECT_EQ(sa[i].name, sb[i].name);
    EXPECT_EQ(0, std::memcmp(sa[i].data, sb[i].data, sizeof(float) * numel(sa[i]))) << sa[i].name;
  }
}

TEST_P(AllOptimizers, EveryParameterHasStateAndNamesAreStable) {
  ParamTable t = model_like_table();
  auto o1 = make_optimizer(config_for(GetParam()), t), o2 = make_optimizer(config_for(GetParam()), t);
  auto s1 = o1->state_buffers(), s2 = o2->state_buffers();
  ASSERT_EQ(s1.size(), s2.size());
  std::set<std::string> params_with_state;
  for (size_t i = 0; i < s1.size(); ++i) {
    EXPECT_EQ(s1[i].name, s2[i].name);
    EXPECT_NE(s1[i].data, nullptr);
    for (const auto& p : t.all()) {
      const std::string& n = s1[i].name;
      if (n.size() > p.name.size() && n.compare(n.size() - p.name.size(), p.name.size(), p.name) == 0 &&
          n[n.size() - p.name.size() - 1] == '.')
        params_with_state.insert(p.name);
    }
  }
  EXPECT_EQ(params_with_state.size(), t.size());
}

INSTANTIATE_TEST_SUITE_P(Names, AllOptimizers, ::testing::Values("adamw", "muon", "normuon", "adan", "lion", "mars", "soap", "sgd"));

TEST(AllOptimizers, ListCoversEveryName) {
  std::vector<std::string> names;
  for (const auto& n : optim_names()) {
    names.push_back(n.name);
    EXPECT_TRUE(n.implemented) << n.name;
  }
  EXPECT_EQ(names, (std::vector<std::string>{"adamw", "muon", "normuon", "adan", "lion", "mars", "soap", "sgd"}));
}
