// bf16 operand storage (train.precision = bf16; model/stage.h: OperandStorage): the kernels that write or read the
// bf16 activations against their fp32-storage versions, and the model on the GPU with CudaBf16Ops against the CPU
// oracle test::CpuBf16Ops.
//
// The kernels' arithmetic is the same in both storages, only the store (rounded to nearest even) or the load
// (exact) differs, so these checks are bit for bit: a kernel given bf16 inputs and writing a bf16 output gives the
// rounding of what its fp32 version gives on the widened inputs; a matmul on a bf16 input equals the fp32-input
// call on the same values.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "../model/cpu_bf16_ops.h"
#include "cuda_test_util.h"
#include "kernels/cuda/cuda_ops.h"
#include "kernels/cuda/ops_cuda.h"
#include "model/stage_compute.h"
#include "train/backend.h"

namespace {

using namespace onestep;
using namespace cuda_test;
namespace gpu = onestep::cuda;

std::vector<uint16_t> bf16_bits(const std::vector<float>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = to_bf16(x[i]).bits;
  return out;
}
std::vector<uint16_t> bits_of(const std::vector<bf16>& x) {
  std::vector<uint16_t> out(x.size());
  for (size_t i = 0; i < x.size(); ++i) out[i] = x[i].bits;
  return out;
}
std::vector<float> widened(const std::vector<bf16>& x) { return test::widened(x.data(), static_cast<int64_t>(x.size())); }
std::vector<bf16> narrowed(const std::vector<float>& x) {
  std::vector<bf16> out(x.size());
  test::narrow(out.data(), x);
  return out;
}

// Sets the process's matmul precision for one scope (it is process-wide; the other tests expect fp32).
struct PrecisionScope {
  explicit PrecisionScope(gpu::MatmulPrecision p) { gpu::set_matmul_precision(p); }
  ~PrecisionScope() { gpu::set_matmul_precision(gpu::MatmulPrecision::fp32); }
};

TEST(CudaBf16Operands, ElementwiseKernelsStoreTheRoundingOfTheirFp32Result) {
  REQUIRE_GPU();
  std::mt19937 rng(31);
  const int N = 37, C = 200, F = 333;
  const auto x = randn(static_cast<size_t>(N) * C, rng, 3.0f), w = randn(C, rng);
  Dev<float> d_x(x), d_w(w), d_out(x.size()), d_rstd(N), d_rstd16(N);
  Dev<bf16> d_out16(x.size());
  gpu::rmsnorm_forward(d_out.get(), d_rstd.get(), d_x.get(), d_w.get(), N, C, 1e-5f);
  gpu::rmsnorm_forward(d_out16.get(), d_rstd16.get(), d_x.get(), d_w.get(), N, C, 1e-5f);
  EXPECT_EQ(bits_of(d_out16.host()), bf16_bits(d_out.host())) << "rmsnorm";
  expect_bitwise_equal(d_rstd16.host(), d_rstd.host(), "rmsnorm rstd");

  // SwiGLU on bf16 gate and up; its backward reads them too, and accumulates into bf16 dgate and dup (from random
  // starting values: the += adds in fp32, then rounds once).
  const auto gate = round_to_bf16(randn(static_cast<size_t>(N) * F, rng, 3.0f)), up = round_to_bf16(randn(gate.size(), rng));
  const auto dh = randn(gate.size(), rng), dg0 = round_to_bf16(randn(gate.size(), rng)), du0 = round_to_bf16(randn(gate.size(), rng));
  Dev<float> d_gate(gate), d_up(up), d_h(gate.size()), d_dh(dh), d_dg(dg0), d_du(du0);
  Dev<bf16> d_gate16(narrowed(gate)), d_up16(narrowed(up)), d_h16(gate.size()), d_dg16(narrowed(dg0)), d_du16(narrowed(du0));
  gpu::swiglu_forward(d_h.get(), d_gate.get(), d_up.get(), N, F);
  gpu::swiglu_forward(d_h16.get(), d_gate16.get(), d_up16.get(), N, F);
  EXPECT_EQ(bits_of(d_h16.host()), bf16_bits(d_h.host())) << "swiglu";
  gpu::swiglu_backward(d_dg.get(), d_du.get(), d_dh.get(), d_gate.get(), d_up.get(), N, F);
  gpu::swiglu_backward(d_dg16.get(), d_du16.get(), d_dh.get(), d_gate16.get(), d_up16.get(), N, F);
  EXPECT_EQ(bits_of(d_dg16.host()), bf16_bits(d_dg.host())) << "swiglu dgate";
  EXPECT_EQ(bits_of(d_du16.host()), bf16_bits(d_du.host())) << "swiglu dup";

  // RoPE in place on bf16 q; its backward accumulates into a bf16 gradient.
  const int B = 2, T = 19, H = 3, D = 32;
  const size_t qn = static_cast<size_t>(B) * T * H * D;
  const auto q = round_to_bf16(randn(qn, rng)), dq = randn(qn, rng), dx0 = round_to_bf16(randn(qn, rng));
  Dev<float> d_q(q), d_dq(dq), d_dx(dx0);
  Dev<bf16> d_q16(narrowed(q)), d_dx16(narrowed(dx0));
  gpu::rope_forward(d_q.get(), d_q.get(), B, T, H, D, 10000.0f);
  gpu::rope_forward(d_q16.get(), d_q16.get(), B, T, H, D, 10000.0f);
  EXPECT_EQ(bits_of(d_q16.host()), bf16_bits(d_q.host())) << "rope";
  gpu::rope_backward(d_dx.get(), d_dq.get(), B, T, H, D, 10000.0f);
  gpu::rope_backward(d_dx16.get(), d_dq.get(), B, T, H, D, 10000.0f);
  EXPECT_EQ(bits_of(d_dx16.host()), bf16_bits(d_dx.host())) << "rope backward";

  Dev<bf16> d_zero16(narrowed(x));
  gpu::fill_zero(d_zero16.get(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(bits_of(d_zero16.host()), std::vector<uint16_t>(x.size(), 0)) << "fill_zero (bf16)";
}

// In bf16 precision the matmul rounds an fp32 input itself; handed the rounded input in bf16 it must give the same
// bits, forward and backward (dinp and dw accumulate into random starting values), and a bf16 output is the
// rounding of the fp32 one (cuBLAS accumulates in fp32 and rounds once).
TEST(CudaBf16Operands, MatmulOnBf16InputEqualsTheRoundedFp32Call) {
  REQUIRE_GPU();
  std::mt19937 rng(32);
  const int N = 96, C = 320, OC = 72;
  const auto inp = round_to_bf16(randn(static_cast<size_t>(N) * C, rng)), w = randn(static_cast<size_t>(OC) * C, rng);
  const auto dout = randn(static_cast<size_t>(N) * OC, rng), dinp0 = randn(inp.size(), rng), dw0 = randn(w.size(), rng);
  std::vector<bf16> inp16(inp.size());
  for (size_t i = 0; i < inp.size(); ++i) inp16[i] = to_bf16(inp[i]);
  const PrecisionScope bf16_matmuls(gpu::MatmulPrecision::bf16);
  Dev<float> d_inp(inp), d_w(w), d_dout(dout), d_out(static_cast<size_t>(N) * OC), d_out16(d_out.size());
  Dev<float> d_dinp(dinp0), d_dw(dw0), d_dinp16(dinp0), d_dw16(dw0);
  Dev<bf16> d_inp16(inp16);
  gpu::matmul_forward(d_out.get(), d_inp.get(), d_w.get(), N, C, OC);
  gpu::matmul_forward(d_out16.get(), d_inp16.get(), d_w.get(), N, C, OC);
  gpu::matmul_backward(d_dinp.get(), d_dw.get(), d_dout.get(), d_inp.get(), d_w.get(), N, C, OC);
  gpu::matmul_backward(d_dinp16.get(), d_dw16.get(), d_dout.get(), d_inp16.get(), d_w.get(), N, C, OC);
  expect_bitwise_equal(d_out16.host(), d_out.host(), "matmul out");
  // A bf16 output gradient (the bf16 gradient operands): the same as the fp32 one holding the same values.
  const auto dout_rounded = round_to_bf16(dout);
  Dev<float> d_dout_rounded(dout_rounded), d_dinp_r(dinp0), d_dw_r(dw0), d_dinp_r16(dinp0), d_dw_r16(dw0);
  Dev<bf16> d_dout16(narrowed(dout_rounded));
  gpu::matmul_backward(d_dinp_r.get(), d_dw_r.get(), d_dout_rounded.get(), d_inp16.get(), d_w.get(), N, C, OC);
  gpu::matmul_backward(d_dinp_r16.get(), d_dw_r16.get(), d_dout16.get(), d_inp16.get(), d_w.get(), N, C, OC);
  expect_bitwise_equal(d_dinp_r16.host(), d_dinp_r.host(), "matmul dinp (bf16 dout)");
  expect_bitwise_equal(d_dw_r16.host(), d_dw_r.host(), "matmul dw (bf16 dout)");
  Dev<bf16> d_out_bf16(d_out.size());
  gpu::matmul_forward(d_out_bf16.get(), d_inp16.get(), d_w.get(), N, C, OC);
  EXPECT_EQ(bits_of(d_out_bf16.host()), bf16_bits(d_out.host())) << "matmul bf16 out";
  expect_bitwise_equal(d_dinp16.host(), d_dinp.host(), "matmul dinp");
  expect_bitwise_equal(d_dw16.host(), d_dw.host(), "matmul dw");
}

// Weights rounded once (use_rounded_weights): while registered, this thread's products whose weight lies inside the
// registered range read the registered bf16 copy, forward and backward. Registered here is the rounding of OTHER
// weights (w2), so the products must give w2's results, bit for bit; another thread, and this one after
// unuse_rounded_weights, round w per call again.
TEST(CudaBf16Operands, ProductsReadRegisteredRoundedWeights) {
  REQUIRE_GPU();
  std::mt19937 rng(33);
  const int N = 40, C = 64, OC = 48, skip = 16 * C;  // the product's weight starts 16 rows into the registered range
  const auto inp = round_to_bf16(randn(static_cast<size_t>(N) * C, rng)), dout = randn(static_cast<size_t>(N) * OC, rng);
  const auto whole = randn(static_cast<size_t>(skip + OC * C), rng), whole2 = randn(whole.size(), rng);
  const PrecisionScope bf16_matmuls(gpu::MatmulPrecision::bf16);
  Dev<bf16> d_inp16(narrowed(inp)), d_whole2_16(narrowed(round_to_bf16(whole2)));
  Dev<float> d_whole(whole), d_whole2(whole2), d_dout(dout);
  auto product = [&](const float* w) {  // out, dinp, dw of the weight w
    Dev<float> out(static_cast<size_t>(N) * OC), dinp(inp.size()), dw(static_cast<size_t>(OC) * C);
    gpu::matmul_forward(out.get(), d_inp16.get(), w, N, C, OC);
    gpu::matmul_backward(dinp.get(), dw.get(), d_dout.get(), d_inp16.get(), w, N, C, OC);
    return std::vector<std::vector<float>>{out.host(), dinp.host(), dw.host()};
  };
  const auto own = product(d_whole.get() + skip), other = product(d_whole2.get() + skip);
  ASSERT_NE(own[0], other[0]);
  gpu::use_rounded_weights(d_whole.get(), d_whole2_16.get(), static_cast<int64_t>(whole.size()));
  const auto registered = product(d_whole.get() + skip);
  std::vector<std::vector<float>> elsewhere;
  std::thread([&] { elsewhere = product(d_whole.get() + skip); }).join();
  gpu::unuse_rounded_weights(d_whole.get());
  const auto after = product(d_whole.get() + skip);
  for (size_t k = 0; k < 3; ++k) {
    const std::string what = k == 0 ? "out" : k == 1 ? "dinp" : "dw";
    expect_bitwise_equal(registered[k], other[k], "registered copy read: " + what);
    expect_bitwise_equal(elsewhere[k], own[k], "another thread rounds per call: " + what);
    expect_bitwise_equal(after[k], own[k], "after unuse: " + what);
  }
}

// Every attention kernel (fp32 CUDA cores; bf16 tiles; flash) on bf16 q, k, v: the rounding of its output on the
// widened inputs, the same lse, and a backward (reading bf16 q, k, v and out) equal to the one on the widened values;
// the flash kernels also on bf16 tensors off 16-byte alignment.
TEST(CudaBf16Operands, AttentionReadsAndWritesBf16) {
  REQUIRE_GPU();
  std::mt19937 rng(33);
  struct Shape {
    int B, T, H, KV, D;
  };
  struct Variant {
    gpu::MatmulPrecision precision;
    const char* attention;
  };
  for (const Shape s : {Shape{2, 70, 4, 2, 64}, Shape{1, 33, 3, 1, 24}}) {
    const size_t qn = static_cast<size_t>(s.B) * s.T * s.H * s.D, kn = static_cast<size_t>(s.B) * s.T * s.KV * s.D;
    const size_t ln = static_cast<size_t>(s.B) * s.H * s.T;
    const auto q = round_to_bf16(randn(qn, rng)), k = round_to_bf16(randn(kn, rng)), v = round_to_bf16(randn(kn, rng));
    const auto dout = randn(qn, rng);
    for (const Variant var : {Variant{gpu::MatmulPrecision::fp32, "tiles"}, Variant{gpu::MatmulPrecision::bf16, "tiles"},
                              Variant{gpu::MatmulPrecision::bf16, "flash"}}) {
      const std::string tag = std::string(var.precision == gpu::MatmulPrecision::fp32 ? " fp32" : " bf16") + " " +
                              var.attention + " D=" + std::to_string(s.D);
      setenv("ONESTEP_ATTENTION", var.attention, 1);
      const PrecisionScope precision(var.precision);
      Dev<float> d_q(q), d_k(k), d_v(v), d_dout(dout), d_out(qn), d_lse(ln), d_lse16(ln);
      Dev<bf16> d_q16(narrowed(q)), d_k16(narrowed(k)), d_v16(narrowed(v)), d_out16(qn);
      gpu::attention_forward(d_out.get(), d_lse.get(), d_q.get(), d_k.get(), d_v.get(), s.B, s.T, s.H, s.KV, s.D);
      gpu::attention_forward(d_out16.get(), d_lse16.get(), d_q16.get(), d_k16.get(), d_v16.get(), s.B, s.T, s.H, s.KV,
                             s.D);
      EXPECT_EQ(bits_of(d_out16.host()), bf16_bits(d_out.host())) << "attention out" << tag;
      expect_bitwise_equal(d_lse16.host(), d_lse.host(), "attention lse" + tag);

      Dev<float> d_out_widened(widened(d_out16.host()));
      Dev<float> d_dq(qn), d_dk(kn), d_dv(kn), d_dq16(qn), d_dk16(kn), d_dv16(kn);
      gpu::attention_backward(d_dq.get(), d_dk.get(), d_dv.get(), d_dout.get(), d_q.get(), d_k.get(), d_v.get(),
                              d_out_widened.get(), d_lse.get(), s.B, s.T, s.H, s.KV, s.D);
      gpu::attention_backward(d_dq16.get(), d_dk16.get(), d_dv16.get(), d_dout.get(), d_q16.get(), d_k16.get(),
                              d_v16.get(), d_out16.get(), d_lse.get(), s.B, s.T, s.H, s.KV, s.D);
      expect_bitwise_equal(d_dq16.host(), d_dq.host(), "attention dq" + tag);
      expect_bitwise_equal(d_dk16.host(), d_dk.host(), "attention dk" + tag);
      expect_bitwise_equal(d_dv16.host(), d_dv.host(), "attention dv" + tag);
      if (std::string(var.attention) != "flash") continue;
      // The bf16 tensors one element (2 bytes) off 16-byte alignment: the flash kernels load them element by element
      // instead of in 16-byte pieces, to the same bits.
      auto shifted = [](std::vector<bf16> x) {
        x.insert(x.begin(), bf16{0});
        return x;
      };
      Dev<bf16> u_q(shifted(narrowed(q))), u_k(shifted(narrowed(k))), u_v(shifted(narrowed(v))), u_out(qn + 1);
      Dev<float> u_lse(ln), u_dq(qn), u_dk(kn), u_dv(kn);
      gpu::attention_forward(u_out.get() + 1, u_lse.get(), u_q.get() + 1, u_k.get() + 1, u_v.get() + 1, s.B, s.T, s.H,
                             s.KV, s.D);
      const std::vector<bf16> out_u = u_out.host();
      EXPECT_EQ(bits_of({out_u.begin() + 1, out_u.end()}), bits_of(d_out16.host())) << "attention out unaligned" << tag;
      gpu::attention_backward(u_dq.get(), u_dk.get(), u_dv.get(), d_dout.get(), u_q.get() + 1, u_k.get() + 1,
                              u_v.get() + 1, u_out.get() + 1, u_lse.get(), s.B, s.T, s.H, s.KV, s.D);
      expect_bitwise_equal(u_dq.host(), d_dq16.host(), "attention dq unaligned" + tag);
      expect_bitwise_equal(u_dk.host(), d_dk16.host(), "attention dk unaligned" + tag);
      expect_bitwise_equal(u_dv.host(), d_dv16.host(), "attention dv unaligned" + tag);
    }
    unsetenv("ONESTEP_ATTENTION");
  }
}

// The head's bf16 logits (N x vocab, the largest buffer): the loss on them equals the fp32 loss on the widened logits
// bit for bit (rows without a target included), and dlogits, in place as in the fused classifier or not, is the
// rounding of the fp32 kernel's dlogits, the target's "- scale" included (one rounding, not two).
TEST(CudaBf16Operands, CrossEntropyOnBf16Logits) {
  REQUIRE_GPU();
  std::mt19937 rng(36);
  const int N = 29, V = 1003;
  std::vector<int32_t> targets(N);
  for (int n = 0; n < N; ++n) targets[n] = (n % 7 == 5) ? -1 : static_cast<int32_t>(rng() % V);
  auto logits = randn(static_cast<size_t>(N) * V, rng, 4.0f);
  for (int j = 0; j < V; ++j) logits[3 * V + j] += 512.0f;  // a row of large logits: the max is subtracted first
  // Confident rows (the target's probability near 1/2 to 1), where rounding p_t before "- scale" would show.
  for (int n = 0; n < N; n += 2)
    if (targets[n] >= 0) logits[static_cast<size_t>(n) * V + targets[n]] += 14.0f + 0.25f * n;
  logits = round_to_bf16(logits);
  const float scale = 0.75f / N;
  Dev<int32_t> d_t(targets);
  Dev<float> d_logits(logits), d_losses(N), d_losses16(N);
  Dev<bf16> d_logits16(narrowed(logits)), d_d16(logits.size());
  const double mean = gpu::cross_entropy_forward(d_losses.get(), d_logits.get(), d_t.get(), N, V);
  const double mean16 = gpu::cross_entropy_forward(d_losses16.get(), d_logits16.get(), d_t.get(), N, V);
  EXPECT_EQ(mean16, mean);
  EXPECT_GT(mean, 1.0);
  expect_bitwise_equal(d_losses16.host(), d_losses.host(), "cross-entropy row losses (bf16 logits)");

  gpu::cross_entropy_backward(d_d16.get(), d_logits16.get(), d_t.get(), N, V, scale);
  gpu::cross_entropy_backward(d_logits.get(), d_logits.get(), d_t.get(), N, V, scale);  // fp32, in place
  const auto d32 = d_logits.host();
  EXPECT_EQ(bits_of(d_d16.host()), bf16_bits(d32)) << "dlogits (bf16)";
  gpu::cross_entropy_backward(d_logits16.get(), d_logits16.get(), d_t.get(), N, V, scale);
  EXPECT_EQ(bits_of(d_logits16.host()), bf16_bits(d32)) << "dlogits (bf16, in place)";
  // The fp32 gradient itself: each valid row sums to ~0 (softmax minus one-hot), rows without a target are 0.
  for (int n = 0; n < N; ++n) {
    double sum = 0, abs_sum = 0;
    for (int j = 0; j < V; ++j) sum += d32[static_cast<size_t>(n) * V + j], abs_sum += std::abs(d32[static_cast<size_t>(n) * V + j]);
    if (targets[n] < 0) EXPECT_EQ(abs_sum, 0.0) << "row " << n;
    else EXPECT_NEAR(sum, 0.0, 1e-6) << "row " << n;
  }
}

TEST(CudaBf16Operands, ConvertingCopiesRoundAsTheHost) {
  REQUIRE_GPU();
  std::mt19937 rng(34);
  auto x = randn(100003, rng, 5.0f);
  x[0] = 1.00390625f, x[1] = -1.01171875f;  // ties: to 1 (even below) and to -1.015625 (even above)
  Dev<float> d_x(x), d_back(x.size());
  Dev<bf16> d_x16(x.size());
  gpu::copy_device(d_x16.get(), d_x.get(), static_cast<int64_t>(x.size()));
  EXPECT_EQ(bits_of(d_x16.host()), bf16_bits(x));
  gpu::copy_device(d_back.get(), d_x16.get(), static_cast<int64_t>(x.size()));
  expect_bitwise_equal(d_back.host(), round_to_bf16(x), "bf16 -> fp32");
}

// The backend stores the operands in bf16 exactly in bf16 precision.
TEST(CudaBf16Operands, BackendPicksTheStorageOfThePrecision) {
  REQUIRE_GPU();
  const Backend& be = backend_for(Device::cuda);
  EXPECT_EQ(be.operand_storage(), OperandStorage::fp32);
  {
    const PrecisionScope tf32(gpu::MatmulPrecision::tf32);
    EXPECT_EQ(be.operand_storage(), OperandStorage::fp32);
  }
  const PrecisionScope bf16_matmuls(gpu::MatmulPrecision::bf16);
  EXPECT_EQ(be.operand_storage(), OperandStorage::bf16);
  ModelConfig c;
  c.vocab_size = 31, c.d_model = 32, c.n_layers = 1, c.n_heads = 2, c.n_kv_heads = 2, c.ffn_hidden = 48, c.seq_len = 8;
  const Stage s(c, whole_model(c));
  EXPECT_EQ(be.make_activations(s, 2, 8)->ln1.storage(), OperandStorage::bf16);
}

// The whole model and two stages cut inside the MLP (before the up part: the norm's bf16 output crosses widened)
// with CudaBf16Ops against test::CpuBf16Ops. The GPU's bf16 attention also rounds P, dO and dS, which the
// oracle does not, so they agree to bf16 accuracy: the loss to 1e-2 relative, each parameter's gradient to 5e-2 of
// its norm (relative L2); what crosses the cut is compared the same way.
TEST(CudaBf16Operands, ModelMatchesTheCpuOracle) {
  REQUIRE_GPU();
  ModelConfig c;
  c.vocab_size = 97, c.d_model = 64, c.n_layers = 2, c.n_heads = 4, c.n_kv_heads = 2, c.ffn_hidden = 96;
  c.seq_len = 24, c.rope_theta = 10000.0, c.norm_eps = 1e-5, c.tie_embeddings = true;
  const int B = 2, T = c.seq_len, N = B * T;
  std::mt19937 rng(35);
  std::uniform_int_distribution<int> tok(0, c.vocab_size - 1);
  std::vector<int32_t> tokens(N), targets(N);
  for (int i = 0; i < N; ++i) tokens[i] = tok(rng), targets[i] = tok(rng);
  const PrecisionScope bf16_matmuls(gpu::MatmulPrecision::bf16);
  const CudaBf16Ops gpu_ops;
  const test::CpuBf16Ops cpu_ops;

  auto relative_l2 = [](const std::vector<float>& got, const std::vector<float>& want, int64_t off, int64_t n) {
    double err = 0, norm = 0;
    for (int64_t i = off; i < off + n; ++i) err += std::pow(got[i] - want[i], 2), norm += std::pow(want[i], 2);
    return std::sqrt(err / std::max(norm, 1e-30));
  };
  struct Side {
    Stage stage;
    std::vector<float> w, g;
    Dev<float> d_w, d_g;
    std::unique_ptr<Activations> a, da;
    std::unique_ptr<BackwardScratch> s, ds;
    Side(const ModelConfig& c, StageSpec spec, int B, int T)
        : stage(c, spec), w(static_cast<size_t>(stage.params().total())), g(w.size(), 0.f), d_w(w.size()), d_g(w.size()),
          a(stage.make_activations(B, T, Device::cpu, OperandStorage::bf16)),
          da(stage.make_activations(B, T, Device::cuda, OperandStorage::bf16)),
          s(stage.make_scratch(B, T, Device::cpu, OperandStorage::bf16)),
          ds(stage.make_scratch(B, T, Device::cuda, OperandStorage::bf16)) {
      stage.init_weights(w.data(), 3);
      d_w.upload(w);
    }
  };
  auto compare_grads = [&](const Side& side, const std::string& tag) {
    const auto dg = side.d_g.host();
    for (const auto& p : side.stage.params().all())
      EXPECT_LT(relative_l2(dg, side.g, p.offset, p.numel), 5e-2) << "grad of " << p.name << tag;
  };

  Side whole(c, whole_model(c), B, T);
  const double loss = whole.stage.forward_on(cpu_ops, whole.w.data(), *whole.a, tokens.data(), nullptr, targets.data());
  const double d_loss =
      whole.stage.forward_on(gpu_ops, whole.d_w.get(), *whole.da, tokens.data(), nullptr, targets.data());
  EXPECT_NEAR(d_loss, loss, 1e-2 * loss);
  whole.stage.backward_on(cpu_ops, whole.w.data(), whole.g.data(), *whole.a, *whole.s, nullptr, 1.f);
  whole.stage.backward_on(gpu_ops, whole.d_w.get(), whole.d_g.get(), *whole.da, *whole.ds, nullptr, 1.f);
  compare_grads(whole, " (whole model)");

  const int cut = 6;  // before block 1's up part
  Side s0(c, StageSpec{0, cut, true, false}, B, T), s1(c, StageSpec{cut, model_units(c), false, true}, B, T);
  s0.stage.forward_on(cpu_ops, s0.w.data(), *s0.a, tokens.data(), nullptr, nullptr);
  s0.stage.forward_on(gpu_ops, s0.d_w.get(), *s0.da, tokens.data(), nullptr, nullptr);
  const double l1 = s1.stage.forward_on(cpu_ops, s1.w.data(), *s1.a, nullptr, s0.stage.output(*s0.a), targets.data());
  const double d_l1 =
      s1.stage.forward_on(gpu_ops, s1.d_w.get(), *s1.da, nullptr, s0.stage.output(*s0.da), targets.data());
  EXPECT_NEAR(d_l1, l1, 1e-2 * l1);
  EXPECT_NEAR(d_l1, d_loss, 1e-6 * d_loss) << "the split GPU model computes what the whole GPU model computes";
  s1.stage.backward_on(cpu_ops, s1.w.data(), s1.g.data(), *s1.a, *s1.s, nullptr, 1.f);
  s1.stage.backward_on(gpu_ops, s1.d_w.get(), s1.d_g.get(), *s1.da, *s1.ds, nullptr, 1.f);
  const auto crossing = s1.da->d_input.to_host();
  EXPECT_LT(relative_l2(crossing, s1.a->d_input.to_host(), 0, static_cast<int64_t>(crossing.size())), 5e-2)
      << "gradient crossing the cut";
  s0.stage.backward_on(cpu_ops, s0.w.data(), s0.g.data(), *s0.a, *s0.s, s1.a->d_input.data(), 1.f);
  s0.stage.backward_on(gpu_ops, s0.d_w.get(), s0.d_g.get(), *s0.da, *s0.ds, s1.da->d_input.data(), 1.f);
  compare_grads(s0, " (stage 0)");
  compare_grads(s1, " (stage 1)");
}

}  // namespace
