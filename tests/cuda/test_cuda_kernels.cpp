// Every CUDA kernel against its CPU counterpart (onestep::cpu) on random inputs, fp32. Backward
// gradients start from random values, so the += accumulation is checked too. Without a GPU every
// test skips with an explicit message.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cpu/ops.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/optim_cuda.h"

namespace {

namespace cpu = onestep::cpu;
namespace gpu = onestep::cuda;

using namespace cuda_test;

constexpr double kTol = 1e-4;      // fp32 kernels: relative tolerance
constexpr double kAtol = 1e-5;     // ... plus this fraction of the largest magnitude
constexpr double kAttnTol = 1e-3;  // attention (longer reduction chains, exp of recomputed scores)
constexpr double kAttnAtol = 1e-4;

// ---------------------------------------------------------------------------------------------------
TEST(CudaKernels, Matmul) {
  REQUIRE_GPU();
  std::mt19937 rng(1);
  struct S {
    int N, C, OC;
  };
  for (const S s : {S{1, 1, 1}, S{37, 64, 50}, S{128, 256, 96}, S{67, 129, 33}}) {
    const std::string tag = " N=" + std::to_string(s.N) + " C=" + std::to_string(s.C) + " OC=" + std::to_string(s.OC);
    const auto inp = randn(static_cast<size_t>(s.N) * s.C, rng), w = randn(static_cast<size_t>(s.OC) * s.C, rng);
    const auto dout = randn(static_cast<size_t>(s.N) * s.OC, rng);
    const auto dinp0 = randn(inp.size(), rng), dw0 = randn(w.size(), rng);
    std::vector<float> out(static_cast<size_t>(s.N) * s.OC), dinp = dinp0, dw = dw0;
    cpu::matmul_forward(out.data(), inp.data(), w.data(), s.N, s.C, s.OC);
    cpu::matmul_backward(dinp.data(), dw.data(), dout.data(), inp.data(), w.data(), s.N, s.C, s.OC);

    Dev<float> d_inp(inp), d_w(w), d_dout(dout), d_out(out.size()), d_dinp(dinp0), d_dw(dw0);
    gpu::matmul_forward(d_out.get(), d_inp.get(), d_w.get(), s.N, s.C, s.OC);
    gpu::matmul_backward(d_dinp.get(), d_dw.get(), d_dout.get(), d_inp.get(), d_w.get(), s.N, s.C, s.OC);
    expect_close(d_out.host(), out, kTol, kAtol, "matmul out" + tag);
    expect_close(d_dinp.host(), dinp, kTol, kAtol, "matmul dinp" + tag);
    expect_close(d_dw.host(), dw, kTol, kAtol, "matmul dw" + tag);

    // One output at a time (the other null).
    Dev<float> d_dinp2(dinp0), d_dw2(dw0);
    gpu::matmul_backward(d_dinp2.get(), nullptr, d_dout.get(), d_inp.get(), d_w.get(), s.N, s.C, s.OC);
    gpu::matmul_backward(nullptr, d_dw2.get(), d_dout.get(), d_inp.get(), d_w.get(), s.N, s.C, s.OC);
    expect_close(d_dinp2.host(), dinp, kTol, kAtol, "matmul dinp only" + tag);
    expect_close(d_dw2.host(), dw, kTol, kAtol, "matmul dw only" + tag);
  }
  // Empty reduction: zeros.
  Dev<float> d_out(std::vector<float>(12, 7.0f)), d_x(1), d_w(1);
  gpu::matmul_forward(d_out.get(), d_x.get(), d_w.get(), 3, 0, 4);
  expect_close(d_out.host(), std::vector<float>(12, 0.0f), 0.0, 0.0, "matmul C=0");
}

// The reduced-precision matmul tests: one random product out = inp w^T and its backward, computed by the CPU in
// fp32 (on whatever operands it is given) and by the GPU in a MatmulPrecision.
constexpr int kMmN = 96, kMmC = 512, kMmOC = 80;
struct MatmulOperands {
  std::vector<float> inp, w, dout;
  explicit MatmulOperands(unsigned seed) {
    std::mt19937 rng(seed);
    inp = randn(static_cast<size_t>(kMmN) * kMmC, rng), w = randn(static_cast<size_t>(kMmOC) * kMmC, rng);
    dout = randn(static_cast<size_t>(kMmN) * kMmOC, rng);
  }
};
struct MatmulResult {
  std::vector<float> out, dinp, dw;
};
MatmulResult cpu_matmul(const std::vector<float>& inp, const std::vector<float>& w, const std::vector<float>& dout) {
  MatmulResult r{std::vector<float>(static_cast<size_t>(kMmN) * kMmOC), std::vector<float>(inp.size(), 0.f),
                 std::vector<float>(w.size(), 0.f)};
  cpu::matmul_forward(r.out.data(), inp.data(), w.data(), kMmN, kMmC, kMmOC);
  cpu::matmul_backward(r.dinp.data(), r.dw.data(), dout.data(), inp.data(), w.data(), kMmN, kMmC, kMmOC);
  return r;
}
MatmulResult gpu_matmul(const MatmulOperands& p, gpu::MatmulPrecision precision) {  // restores fp32 after
  Dev<float> d_inp(p.inp), d_w(p.w), d_dout(p.dout), d_out(static_cast<size_t>(kMmN) * kMmOC), d_dinp(p.inp.size()),
      d_dw(p.w.size());
  gpu::set_matmul_precision(precision);
  gpu::matmul_forward(d_out.get(), d_inp.get(), d_w.get(), kMmN, kMmC, kMmOC);
  gpu::matmul_backward(d_dinp.get(), d_dw.get(), d_dout.get(), d_inp.get(), d_w.get(), kMmN, kMmC, kMmOC);
  gpu::set_matmul_precision(gpu::MatmulPrecision::fp32);
  return {d_out.host(), d_dinp.host(), d_dw.host()};
}

// TF32 tensor cores (train.precision = "tf32"): inputs rounded to a 10-bit mantissa, products accumulated in
// fp32, so each output is within ~1e-3 of the fp32 result relative to the row's scale; 1e-2 of the tensor's
// largest magnitude bounds it for C = 512 random inputs. The TF32 result must also differ from the fp32 one,
// or the mode did not switch.
TEST(CudaKernels, MatmulTf32) {
  REQUIRE_GPU();
  const MatmulOperands p(21);
  const MatmulResult cpu_fp32 = cpu_matmul(p.inp, p.w, p.dout);
  const MatmulResult tf32 = gpu_matmul(p, gpu::MatmulPrecision::tf32), fp32 = gpu_matmul(p, gpu::MatmulPrecision::fp32);
  expect_close(tf32.out, cpu_fp32.out, 0.0, 1e-2, "tf32 matmul out");
  expect_close(tf32.dinp, cpu_fp32.dinp, 0.0, 1e-2, "tf32 matmul dinp");
  expect_close(tf32.dw, cpu_fp32.dw, 0.0, 1e-2, "tf32 matmul dw");
  EXPECT_NE(tf32.out, fp32.out) << "TF32 gave the fp32 result bit for bit: the math mode did not switch";
}

// bf16: the GPU product equals the CPU's fp32 product of the operands rounded to bfloat16 (products of bf16
// values are exact in fp32; only the summation order differs: 1e-5 relative to the row's magnitude), and
// differs from the unrounded product by about bf16's precision (2^-8).
TEST(CudaKernels, MatmulBf16) {
  REQUIRE_GPU();
  const MatmulOperands p(22);
  const MatmulResult rounded = cpu_matmul(round_to_bf16(p.inp), round_to_bf16(p.w), round_to_bf16(p.dout));
  const MatmulResult exact = cpu_matmul(p.inp, p.w, p.dout);
  const MatmulResult bf16 = gpu_matmul(p, gpu::MatmulPrecision::bf16);
  expect_close(bf16.out, rounded.out, 1e-4, 1e-5, "bf16 matmul out");
  expect_close(bf16.dinp, rounded.dinp, 1e-4, 1e-5, "bf16 matmul dinp");
  expect_close(bf16.dw, rounded.dw, 1e-3, 1e-5, "bf16 matmul dw");
  expect_close(bf16.out, exact.out, 0.0, 3e-2, "bf16 matmul against the unrounded product");
  EXPECT_NE(bf16.out, exact.out) << "bf16 gave the fp32 product: the operands were not rounded";
}

TEST(CudaKernels, Embedding) {
  REQUIRE_GPU();
  std::mt19937 rng(2);
  const int V = 50, N = 300, C = 70;  // N > V: many repeated tokens
  std::uniform_int_distribution<int32_t> tok(0, V - 1);
  std::vector<int32_t> tokens(N);
  for (auto& t : tokens) t = tok(rng);
  const auto wte = randn(static_cast<size_t>(V) * C, rng), dout = randn(static_cast<size_t>(N) * C, rng);
  const auto dwte0 = randn(wte.size(), rng);
  std::vector<float> out(static_cast<size_t>(N) * C), dwte = dwte0;
  cpu::embedding_forward(out.data(), tokens.data(), wte.data(), N, C);
  cpu::embedding_backward(dwte.data(), dout.data(), tokens.data(), N, C);

  Dev<int32_t> d_tok(tokens);
  Dev<float> d_wte(wte), d_dout(dout), d_out(out.size()), d_dwte(dwte0);
  gpu::embedding_forward(d_out.get(), d_tok.get(), d_wte.get(), N, C);
  gpu::embedding_backward(d_dwte.get(), d_dout.get(), d_tok.get(), N, C);
  expect_close(d_out.host(), out, 0.0, 0.0, "embedding out (a copy: exact)");
  // The rows of each token added in the CPU's order (increasing row): the same bits.
  expect_bitwise_equal(d_dwte.host(), dwte, "embedding dwte");
  // A run of one token longer than the kernel's 8-row loads, and a single row.
  std::vector<int32_t> same(N, 7);
  same[5] = 3;
  std::vector<float> dwte_same = dwte0;
  cpu::embedding_backward(dwte_same.data(), dout.data(), same.data(), N, C);
  Dev<int32_t> d_same(same);
  Dev<float> d_dwte_same(dwte0);
  gpu::embedding_backward(d_dwte_same.get(), d_dout.get(), d_same.get(), N, C);
  expect_bitwise_equal(d_dwte_same.host(), dwte_same, "embedding dwte, one token but one");
}

TEST(CudaKernels, RMSNorm) {
  REQUIRE_GPU();
  std::mt19937 rng(3);
  struct S {
    int N, C;
  };
  for (const S s : {S{1, 8}, S{33, 300}, S{200, 768}, S{5, 1000}}) {
    const std::string tag = " N=" + std::to_string(s.N) + " C=" + std::to_string(s.C);
    const float eps = 1e-5f;
    const auto x = randn(static_cast<size_t>(s.N) * s.C, rng), w = randn(s.C, rng, 0.5f);
    const auto dout = randn(x.size(), rng), dx0 = randn(x.size(), rng), dw0 = randn(w.size(), rng);
    std::vector<float> out(x.size()), rstd(s.N), dx = dx0, dw = dw0;
    cpu::rmsnorm_forward(out.data(), rstd.data(), x.data(), w.data(), s.N, s.C, eps);
    cpu::rmsnorm_backward(dx.data(), dw.data(), dout.data(), x.data(), w.data(), rstd.data(), s.N, s.C);

    Dev<float> d_x(x), d_w(w), d_dout(dout), d_out(out.size()), d_rstd(s.N), d_dx(dx0), d_dw(dw0);
    gpu::rmsnorm_forward(d_out.get(), d_rstd.get(), d_x.get(), d_w.get(), s.N, s.C, eps);
    gpu::rmsnorm_backward(d_dx.get(), d_dw.get(), d_dout.get(), d_x.get(), d_w.get(), d_rstd.get(), s.N, s.C);
    expect_close(d_out.host(), out, kTol, kAtol, "rmsnorm out" + tag);
    expect_close(d_rstd.host(), rstd, kTol, 0.0, "rmsnorm rstd" + tag);
    expect_close(d_dx.host(), dx, kTol, kAtol, "rmsnorm dx" + tag);
    expect_close(d_dw.host(), dw, kTol, kAtol, "rmsnorm dw" + tag);

    // Null rstd in the forward; one gradient at a time in the backward.
    Dev<float> d_out2(out.size()), d_dx2(dx0), d_dw2(dw0);
    gpu::rmsnorm_forward(d_out2.get(), nullptr, d_x.get(), d_w.get(), s.N, s.C, eps);
    gpu::rmsnorm_backward(d_dx2.get(), nullptr, d_dout.get(), d_x.get(), d_w.get(), d_rstd.get(), s.N, s.C);
    gpu::rmsnorm_backward(nullptr, d_dw2.get(), d_dout.get(), d_x.get(), d_w.get(), d_rstd.get(), s.N, s.C);
    expect_close(d_out2.host(), out, kTol, kAtol, "rmsnorm out (rstd null)" + tag);
    expect_close(d_dx2.host(), dx, kTol, kAtol, "rmsnorm dx only" + tag);
    expect_close(d_dw2.host(), dw, kTol, kAtol, "rmsnorm dw only" + tag);
  }
}

TEST(CudaKernels, RoPE) {
  REQUIRE_GPU();
  std::mt19937 rng(4);
  struct S {
    int B, T, H, D;
    float theta;
  };
  for (const S s : {S{2, 17, 3, 32, 10000.0f}, S{1, 100, 2, 64, 500000.0f}, S{3, 5, 4, 6, 10000.0f}}) {
    const std::string tag = " T=" + std::to_string(s.T) + " D=" + std::to_string(s.D);
    const size_t n = static_cast<size_t>(s.B) * s.T * s.H * s.D;
    const auto x = randn(n, rng), dout = randn(n, rng), dx0 = randn(n, rng);
    std::vector<float> out(n), dx = dx0;
    cpu::rope_forward(out.data(), x.data(), s.B, s.T, s.H, s.D, s.theta);
    cpu::rope_backward(dx.data(), dout.data(), s.B, s.T, s.H, s.D, s.theta);

    Dev<float> d_x(x), d_out(n), d_dout(dout), d_dx(dx0);
    gpu::rope_forward(d_out.get(), d_x.get(), s.B, s.T, s.H, s.D, s.theta);
    gpu::rope_backward(d_dx.get(), d_dout.get(), s.B, s.T, s.H, s.D, s.theta);
    expect_close(d_out.host(), out, kTol, kAtol, "rope out" + tag);
    expect_close(d_dx.host(), dx, kTol, kAtol, "rope dx" + tag);
    gpu::rope_forward(d_x.get(), d_x.get(), s.B, s.T, s.H, s.D, s.theta);  // in place
    expect_close(d_x.host(), out, kTol, kAtol, "rope in place" + tag);
  }
}

struct AttnShape {
  int B, T, H, KV, D;
  size_t qn() const { return static_cast<size_t>(B) * T * H * D; }
  size_t kn() const { return static_cast<size_t>(B) * T * KV * D; }
  std::string tag() const {
    return " B=" + std::to_string(B) + " T=" + std::to_string(T) + " H=" + std::to_string(H) +
           " KV=" + std::to_string(KV) + " D=" + std::to_string(D);
  }
};

// T around and across the 32-row tile, GQA groups, head dims that are and are not multiples of 32 (all of 16: the
// bf16 tensor-core kernels take every one of them; the flash kernels are compiled per head dim up to 128, the tile
// kernels take up to 256).
const AttnShape kAttnShapes[] = {{1, 1, 1, 1, 16},  {2, 33, 4, 2, 32}, {1, 100, 4, 1, 64}, {2, 64, 2, 2, 128},
                                 {2, 70, 6, 3, 48}, {1, 257, 2, 1, 64}, {1, 65, 2, 1, 80}, {1, 40, 2, 1, 256}};

// Random inputs of one attention shape; the gradients start from random values (checks the += accumulation).
struct AttnCase {
  AttnShape s;
  std::vector<float> q, k, v, dout, dq0, dk0, dv0;
  AttnCase(const AttnShape& shape, std::mt19937& rng) : s(shape) {
    q = randn(s.qn(), rng), k = randn(s.kn(), rng), v = randn(s.kn(), rng), dout = randn(s.qn(), rng);
    dq0 = randn(s.qn(), rng), dk0 = randn(s.kn(), rng), dv0 = randn(s.kn(), rng);
  }
  size_t ln() const { return static_cast<size_t>(s.B) * s.H * s.T; }
};
struct AttnResult {
  std::vector<float> out, lse, dq, dk, dv;
};

AttnResult cpu_attention(const AttnCase& c, const std::vector<float>& q, const std::vector<float>& k,
                         const std::vector<float>& v, const std::vector<float>& dout) {
  const AttnShape& s = c.s;
  AttnResult r{std::vector<float>(s.qn()), std::vector<float>(c.ln()), c.dq0, c.dk0, c.dv0};
  cpu::attention_forward(r.out.data(), r.lse.data(), q.data(), k.data(), v.data(), s.B, s.T, s.H, s.KV, s.D);
  cpu::attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), dout.data(), q.data(), k.data(), v.data(),
                          r.out.data(), r.lse.data(), s.B, s.T, s.H, s.KV, s.D);
  return r;
}

// `offset` elements into each buffer: 1 leaves every tensor 4 bytes off the 16-byte alignment of an allocation.
AttnResult gpu_attention(const AttnCase& c, gpu::MatmulPrecision precision, int offset = 0) {  // restores fp32 after
  const AttnShape& s = c.s;
  auto at = [&](const std::vector<float>& x) {
    std::vector<float> y(offset, 0.0f);
    y.insert(y.end(), x.begin(), x.end());
    return y;
  };
  auto from = [&](const Dev<float>& d) {
    const std::vector<float> h = d.host();
    return std::vector<float>(h.begin() + offset, h.end());
  };
  Dev<float> d_q(at(c.q)), d_k(at(c.k)), d_v(at(c.v)), d_dout(at(c.dout)), d_out(s.qn() + offset),
      d_lse(c.ln() + offset), d_dq(at(c.dq0)), d_dk(at(c.dk0)), d_dv(at(c.dv0));
  struct Restore {  // fp32 again, also when a kernel refuses the shape
    ~Restore() { gpu::set_matmul_precision(gpu::MatmulPrecision::fp32); }
  } restore;
  gpu::set_matmul_precision(precision);
  float *q = d_q.get() + offset, *k = d_k.get() + offset, *v = d_v.get() + offset, *out = d_out.get() + offset,
        *lse = d_lse.get() + offset;
  gpu::attention_forward(out, lse, q, k, v, s.B, s.T, s.H, s.KV, s.D);
  gpu::attention_backward(d_dq.get() + offset, d_dk.get() + offset, d_dv.get() + offset, d_dout.get() + offset, q, k,
                          v, out, lse, s.B, s.T, s.H, s.KV, s.D);
  return {from(d_out), from(d_lse), from(d_dq), from(d_dk), from(d_dv)};
}

// Head dims up to 128 fit every GPU from sm_80 on, the 99 KiB of shared memory per block of sm_86/sm_89 included.
// Above, a kernel may need more than the device offers (bf16 tiles at 256 on sm_86/89, the fp32 dq kernel at 256
// on the A100); it must then refuse with the error naming both sizes, and the shape is skipped. Any other failure
// fails the test. Returns whether `run` ran.
template <class Run>
bool ran_or_refused_as_documented(const AttnShape& s, Run run) {
  try {
    run();
    return true;
  } catch (const std::runtime_error& e) {
    const std::string what = e.what();
    if (s.D <= 128 || what.find("bytes of shared memory per block, the device offers") == std::string::npos) throw;
    std::printf("[  REFUSED ] %s: %s (as documented for this device)\n", s.tag().c_str(), what.c_str());
    return false;
  }
}

void expect_attention_close(const AttnResult& got, const AttnResult& want, double rtol, double atol,
                            const std::string& tag) {
  expect_close(got.out, want.out, rtol, atol, "attention out" + tag);
  expect_close(got.lse, want.lse, rtol, atol, "attention lse" + tag);
  expect_close(got.dq, want.dq, rtol, atol, "attention dq" + tag);
  expect_close(got.dk, want.dk, rtol, atol, "attention dk" + tag);
  expect_close(got.dv, want.dv, rtol, atol, "attention dv" + tag);
}

void expect_attention_bitwise(const AttnResult& got, const AttnResult& want, const std::string& tag) {
  expect_bitwise_equal(got.out, want.out, "attention out rerun" + tag);
  expect_bitwise_equal(got.dq, want.dq, "attention dq rerun" + tag);
  expect_bitwise_equal(got.dk, want.dk, "attention dk rerun" + tag);
  expect_bitwise_equal(got.dv, want.dv, "attention dv rerun" + tag);
}

TEST(CudaKernels, Attention) {
  REQUIRE_GPU();
  std::mt19937 rng(5);
  for (const AttnShape& s : kAttnShapes) {
    const AttnCase c(s, rng);
    AttnResult gpu_fp32;
    if (!ran_or_refused_as_documented(s, [&] { gpu_fp32 = gpu_attention(c, gpu::MatmulPrecision::fp32); })) continue;
    expect_attention_close(gpu_fp32, cpu_attention(c, c.q, c.k, c.v, c.dout), kAttnTol, kAttnAtol, s.tag());
    // Deterministic: a second run gives the same bits.
    expect_attention_bitwise(gpu_attention(c, gpu::MatmulPrecision::fp32), gpu_fp32, s.tag());
  }
}

// train.precision = bf16: the tensor-core kernels (both: the FlashAttention-2-style ones, the default, and with
// ONESTEP_ATTENTION=tiles the tile kernels) against the CPU's fp32 attention of the bf16-rounded Q, K, V and dO.
// They also round P and dS to bf16 (relative error 2^-9 each) before those multiply, so they are held to 2e-2
// relative plus 1e-2 of each tensor's largest magnitude; deterministic too, the same on tensors off 16-byte
// alignment, and different from the fp32 kernels and (over several key tiles) from each other.
TEST(CudaKernels, AttentionBf16) {
  REQUIRE_GPU();
  std::mt19937 rng(15);
  for (const AttnShape& s : kAttnShapes) {
    const AttnCase c(s, rng);
    const AttnResult rounded = cpu_attention(c, round_to_bf16(c.q), round_to_bf16(c.k), round_to_bf16(c.v),
                                             round_to_bf16(c.dout));
    AttnResult fp32;
    const bool fp32_fits = ran_or_refused_as_documented(s, [&] { fp32 = gpu_attention(c, gpu::MatmulPrecision::fp32); });
    std::vector<AttnResult> results;
    for (const char* variant : {"tiles", "flash"}) {
      setenv("ONESTEP_ATTENTION", variant, 1);
      const std::string tag = std::string(" (bf16, ") + variant + ")" + s.tag();
      AttnResult bf16;
      if (!ran_or_refused_as_documented(s, [&] { bf16 = gpu_attention(c, gpu::MatmulPrecision::bf16); })) continue;
      expect_attention_close(bf16, rounded, 2e-2, 1e-2, tag);
      expect_attention_bitwise(gpu_attention(c, gpu::MatmulPrecision::bf16), bf16, tag);
      // Tensors off 16-byte alignment: the flash kernels then load element by element, to the same bits.
      expect_attention_bitwise(gpu_attention(c, gpu::MatmulPrecision::bf16, 1), bf16, tag + " unaligned");
      if (fp32_fits) {
        EXPECT_NE(bf16.out, fp32.out) << "bf16 attention gave the fp32 kernels' bits: not the tensor cores" << tag;
      }
      results.push_back(bf16);
    }
    unsetenv("ONESTEP_ATTENTION");
    if (s.T > 64 && results.size() == 2) {  // several key tiles: the two summation orders differ
      EXPECT_NE(results[0].dq, results[1].dq) << "the flash variant gave the tile kernels' bits: not selected" << s.tag();
    }
  }
}

TEST(CudaKernels, SwiGLU) {
  REQUIRE_GPU();
  std::mt19937 rng(6);
  const int N = 37, F = 123;
  const size_t n = static_cast<size_t>(N) * F;
  const auto gate = randn(n, rng, 3.0f), up = randn(n, rng), dout = randn(n, rng);
  const auto dg0 = randn(n, rng), du0 = randn(n, rng);
  std::vector<float> out(n), dg = dg0, du = du0;
  cpu::swiglu_forward(out.data(), gate.data(), up.data(), N, F);
  cpu::swiglu_backward(dg.data(), du.data(), dout.data(), gate.data(), up.data(), N, F);

  Dev<float> d_gate(gate), d_up(up), d_dout(dout), d_out(n), d_dg(dg0), d_du(du0);
  gpu::swiglu_forward(d_out.get(), d_gate.get(), d_up.get(), N, F);
  gpu::swiglu_backward(d_dg.get(), d_du.get(), d_dout.get(), d_gate.get(), d_up.get(), N, F);
  expect_close(d_out.host(), out, kTol, kAtol, "swiglu out");
  expect_close(d_dg.host(), dg, kTol, kAtol, "swiglu dgate");
  expect_close(d_du.host(), du, kTol, kAtol, "swiglu dup");

  Dev<float> d_dg2(dg0), d_du2(du0);
  gpu::swiglu_backward(d_dg2.get(), nullptr, d_dout.get(), d_gate.get(), d_up.get(), N, F);
  gpu::swiglu_backward(nullptr, d_du2.get(), d_dout.get(), d_gate.get(), d_up.get(), N, F);
  expect_close(d_dg2.host(), dg, kTol, kAtol, "swiglu dgate only");
  expect_close(d_du2.host(), du, kTol, kAtol, "swiglu dup only");

  // Aligned tensors go 8 elements at a time (n = 4551: 4544 so, the last 7 one by one); one element off 16-byte
  // alignment, all go one by one: the same bits.
  auto shifted = [](const std::vector<float>& x) {
    std::vector<float> y(1, 0.0f);
    y.insert(y.end(), x.begin(), x.end());
    return y;
  };
  auto unshifted = [](const Dev<float>& d) {
    const std::vector<float> h = d.host();
    return std::vector<float>(h.begin() + 1, h.end());
  };
  Dev<float> s_gate(shifted(gate)), s_up(shifted(up)), s_dout(shifted(dout)), s_out(n + 1), s_dg(shifted(dg0)),
      s_du(shifted(du0));
  gpu::swiglu_forward(s_out.get() + 1, s_gate.get() + 1, s_up.get() + 1, N, F);
  gpu::swiglu_backward(s_dg.get() + 1, s_du.get() + 1, s_dout.get() + 1, s_gate.get() + 1, s_up.get() + 1, N, F);
  expect_bitwise_equal(unshifted(s_out), d_out.host(), "swiglu out, unaligned");
  expect_bitwise_equal(unshifted(s_dg), d_dg.host(), "swiglu dgate, unaligned");
  expect_bitwise_equal(unshifted(s_du), d_du.host(), "swiglu dup, unaligned");
}

TEST(CudaKernels, CrossEntropy) {
  REQUIRE_GPU();
  std::mt19937 rng(7);
  struct S {
    int N, V;
  };
  for (const S s : {S{45, 1000}, S{8, 50257}, S{3, 7}}) {
    const std::string tag = " N=" + std::to_string(s.N) + " V=" + std::to_string(s.V);
    const auto logits = randn(static_cast<size_t>(s.N) * s.V, rng, 3.0f);
    std::uniform_int_distribution<int32_t> tok(0, s.V - 1);
    std::vector<int32_t> targets(s.N);
    int count = 0;
    for (int n = 0; n < s.N; ++n) {
      targets[n] = n % 5 == 3 ? -1 : tok(rng);  // some ignored rows
      count += targets[n] >= 0;
    }
    const float scale = 1.0f / static_cast<float>(std::max(count, 1));
    std::vector<float> losses(s.N), dlogits(logits.size());
    const double mean = cpu::cross_entropy_forward(losses.data(), logits.data(), targets.data(), s.N, s.V);
    cpu::cross_entropy_backward(dlogits.data(), logits.data(), targets.data(), s.N, s.V, scale);

    Dev<int32_t> d_t(targets);
    Dev<float> d_logits(logits), d_losses(s.N), d_dlogits(logits.size());
    const double g_mean = gpu::cross_entropy_forward(d_losses.get(), d_logits.get(), d_t.get(), s.N, s.V);
    EXPECT_NEAR(g_mean, mean, 1e-5 * std::max(1.0, std::fabs(mean))) << "cross-entropy mean" << tag;
    expect_close(d_losses.host(), losses, kTol, kAtol, "cross-entropy losses" + tag);
    const double g_mean2 = gpu::cross_entropy_forward(nullptr, d_logits.get(), d_t.get(), s.N, s.V);
    EXPECT_EQ(g_mean2, g_mean) << "cross-entropy mean with losses null" << tag;

    gpu::cross_entropy_backward(d_dlogits.get(), d_logits.get(), d_t.get(), s.N, s.V, scale);
    expect_close(d_dlogits.host(), dlogits, kTol, kAtol, "cross-entropy dlogits" + tag);
    // Fused classifier: the logits buffer becomes its own gradient.
    gpu::cross_entropy_backward(d_logits.get(), d_logits.get(), d_t.get(), s.N, s.V, scale);
    expect_close(d_logits.host(), dlogits, kTol, kAtol, "cross-entropy dlogits in place" + tag);
  }
}

TEST(CudaKernels, Elementwise) {
  REQUIRE_GPU();
  std::mt19937 rng(8);
  for (const int64_t n : {int64_t{1}, int64_t{1000}, int64_t{100003}, int64_t{3000017}}) {
    const std::string tag = " n=" + std::to_string(n);
    const auto x = randn(static_cast<size_t>(n), rng), y0 = randn(static_cast<size_t>(n), rng);
    std::vector<float> y = y0;
    cpu::add_inplace(y.data(), x.data(), n);
    Dev<float> d_x(x), d_y(y0);
    gpu::add_inplace(d_y.get(), d_x.get(), n);
    expect_close(d_y.host(), y, 0.0, 0.0, "add_inplace (exact)" + tag);

    cpu::scale_inplace(y.data(), 0.37f, n);
    gpu::scale_inplace(d_y.get(), 0.37f, n);
    expect_close(d_y.host(), y, 0.0, 0.0, "scale_inplace (exact)" + tag);

    const double want = cpu::sum_squares(x.data(), n);
    const double got = gpu::sum_squares(d_x.get(), n);
    EXPECT_NEAR(got, want, 1e-10 * want) << "sum_squares" << tag;
    EXPECT_EQ(gpu::sum_squares(d_x.get(), n), got) << "sum_squares is deterministic" << tag;
    Dev<double> d_ss(1);
    gpu::sum_squares_async(d_ss.get(), d_x.get(), n);
    EXPECT_EQ(d_ss.host()[0], got) << "sum_squares_async: the same sum, left on the device" << tag;
    // Pieces (a gradient's parameter tensors): each equals its own sum_squares call, an empty piece gives 0.
    const std::vector<std::pair<int64_t, int64_t>> pieces = {{0, n}, {n / 3, n - n / 3}, {n / 2, 0}, {0, (n + 1) / 2}};
    const std::vector<double> each = gpu::sum_squares_each(d_x.get(), pieces);
    ASSERT_EQ(each.size(), pieces.size());
    for (size_t i = 0; i < pieces.size(); ++i)
      EXPECT_EQ(each[i], gpu::sum_squares(d_x.get() + pieces[i].first, pieces[i].second))
          << "sum_squares_each, piece " << i << tag;
    EXPECT_EQ(each[0], got) << tag;
    EXPECT_EQ(each[2], 0.0) << tag;

    gpu::fill_zero(d_y.get(), n);
    expect_close(d_y.host(), std::vector<float>(static_cast<size_t>(n), 0.0f), 0.0, 0.0, "fill_zero" + tag);
  }
  EXPECT_EQ(gpu::sum_squares(nullptr, 0), 0.0);
  EXPECT_TRUE(gpu::sum_squares_each(nullptr, {}).empty());
  Dev<double> d_ss(std::vector<double>{7.0});
  gpu::sum_squares_async(d_ss.get(), nullptr, 0);
  EXPECT_EQ(d_ss.host()[0], 0.0) << "sum_squares_async of nothing writes 0";
}

// The CPU reference is the per-element formula of AdamWGroup::update (src/optim/adamw.cpp).
TEST(CudaKernels, AdamW) {
  REQUIRE_GPU();
  std::mt19937 rng(9);
  const int64_t n = 10007;
  const double lr = 3e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  auto x = randn(n, rng), m = std::vector<float>(n, 0.0f), v = std::vector<float>(n, 0.0f);
  std::vector<float> u(n);
  Dev<float> d_x(x), d_g(n), d_m(m), d_v(v), d_u(n);
  for (int64_t t = 1; t <= 4; ++t) {
    const double wd = t % 2 ? 0.1 : 0.0;  // decaying and non-decaying parameters
    const auto g = randn(n, rng, 0.1f);
    const gpu::AdamWScalars s = gpu::adamw_scalars(lr, beta1, beta2, eps, wd, t);
    // CPU reference, as in adamw.cpp.
    const double bc1 = 1.0 - std::pow(beta1, static_cast<double>(t));
    const double bc2 = 1.0 - std::pow(beta2, static_cast<double>(t));
    const float b1 = static_cast<float>(beta1), omb1 = static_cast<float>(1.0 - beta1);
    const float b2 = static_cast<float>(beta2), omb2 = static_cast<float>(1.0 - beta2);
    const float inv_bc1 = static_cast<float>(1.0 / bc1), inv_bc2 = static_cast<float>(1.0 / bc2);
    const float epsf = static_cast<float>(eps), lrf = static_cast<float>(lr), wdf = static_cast<float>(wd);
    for (int64_t i = 0; i < n; ++i) {
      const float gi = g[i];
      const float mi = b1 * m[i] + omb1 * gi;
      const float vi = b2 * v[i] + omb2 * (gi * gi);
      m[i] = mi;
      v[i] = vi;
      u[i] = lrf * ((mi * inv_bc1) / (std::sqrt(vi * inv_bc2) + epsf) + wdf * x[i]);
    }
    d_g.upload(g);
    gpu::adamw_update(d_u.get(), d_x.get(), d_g.get(), d_m.get(), d_v.get(), n, s);
    const std::string tag = " t=" + std::to_string(t);
    expect_close(d_u.host(), u, kTol, kAtol, "adamw u" + tag);
    expect_close(d_m.host(), m, kTol, kAtol, "adamw m" + tag);
    expect_close(d_v.host(), v, kTol, kAtol, "adamw v" + tag);
  }
}

}  // namespace
