// The partition: contiguous, complete, optimal for the given costs (checked against brute force), cuts inside
// a block (even inside its MLP) when that balances better, and rejects impossible stage counts.
#include <gtest/gtest.h>

#include <algorithm>
#include <limits>

#include "core/error.h"
#include "core/threads.h"
#include "model/model_config.h"
#include "train/partition.h"

using namespace onestep;

namespace {

ModelCosts costs_of(double embedding, std::vector<double> units, double head) {
  ModelCosts m;
  m.pieces.push_back(embedding);
  m.pieces.insert(m.pieces.end(), units.begin(), units.end());
  m.pieces.push_back(head);
  return m;
}

double stage_cost(const StageSpec& s, const ModelCosts& m) {
  double v = (s.has_embedding ? m.embedding() : 0.0) + (s.has_head ? m.head() : 0.0);
  for (int u = s.first_unit; u < s.end_unit; ++u) v += m.unit(u);
  return v;
}

double max_cost(const std::vector<StageSpec>& specs, const ModelCosts& m) {
  double worst = 0;
  for (const auto& s : specs) worst = std::max(worst, stage_cost(s, m));
  return worst;
}

// Every way of cutting U units into 3 non-empty stages: the smallest maximum stage cost.
double brute_force_three(const ModelCosts& m, int U) {
  double best = std::numeric_limits<double>::infinity();
  for (int a = 1; a < U; ++a)
    for (int b = a + 1; b < U; ++b) {
      const std::vector<StageSpec> s = {{0, a, true, false}, {a, b, false, false}, {b, U, false, true}};
      best = std::min(best, max_cost(s, m));
    }
  return best;
}

void expect_contiguous_and_complete(const std::vector<StageSpec>& specs, int U) {
  ASSERT_FALSE(specs.empty());
  EXPECT_EQ(specs.front().first_unit, 0);
  EXPECT_EQ(specs.back().end_unit, U);
  for (size_t s = 0; s < specs.size(); ++s) {
    EXPECT_LT(specs[s].first_unit, specs[s].end_unit) << "stage " << s << " is empty";
    EXPECT_EQ(specs[s].has_embedding, s == 0);
    EXPECT_EQ(specs[s].has_head, s + 1 == specs.size());
    if (s > 0) {
      EXPECT_EQ(specs[s].first_unit, specs[s - 1].end_unit);
    }
  }
}

}  // namespace

TEST(Partition, CutsInsideABlockWhenThatBalancesBetter) {
  ModelConfig c = model_preset("tiny");  // 4 blocks, 16 units
  // Per block: attention 1, MLP gate 2, up 1, down 1; head 8: total 28. Whole-block cuts give at best
  // 15 | 13 (3 blocks | 1 block + head), a cut after block 2's gate part 13 | 15; after its up part 14 | 14.
  const ModelCosts m = costs_of(0, {1, 2, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1}, 8);
  const auto specs = partition_model(c, 2, m);
  expect_contiguous_and_complete(specs, 16);
  EXPECT_EQ(specs[0].end_unit, 11);
  EXPECT_DOUBLE_EQ(max_cost(specs, m), 14.0);
  EXPECT_NE(describe_partition(c, specs, m).find("attention, MLP gate, MLP up of block 2"), std::string::npos);
  EXPECT_NE(describe_partition(c, specs, m).find("MLP down of block 2"), std::string::npos);
}

TEST(Partition, IsOptimalAgainstBruteForce) {
  ModelConfig c = model_preset("tiny");
  const std::vector<std::vector<double>> unit_sets = {{1, 2, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1, 1, 2, 1, 1},
                                                      {5, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 9},
                                                      {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1},
                                                      {3, 7, 2, 8, 1, 1, 4, 6, 2, 5, 9, 1, 3, 3, 8, 2}};
  for (const auto& units : unit_sets)
    for (double head : {0.0, 2.0, 12.0}) {
      const ModelCosts m = costs_of(0.5, units, head);
      const auto specs = partition_model(c, 3, m);
      expect_contiguous_and_complete(specs, 16);
      EXPECT_DOUBLE_EQ(max_cost(specs, m), brute_force_three(m, 16)) << "head " << head;
    }
}

TEST(Partition, ParameterCostsCoverTheModel) {
  for (const char* preset : {"tiny", "small", "smollm2-135m"}) {
    ModelConfig c = model_preset(preset);
    const ModelCosts m = parameter_costs(c);
    ASSERT_EQ(m.pieces.size(), static_cast<size_t>(model_units(c) + 2));
    for (int p : {1, 2, 4}) {
      const auto specs = partition_model(c, p);
      expect_contiguous_and_complete(specs, model_units(c));
      // The stages hold every parameter of the model exactly once (the tied head copy counted on its own).
      int64_t total = 0;
      for (const auto& s : specs) total += Stage(c, s).params().total();
      EXPECT_EQ(total, Stage(c, whole_model(c)).params().total()) << preset << " p=" << p;
    }
  }
}

TEST(Partition, MeasuredCostsArePositiveForEveryPiece) {
  ModelConfig c = model_preset("tiny");
  c.n_layers = 2;
  set_num_threads(1);  // no waits for descheduled OpenMP threads in these few-millisecond timings
  const ModelCosts m = measured_costs(c, 1, 5);
  ASSERT_EQ(m.pieces.size(), 10u);
  for (double v : m.pieces) EXPECT_GT(v, 0.0);
  // Each MLP part (matmuls) takes far longer than the embedding lookup: the timings are of the right pieces.
  EXPECT_GT(m.unit(1), 10 * m.embedding());
  EXPECT_GT(m.unit(2), 5 * m.embedding());
  EXPECT_GT(m.unit(3), 5 * m.embedding());
}

TEST(Partition, RejectsMoreStagesThanLayers) {
  ModelConfig c = model_preset("tiny");
  try {
    partition_model(c, 5);
    FAIL() << "expected an error";
  } catch (const Error& e) {
    EXPECT_EQ(e.code(), ExitCode::bad_input);
    EXPECT_NE(std::string(e.what()).find("pipeline.stages"), std::string::npos);
  }
  EXPECT_THROW(partition_model(c, 0), Error);
}
