// Micro-benchmarks of the CPU kernels at the `small` preset's shapes: matmul forward/backward
// (N = 2048 tokens, C = 512, OC in {512, 1376, 8192}) and causal attention (B=8, T=256, H=KV=8, D=64).
// The GFLOP/s counters count useful FLOPs: 2*N*C*OC per matmul product; attention counts the causal
// pairs only, 4*D per pair forward and 8*D per pair backward (not the recomputed scores).
#include <benchmark/benchmark.h>

#include <random>
#include <vector>

#include "kernels/cpu/ops.h"

namespace {
using namespace onestep::cpu;

std::vector<float> random_vec(size_t n, unsigned seed, float stddev = 1.0f) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = d(rng);
  return v;
}

constexpr int kN = 2048, kC = 512;

void BM_MatmulForward(benchmark::State& state) {
  const int OC = static_cast<int>(state.range(0));
  auto inp = random_vec(static_cast<size_t>(kN) * kC, 1),
       w = random_vec(static_cast<size_t>(OC) * kC, 2, 0.02f);
  std::vector<float> out(static_cast<size_t>(kN) * OC);
  for (auto _ : state) {
    matmul_forward(out.data(), inp.data(), w.data(), kN, kC, OC);
    benchmark::DoNotOptimize(out.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(2.0 * kN * kC * OC * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_MatmulBackward(benchmark::State& state) {
  const int OC = static_cast<int>(state.range(0));
  auto inp = random_vec(static_cast<size_t>(kN) * kC, 1),
       w = random_vec(static_cast<size_t>(OC) * kC, 2, 0.02f);
  auto dout = random_vec(static_cast<size_t>(kN) * OC, 3);
  std::vector<float> dinp(static_cast<size_t>(kN) * kC, 0.0f), dw(static_cast<size_t>(OC) * kC, 0.0f);
  for (auto _ : state) {
    matmul_backward(dinp.data(), dw.data(), dout.data(), inp.data(), w.data(), kN, kC, OC);
    benchmark::DoNotOptimize(dw.data());
  }
  state.counters["GFLOP/s"] =
      benchmark::Counter(4.0 * kN * kC * OC * 1e-9, benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_MatmulForward)->Arg(512)->Arg(1376)->Arg(8192)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_MatmulBackward)->Arg(512)->Arg(1376)->Arg(8192)->Unit(benchmark::kMillisecond)->UseRealTime();

struct AttnData {
  static constexpr int B = 8, T = 256, H = 8, KV = 8, D = 64;
  std::vector<float> q, k, v, out, lse, dout, dq, dk, dv;
  AttnData()
      : q(random_vec(size_t{B} * T * H * D, 4)),
        k(random_vec(size_t{B} * T * KV * D, 5)),
        v(random_vec(size_t{B} * T * KV * D, 6)),
        out(size_t{B} * T * H * D),
        lse(size_t{B} * H * T),
        dout(random_vec(size_t{B} * T * H * D, 7)),
        dq(q.size(), 0.0f),
        dk(k.size(), 0.0f),
        dv(v.size(), 0.0f) {}
  static double pairs() { return double{B} * H * T * (T + 1) / 2.0; }
  void forward() { attention_forward(out.data(), lse.data(), q.data(), k.data(), v.data(), B, T, H, KV, D); }
  void backward() {
    attention_backward(dq.data(), dk.data(), dv.data(), dout.data(), q.data(), k.data(), v.data(), out.data(),
                       lse.data(), B, T, H, KV, D);
  }
};

void BM_AttentionForward(benchmark::State& state) {
  AttnData a;
  for (auto _ : state) {
    a.forward();
    benchmark::DoNotOptimize(a.out.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(4.0 * AttnData::D * AttnData::pairs() * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

void BM_AttentionBackward(benchmark::State& state) {
  AttnData a;
  a.forward();
  for (auto _ : state) {
    a.backward();
    benchmark::DoNotOptimize(a.dq.data());
  }
  state.counters["GFLOP/s"] = benchmark::Counter(8.0 * AttnData::D * AttnData::pairs() * 1e-9,
                                                 benchmark::Counter::kIsIterationInvariantRate);
}

BENCHMARK(BM_AttentionForward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AttentionBackward)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
