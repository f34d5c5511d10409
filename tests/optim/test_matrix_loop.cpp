// optim_detail::for_each_matrix, and the optimizers that share their matrices out among the threads with it
// (Muon, NorMuon, SOAP): the same bits on any thread count.
#include "optim/matrix_loop.h"

#include <gtest/gtest.h>

#include <omp.h>

#include <atomic>
#include <cstring>
#include <numeric>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/threads.h"
#include "optim/optimizer.h"
#include "reference.h"

using namespace onestep;
using optim_detail::MatrixLoop;

namespace {

// Restores the thread count a test changed.
struct KeepThreads {
  int before = num_threads();
  ~KeepThreads() { set_num_threads(before); }
};

}  // namespace

TEST(MatrixLoop, LargestFirstIsAStableOrderByCost) {
  const std::vector<int64_t> cost = {3, 9, 3, 1, 9};
  EXPECT_EQ(optim_detail::largest_first(cost.size(), [&](size_t k) { return cost[k]; }),
            (std::vector<size_t>{1, 4, 0, 2, 3}));
}

// Every matrix once, every slot in range and never held by two tasks at once, in both modes and whether or not
// the loop shares out (shared_out_if_many needs 2 matrices per thread).
TEST(MatrixLoop, EachMatrixOnceAndNoSlotSharedAtOnce) {
  KeepThreads keep;
  for (int threads : {1, 2, 3}) {
    set_num_threads(threads);
    for (size_t n : {size_t{1}, size_t{5}, size_t{12}}) {
      for (MatrixLoop how : {MatrixLoop::shared_out, MatrixLoop::shared_out_if_many}) {
        std::vector<size_t> order(n);
        for (size_t i = 0; i < n; ++i) order[i] = n - 1 - i;
        std::vector<std::atomic<int>> runs(n), busy(optim_detail::loop_slots());
        std::atomic<int> bad_slot{0}, shared_slot{0};
        optim_detail::for_each_matrix(order, how, [&](size_t k, int slot) {
          if (slot < 0 || slot >= optim_detail::loop_slots()) return void(++bad_slot);
          if (busy[slot].fetch_add(1) != 0) ++shared_slot;
          volatile double spin = 0;  // long enough for the threads to overlap
          for (int i = 0; i < 200000; ++i) spin = spin + i;
          --busy[slot];
          ++runs[k];
        });
        for (size_t k = 0; k < n; ++k) EXPECT_EQ(runs[k].load(), 1) << threads << " threads, n " << n << ", k " << k;
        EXPECT_EQ(bad_slot.load(), 0);
        EXPECT_EQ(shared_slot.load(), 0);
      }
    }
  }
}

// Which way the loop runs: shared out, the tasks run inside a parallel region of the full thread count (their
// products single-threaded); otherwise outside any, so that their products use every thread. shared_out always
// shares out; shared_out_if_many only with at least 2 matrices per thread.
TEST(MatrixLoop, SharesOutExactlyWhenItShould) {
  KeepThreads keep;
  for (int threads : {2, 3}) {
    set_num_threads(threads);
    struct Case {
      MatrixLoop how;
      size_t n;
      bool shared;
    };
    for (const Case k : {Case{MatrixLoop::shared_out, 1, true}, Case{MatrixLoop::shared_out, size_t(threads), true},
                         Case{MatrixLoop::shared_out_if_many, size_t(2 * threads - 1), false},
                         Case{MatrixLoop::shared_out_if_many, size_t(2 * threads), true}}) {
      std::vector<size_t> order(k.n);
      std::iota(order.begin(), order.end(), size_t{0});
      std::atomic<int> in_region{0}, outside{0}, wrong_team{0};
      optim_detail::for_each_matrix(order, k.how, [&](size_t, int) {
        if (!omp_in_parallel()) return void(++outside);
        ++in_region;
        if (omp_get_num_threads() != threads) ++wrong_team;
      });
      const std::string what = std::to_string(threads) + " threads, " + std::to_string(k.n) + " matrices";
      EXPECT_EQ(in_region.load(), k.shared ? int(k.n) : 0) << what;
      EXPECT_EQ(outside.load(), k.shared ? 0 : int(k.n)) << what;
      EXPECT_EQ(wrong_team.load(), 0) << what;
    }
  }
}

TEST(MatrixLoop, ATaskExceptionIsRethrownAfterTheLoop) {
  KeepThreads keep;
  set_num_threads(2);
  for (MatrixLoop how : {MatrixLoop::shared_out, MatrixLoop::shared_out_if_many}) {
    std::atomic<int> ran{0};
    const std::vector<size_t> order = {0, 1, 2, 3, 4, 5};
    EXPECT_THROW(optim_detail::for_each_matrix(order, how, [&](size_t k, int) {
      ++ran;
      if (k == 3) throw std::runtime_error("matrix 3");
    }), std::runtime_error);
    EXPECT_EQ(ran.load(), 6);  // the other matrices still ran
  }
}

// With at least 2 matrices per thread Muon, NorMuon and SOAP share their matrices out among the threads, each
// one's products on its own thread; with one thread they go one after another. Every product then runs
// single-threaded either way, so the two must agree bit for bit, state included, over 12 steps (SOAP refreshes
// its bases at the first and the 11th). A scratch buffer shared between threads, or a matrix left out, would show.
TEST(MatrixLoop, OptimizersSharingMatricesOutEqualOneThread) {
  ParamTable t;
  t.add("model.embed_tokens.weight", {20, 48}, ParamRole::embedding);
  for (int l = 0; l < 2; ++l) {
    const std::string b = "model.layers." + std::to_string(l) + ".";
    t.add(b + "input_layernorm.weight", {48}, ParamRole::norm);
    t.add(b + "self_attn.q_proj.weight", {48, 48}, ParamRole::matrix);
    t.add(b + "self_attn.k_proj.weight", {24, 48}, ParamRole::matrix);
    t.add(b + "self_attn.o_proj.weight", {48, 48}, ParamRole::matrix);
    t.add(b + "mlp.up_proj.weight", {96, 48}, ParamRole::matrix);
    t.add(b + "mlp.down_proj.weight", {48, 96}, ParamRole::matrix);
  }
  const auto x = optim_test::gaussian(t.total(), 50);
  KeepThreads keep;
  for (const char* name : {"muon", "normuon", "soap"}) {
    OptimConfig c;
    c.name = name;
    auto run = [&](int threads) {
      set_num_threads(threads);
      auto opt = make_optimizer(c, t);
      std::vector<float> u(t.total());
      for (int s = 0; s < 12; ++s) {
        const auto g = optim_test::gaussian(t.total(), 51 + s);
        opt->compute_update(u.data(), x.data(), g.data(), 1.0);
      }
      std::vector<float> all = u;
      for (const auto& b : opt->state_buffers()) all.insert(all.end(), b.data, b.data + shape_numel(b.shape));
      return all;
    };
    const std::vector<float> one = run(1);
    for (int threads : {2, 3, 5}) {  // 10 matrices: shared out at 2, 3 and 5 threads
      const std::vector<float> many = run(threads);
      ASSERT_EQ(one.size(), many.size());
      EXPECT_EQ(0, std::memcmp(one.data(), many.data(), sizeof(float) * one.size()))
          << name << ", " << threads << " threads";
    }
  }
}
