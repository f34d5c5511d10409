// The GPU optimizers (gpu/cuda_optimizer.h: make_cuda_optimizer, over kernels/cuda/optim_cuda.h) against the
// CPU optimizers themselves (src/optim, built by make_optimizer), and the CUDA delay corrections against
// optimizer_step (src/train/stage_state.cpp), on random inputs for 3 steps, fp32. Both sides see the same
// weights and gradients at every step (the CPU's trajectory x <- x - u is uploaded to the device), their
// optimizer states evolve separately, and after every step the update u and every state tensor are compared
// by checkpoint name and shape (a missing or extra one fails). Without a GPU every test skips with a message.
//
// Tolerances, |gpu - cpu| <= rtol |cpu| + atol max|cpu| per tensor:
//  - element-wise updates and states (AdamW, MARS, Adan, Lion, SGD, the Muon momentum, EF, DC-ASGD):
//    rtol = atol = 1e-6. Same expressions in fp32 on both sides; they can differ only where one compiler
//    contracts a*b+c into an FMA and the other does not (a few ulps after 3 steps), and, for MARS, in the
//    last bits of the double norm of c. Lion's sign(c) is compared except where c is within rounding of 0.
//  - Newton–Schulz and what depends on it (Muon / NorMuon matrix updates, NorMuon's v_row): rtol = atol
//    = 1e-4. OpenBLAS and cuBLAS sum the sgemm products in different orders, and 5 iterations of the
//    quintic (slope up to a = 3.44 on small singular values) amplify that: the CPU's fp32 result alone is
//    off the double reference (tests/optim/reference.h) by up to ~3e-6 max|X| on these shapes.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstdint>
#include <functional>
#include <utility>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda_test_util.h"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/optim_cuda.h"
#include "core/error.h"
#include "gpu/cuda_optimizer.h"
#include "optim/adamw.h"
#include "optim/mars.h"
#include "optim/muon.h"
#include "optim/linalg.h"
#include "optim/newton_schulz.h"
#include "optim/optimizer.h"
#include "optim/soap.h"
#include "train/stage_state.h"

namespace {

using namespace onestep;
using namespace cuda_test;
namespace gpu = onestep::cuda;

struct Tol {
  double rtol, atol;
};
constexpr Tol kElem{1e-6, 1e-6};  // element-wise (see the header comment)
constexpr Tol kNs{1e-4, 1e-4};    // Newton–Schulz and what depends on it

constexpr int kSteps = 3;
constexpr double kLrScale[kSteps] = {1.0, 0.5, 0.8};

// Every role, and matrices in the three orientations of Newton–Schulz: square, tall (transposed, 150 rows:
// partial 32 x 32 tiles) and wide. The norm gain gets no weight decay; the embedding is large enough for
// many blocks.
ParamTable make_table() {
  ParamTable t;
  t.add("model.embed_tokens.weight", {1000, 64}, ParamRole::embedding);
  t.add("model.layers.0.self_attn.q_proj.weight", {64, 64}, ParamRole::matrix);
  t.add("model.layers.0.mlp.up_proj.weight", {150, 64}, ParamRole::matrix);
  t.add("model.layers.0.mlp.down_proj.weight", {64, 150}, ParamRole::matrix);
  // A second layer's: the Muon family batches the Newton–Schulz of matrices of one shape (groups of 2 here).
  t.add("model.layers.1.self_attn.q_proj.weight", {64, 64}, ParamRole::matrix);
  t.add("model.layers.1.mlp.up_proj.weight", {150, 64}, ParamRole::matrix);
  t.add("model.norm.weight", {64}, ParamRole::norm);
  t.add("lm_head.weight", {97, 64}, ParamRole::head);
  return t;
}

// Gradients: N(0, 1), except q_proj's at 1e-3 (its MARS norm ||c|| stays below 1: the unscaled branch).
std::vector<float> make_grad(const ParamTable& t, std::mt19937& rng) {
  std::vector<float> g(static_cast<size_t>(t.total()), 0.0f);
  for (const auto& p : t.all()) {
    const float sd = p.name == "model.layers.0.self_attn.q_proj.weight" ? 1e-3f : 1.0f;
    const auto v = randn(static_cast<size_t>(p.numel), rng, sd);
    std::copy(v.begin(), v.end(), g.begin() + p.offset);
  }
  return g;
}

std::vector<float> slice(const std::vector<float>& v, int64_t off, int64_t n) {
  return std::vector<float>(v.begin() + off, v.begin() + off + n);
}

// Elements (flat indices) whose update is not compared at this step, decided from the CPU optimizer's
// state before the step and the step's gradient (Lion's sign of a c within rounding of 0).
using Exclude = std::function<std::vector<char>(Optimizer& cpu_before, const std::vector<float>& g)>;

std::vector<float> download(const float* dev, int64_t n) {  // a state tensor the GPU optimizer owns
  std::vector<float> h(static_cast<size_t>(n));
  device_memory::copy(h.data(), dev, sizeof(float) * h.size(), device_memory::Copy::device_to_host);
  return h;
}

// The CPU optimizer named by c.name (make_optimizer, defaults resolved) against a GPU optimizer (by default
// make_cuda_optimizer of the same config) for kSteps steps, with the lr scales given.
using GradFn = std::function<std::vector<float>(const ParamTable&, std::mt19937&)>;
void compare_optimizer(const OptimConfig& c, const std::function<Tol(const ParamInfo&)>& u_tol,
                       const std::function<Tol(const std::string&)>& state_tol, const Exclude& exclude = nullptr,
                       const double* lr_scales = kLrScale, std::unique_ptr<Optimizer> gpu_opt = nullptr,
                       const ParamTable& t = make_table(), const GradFn& make_grads = make_grad) {
  std::mt19937 rng(42);
  std::vector<float> x(static_cast<size_t>(t.total()), 0.0f);
  for (const auto& p : t.all()) {
    const auto v = randn(static_cast<size_t>(p.numel), rng, 0.5f);
    std::copy(v.begin(), v.end(), x.begin() + p.offset);
  }
  std::vector<float> u(x.size(), 0.0f);
  auto cpu = make_optimizer(c, t);
  auto gpu_o = gpu_opt ? std::move(gpu_opt) : make_cuda_optimizer(c, t);
  Dev<float> d_x(x.size()), d_g(x.size()), d_u(x.size());
  for (int64_t step = 1; step <= kSteps; ++step) {
    const std::string tag = " (" + c.name + ", step " + std::to_string(step) + ")";
    const double ls = lr_scales[step - 1];
    const auto g = make_grads(t, rng);
    const std::vector<char> skip = exclude ? exclude(*cpu, g) : std::vector<char>();
    cpu->compute_update(u.data(), x.data(), g.data(), ls);
    d_x.upload(x);
    d_g.upload(g);
    gpu_o->compute_update(d_u.get(), d_x.get(), d_g.get(), ls);
    std::vector<float> ug = d_u.host();
    int skipped = 0;
    for (size_t i = 0; i < skip.size(); ++i)
      if (skip[i]) ug[i] = u[i], ++skipped;
    EXPECT_LE(skipped, 3) << "too many elements excluded" << tag;
    for (const auto& p : t.all()) {
      const Tol tol = u_tol(p);
      expect_close(slice(ug, p.offset, p.numel), slice(u, p.offset, p.numel), tol.rtol, tol.atol,
                   "u of " + p.name + tag);
    }
    EXPECT_EQ(gpu_o->steps_taken(), cpu->steps_taken()) << tag;
    std::map<std::string, StateBuffer> gpu_state;
    for (const auto& b : gpu_o->state_buffers()) gpu_state[b.name] = b;
    const auto bufs = cpu->state_buffers();
    for (const auto& b : bufs) {
      const int64_t n = shape_numel(b.shape);
      auto it = gpu_state.find(b.name);
      if (it == gpu_state.end()) {
        ADD_FAILURE() << "no GPU state buffer " << b.name << tag;
        continue;
      }
      ASSERT_EQ(it->second.shape, b.shape) << b.name;
      const Tol tol = state_tol(b.name);
      expect_close(download(it->second.data, n), std::vector<float>(b.data, b.data + n), tol.rtol, tol.atol,
                   b.name + tag);
    }
    EXPECT_EQ(gpu_state.size(), bufs.size()) << "the GPU keeps state the CPU does not" << tag;
    for (size_t i = 0; i < x.size(); ++i) x[i] -= u[i];
  }
}

OptimConfig config(const std::string& name) {
  OptimConfig c;
  c.name = name;
  resolve_optim_defaults(c, "test");
  return c;
}

Tol elem(const ParamInfo&) { return kElem; }
Tol elem_state(const std::string&) { return kElem; }
Tol ns_on_matrices(const ParamInfo& p) { return muon_takes(p) ? kNs : kElem; }

// ---------------------------------------------------------------------------------------------------------
// Element-wise optimizers: every update and state buffer within kElem of the CPU's. MARS covers both of its
// groups (MARS on the 2-D parameters, AdamW with MARS's lr, betas and eps on the 1-D ones).
TEST(CudaOptim, ElementWiseOptimizers) {
  REQUIRE_GPU();
  for (const char* name : {"adamw", "mars", "adan"}) {
    SCOPED_TRACE(name);
    compare_optimizer(config(name), elem, elem_state);
  }
}

TEST(CudaOptim, Lion) {
  REQUIRE_GPU();
  const OptimConfig c = config("lion");
  // sign(c) may legitimately differ where c = b1 m + (1-b1) g is within a few ulps of 0 (FMA contraction
  // differs): those elements' u is not compared (at most a few; their m still is).
  const Exclude near_zero = [&](Optimizer& cpu, const std::vector<float>& g) {
    const ParamTable t = make_table();
    std::vector<char> skip(g.size(), 0);
    for (const auto& b : cpu.state_buffers()) {
      const ParamInfo& p = t.at(b.name.substr(std::string("lion.m.").size()));
      for (int64_t i = 0; i < p.numel; ++i) {
        const double a = c.beta1 * b.data[i], d = (1.0 - c.beta1) * g[p.offset + i];
        if (std::fabs(a + d) <= 1e-5 * (std::fabs(a) + std::fabs(d))) skip[p.offset + i] = 1;
      }
    }
    return skip;
  };
  compare_optimizer(c, elem, elem_state, near_zero);
}

TEST(CudaOptim, SgdMomentumAndNesterov) {
  REQUIRE_GPU();
  for (bool nesterov : {true, false}) {
    OptimConfig c = config("sgd");
    c.nesterov = nesterov;
    SCOPED_TRACE(nesterov ? "nesterov" : "plain momentum");
    compare_optimizer(c, elem, elem_state);
  }
}

// The Muon family's momentum pass alone, as an Optimizer whose update is q. Its CPU counterpart is private
// to MuonMatrices, but it is SGD's recursion exactly (B = mu B + g; q = g + mu B or B), and SGD with lr 1
// (lr scale 1) and no weight decay returns u = 1 * (q + 0 * x) = q bit for bit: so the CPU Sgd is the
// reference, its state the momentum B.
class MomentumPass final : public Optimizer {
 public:
  MomentumPass(const ParamTable& t, float mu, bool nesterov) : t_table(t), mu_(mu), nesterov_(nesterov) {
    for (const auto& p : t.all()) buffers_.push_back(std::make_unique<Dev<float>>(static_cast<size_t>(p.numel)));
  }
  void compute_update(float* u, const float*, const float* g, double) override {
    ++t_;
    for (size_t k = 0; k < t_table.size(); ++k) {
      const ParamInfo& p = t_table.all()[k];
      gpu::muon_momentum(u + p.offset, buffers_[k]->get(), g + p.offset, p.numel, mu_, nesterov_);
    }
  }
  std::vector<StateBuffer> state_buffers() override {
    std::vector<StateBuffer> out;
    for (size_t k = 0; k < t_table.size(); ++k)
      out.push_back({"sgd.momentum." + t_table.all()[k].name, buffers_[k]->get(), t_table.all()[k].shape});
    return out;
  }

 private:
  ParamTable t_table;
  float mu_;
  bool nesterov_;
  std::vector<std::unique_ptr<Dev<float>>> buffers_;
};

TEST(CudaOptim, MuonMomentumPass) {
  REQUIRE_GPU();
  static constexpr double kOnes[kSteps] = {1.0, 1.0, 1.0};
  for (bool nesterov : {true, false}) {
    OptimConfig c = config("sgd");
    c.lr = 1.0, c.momentum = 0.95, c.nesterov = nesterov, c.weight_decay = 0.0;
    SCOPED_TRACE(nesterov ? "nesterov" : "plain momentum");
    compare_optimizer(c, elem, elem_state, nullptr, kOnes,
                      std::make_unique<MomentumPass>(make_table(), static_cast<float>(c.momentum), c.nesterov));
  }
}

// Newton–Schulz alone: the CPU's newton_schulz and the GPU's on the same random matrices (3 per shape),
// square, tall (transposed), wide, single row / column and odd sizes; in place must equal out of place.
TEST(CudaOptim, NewtonSchulz) {
  REQUIRE_GPU();
  std::mt19937 rng(11);
  struct S {
    int rows, cols;
  };
  for (const S s : {S{64, 64}, S{150, 64}, S{64, 150}, S{1, 40}, S{40, 1}, S{7, 5}, S{33, 257}}) {
    NewtonSchulzWorkspace ws;
    for (int k = 0; k < 3; ++k) {
      const std::string tag = " " + std::to_string(s.rows) + "x" + std::to_string(s.cols) + " #" + std::to_string(k);
      const auto G = randn(static_cast<size_t>(s.rows) * s.cols, rng, k == 2 ? 1e-3f : 1.0f);
      std::vector<float> want(G.size());
      newton_schulz(want.data(), G.data(), s.rows, s.cols, 5, 1e-7f, ws);
      Dev<float> d_G(G), d_out(G.size());
      gpu::newton_schulz(d_out.get(), d_G.get(), s.rows, s.cols, 5, 1e-7f);
      const auto got = d_out.host();
      expect_close(got, want, kNs.rtol, kNs.atol, "newton_schulz" + tag);
      gpu::newton_schulz(d_G.get(), d_G.get(), s.rows, s.cols, 5, 1e-7f);  // out aliases G
      expect_bitwise_equal(d_G.host(), got, "newton_schulz in place" + tag);
    }
  }
}

// Batched Newton–Schulz (a shape's matrices through one cuBLAS call per product): each output equals the matrix's
// own newton_schulz, out of place and in place, wide and tall (transposed) shapes, one batch and batches capped at 2
// matrices by the scratch limit (chunks of 2, 2, 1), in fp32 and in bf16. cuBLAS may pick other kernels for a
// batch, which sum in another order: fp32 within rtol = atol = 1e-4; bf16 within 1e-2, since each of the 5
// iterations rounds its operands to bf16 (2^-9 relative), where one flipped rounding moves the next products (an
// H100 measured up to 1.8e-3 of the largest magnitude). A wrong matrix or chunk would be off by O(1).
TEST(CudaOptim, NewtonSchulzBatchedEqualsOneByOne) {
  REQUIRE_GPU();
  std::mt19937 rng(13);
  for (const auto precision : {gpu::MatmulPrecision::fp32, gpu::MatmulPrecision::bf16})
    for (const auto& [rows, cols] : {std::pair{48, 120}, std::pair{120, 48}}) {
      const int count = 5;
      const double tol = precision == gpu::MatmulPrecision::bf16 ? 1e-2 : 1e-4;
      const size_t n = static_cast<size_t>(rows) * cols;
      const size_t per_matrix = sizeof(float) * 2 * ((n + 63) / 64 * 64 + (48 * 48 + 63) / 64 * 64);
      std::vector<std::vector<float>> G, single;
      gpu::set_matmul_precision(precision);
      for (int i = 0; i < count; ++i) {
        G.push_back(randn(n, rng, i == 3 ? 1e-3f : 1.0f));
        Dev<float> d_G(G.back()), d_out(n);
        gpu::newton_schulz(d_out.get(), d_G.get(), rows, cols, 5, 1e-7f);
        single.push_back(d_out.host());
      }
      for (const size_t limit : {size_t{256} << 20, 2 * per_matrix + 1})
        for (const bool in_place : {false, true}) {
          const std::string tag = std::string(precision == gpu::MatmulPrecision::bf16 ? " bf16 " : " fp32 ") +
                                  std::to_string(rows) + "x" + std::to_string(cols) +
                                  (limit < 1000000 ? ", chunks of 2" : ", one batch") + (in_place ? ", in place" : "");
          std::vector<Dev<float>> d_G, d_out;
          for (int i = 0; i < count; ++i) d_G.emplace_back(G[i]), d_out.emplace_back(n);
          std::vector<float*> outs;
          std::vector<const float*> ins;
          for (int i = 0; i < count; ++i) outs.push_back(in_place ? d_G[i].get() : d_out[i].get()), ins.push_back(d_G[i].get());
          gpu::newton_schulz_batched(outs.data(), ins.data(), count, rows, cols, 5, 1e-7f, 0, limit);
          for (int i = 0; i < count; ++i)
            expect_close((in_place ? d_G[i] : d_out[i]).host(), single[i], tol, tol, "matrix " + std::to_string(i) + tag);
        }
      gpu::set_matmul_precision(gpu::MatmulPrecision::fp32);
    }
}

// In tf32 and bf16 precision the products round their operands (TF32: 10 mantissa bits, bf16: 7): the result
// differs from fp32 but stays within a stated distance of the CPU's fp32 result (relative Frobenius error: tf32
// 1e-2, bf16 5e-2), and is as orthogonal as fp32's: its mean squared singular value (||O||_F^2 / min(r, c)) within
// 0.05 of the fp32 one. ONESTEP_NS_PRECISION=fp32 restores the fp32 bits.
TEST(CudaOptim, NewtonSchulzInTheMatmulPrecision) {
  REQUIRE_GPU();
  std::mt19937 rng(12);
  struct S {
    int rows, cols;
  };
  struct P {
    gpu::MatmulPrecision precision;
    const char* name;
    double tol;
  };
  auto frob2 = [](const std::vector<float>& x) {
    double s = 0;
    for (float v : x) s += double(v) * v;
    return s;
  };
  for (const S s : {S{64, 64}, S{150, 64}, S{64, 150}, S{33, 257}}) {
    const auto G = randn(static_cast<size_t>(s.rows) * s.cols, rng);
    NewtonSchulzWorkspace ws;
    std::vector<float> want(G.size());
    newton_schulz(want.data(), G.data(), s.rows, s.cols, 5, 1e-7f, ws);
    Dev<float> d_G(G), d_out(G.size());
    gpu::newton_schulz(d_out.get(), d_G.get(), s.rows, s.cols, 5, 1e-7f);
    const auto fp32 = d_out.host();
    const double k = std::min(s.rows, s.cols), want_msv = frob2(want) / k;
    for (const P p : {P{gpu::MatmulPrecision::tf32, "tf32", 1e-2}, P{gpu::MatmulPrecision::bf16, "bf16", 5e-2}}) {
      const std::string tag = std::string(" ") + p.name + " " + std::to_string(s.rows) + "x" + std::to_string(s.cols);
      gpu::set_matmul_precision(p.precision);
      gpu::newton_schulz(d_out.get(), d_G.get(), s.rows, s.cols, 5, 1e-7f);
      const auto got = d_out.host();
      setenv("ONESTEP_NS_PRECISION", "fp32", 1);
      gpu::newton_schulz(d_out.get(), d_G.get(), s.rows, s.cols, 5, 1e-7f);
      unsetenv("ONESTEP_NS_PRECISION");
      gpu::set_matmul_precision(gpu::MatmulPrecision::fp32);
      expect_bitwise_equal(d_out.host(), fp32, "ONESTEP_NS_PRECISION=fp32" + tag);
      double err = 0;
      for (size_t i = 0; i < got.size(); ++i) err += std::pow(double(got[i]) - want[i], 2);
      const double rel = std::sqrt(err / frob2(want));
      EXPECT_LT(rel, p.tol) << "distance to the CPU's fp32 result" << tag;
      EXPECT_GT(rel, 1e-5) << "rounding had no effect" << tag;
      EXPECT_NEAR(frob2(got) / k, want_msv, 0.05) << "mean squared singular value" << tag;
      EXPECT_GT(want_msv, 0.5) << tag;
      std::printf("newton_schulz%s: relative error %.2e, mean squared singular value %.4f (fp32 %.4f)\n",
                  tag.c_str(), rel, frob2(got) / k, want_msv);
    }
  }
}

// Muon (spectral scale, Nesterov) on the matrices, its AdamW group on the rest.
TEST(CudaOptim, Muon) {
  REQUIRE_GPU();
  compare_optimizer(config("muon"), ns_on_matrices, elem_state);
}

// NorMuon ("adamw_rms" scale, plain momentum, to cover the other options) on the matrices, AdamW on the rest.
TEST(CudaOptim, NorMuon) {
  REQUIRE_GPU();
  OptimConfig c = config("normuon");
  c.muon_scale = "adamw_rms";
  c.nesterov = false;
  compare_optimizer(c, ns_on_matrices,
                    [](const std::string& name) { return name.rfind("normuon.v_row.", 0) == 0 ? kNs : kElem; });
}

// SOAP: square matrices whose gradients G = U diag(sigma) V^T (random orthogonal U, V; sigma_i = 1 + i) give
// L and R well-separated eigenvalues, so the host's eigenbases of the GPU's L, R (cuBLAS) and of the CPU's
// (OpenBLAS) agree to rounding; with precond_freq = 2 the third step also refreshes them by power iteration +
// QR (its column order, by estimated eigenvalue, has gaps far above rounding here). Products of rotations:
// rtol = atol = 1e-4, like Newton–Schulz. Non-square matrices are left out on purpose: there G G^T or G^T G is
// singular, and the eigenvectors of its null space (hence SOAP's update there) are whatever the rounding makes
// them, on the CPU as on the GPU. Three matrices: on 2 threads the GPU optimizer's host refresh takes them in two
// chunks (one matrix per thread per chunk).
ParamTable soap_table() {
  ParamTable t;
  t.add("model.layers.0.self_attn.q_proj.weight", {32, 32}, ParamRole::matrix);
  t.add("model.layers.0.self_attn.k_proj.weight", {24, 24}, ParamRole::matrix);
  t.add("model.layers.0.self_attn.o_proj.weight", {16, 16}, ParamRole::matrix);
  t.add("model.norm.weight", {32}, ParamRole::norm);
  t.add("lm_head.weight", {40, 32}, ParamRole::head);
  return t;
}
std::vector<float> soap_grads(const ParamTable& t, std::mt19937& rng) {
  std::vector<float> g = make_grad(t, rng);
  auto orthogonal = [&](int n) {  // the Q factor of a Gaussian matrix
    const auto a = randn(static_cast<size_t>(n) * n, rng);
    std::vector<float> q(a.size());
    LinalgWorkspace ws;
    qr_orthonormal(a.data(), n, q.data(), ws);
    return q;
  };
  for (const auto& p : t.all()) {
    if (!soap_takes(p)) continue;
    const int n = static_cast<int>(p.rows());
    const auto U = orthogonal(n), V = orthogonal(n);
    for (int i = 0; i < n; ++i)
      for (int j = 0; j < n; ++j) {
        double acc = 0;
        for (int k = 0; k < n; ++k) acc += static_cast<double>(U[i * n + k]) * (1.0 + k) * V[j * n + k];
        g[static_cast<size_t>(p.offset + i * n + j)] = static_cast<float>(acc);
      }
  }
  return g;
}

// The SOAP update itself is less well conditioned than its state: on the CPU, perturbing every gradient element by
// about one ulp moves step 2's update of the 16 x 16 matrix by 3.5e-4 of its largest magnitude (CudaHost.SoapUpdate-
// Conditioning below measures it), and a CPU emulation of these kernels with three GEMM summation orders differed
// from the CPU by up to 5.7e-4 the same way. So SOAP's u is held to 2e-3 (a wrong rotation, transpose or eigenbasis
// gives errors of order 1); its state stays at the Newton–Schulz tolerance.
constexpr Tol kSoapUpdate{2e-3, 2e-3};

// What justifies kSoapUpdate, on the CPU alone (no GPU needed): two CPU SOAP runs of CudaOptim.Soap's three steps,
// the second on gradients multiplied by 1 + 2e-7 r (r uniform in [-1, 1], about one ulp), differ in u by at most a
// quarter of kSoapUpdate's atol relative to each matrix's largest |u|: the GPU's other summation order must fit
// four times over.
TEST(CudaHost, SoapUpdateConditioning) {
  OptimConfig c = config("soap");
  c.precond_freq = 2;
  const ParamTable t = soap_table();
  std::mt19937 rng(42), noise(7);
  std::uniform_real_distribution<float> r(-1.f, 1.f);
  std::vector<float> x(static_cast<size_t>(t.total()));
  for (const auto& p : t.all()) {
    const auto v = randn(static_cast<size_t>(p.numel), rng, 0.5f);
    std::copy(v.begin(), v.end(), x.begin() + p.offset);
  }
  auto a = make_optimizer(c, t), b = make_optimizer(c, t);
  std::vector<float> ua(x.size()), ub(x.size());
  double worst = 0;
  for (int step = 1; step <= kSteps; ++step) {
    const auto g = soap_grads(t, rng);
    auto gp = g;
    for (float& v : gp) v *= 1.0f + 2e-7f * r(noise);
    a->compute_update(ua.data(), x.data(), g.data(), kLrScale[step - 1]);
    b->compute_update(ub.data(), x.data(), gp.data(), kLrScale[step - 1]);
    for (const auto& p : t.all()) {
      if (!soap_takes(p)) continue;
      double largest = 0, moved = 0;
      for (int64_t i = p.offset; i < p.offset + p.numel; ++i)
        largest = std::max<double>(largest, std::fabs(ua[i])), moved = std::max<double>(moved, std::fabs(ua[i] - ub[i]));
      if (largest > 0) worst = std::max(worst, moved / largest);
    }
  }
  EXPECT_GT(worst, 0.0) << "the perturbation changed nothing: the check is void";
  EXPECT_LT(worst, kSoapUpdate.atol / 4) << "SOAP's update is worse conditioned than CudaOptim.Soap's tolerance allows";
}

TEST(CudaOptim, Soap) {
  REQUIRE_GPU();
  OptimConfig c = config("soap");
  c.precond_freq = 2;
  const ParamTable t = soap_table();
  compare_optimizer(
      c, [](const ParamInfo& p) { return soap_takes(p) ? kSoapUpdate : kElem; },
      [](const std::string& name) { return name.rfind("soap.", 0) == 0 ? kNs : kElem; }, nullptr, kLrScale,
      make_cuda_optimizer(c, t), t, soap_grads);
}

// ---- Host-only (run without a GPU too; ctest case cuda.host) -------------------------------------------

// The GPU optimizers keep exactly the CPU optimizers' state tensors (names and shapes), so a checkpoint moves
// between the backends and the comparisons above cover every tensor.
TEST(CudaHost, OptimizerStateMatchesTheCpuOptimizers) {
  const ParamTable t = make_table();
  for (const char* name : {"adamw", "muon", "normuon", "adan", "lion", "mars", "sgd", "soap"}) {
    SCOPED_TRACE(name);
    std::map<std::string, std::vector<int64_t>> cpu_state, gpu_state;
    for (const auto& b : make_optimizer(config(name), t)->state_buffers()) cpu_state[b.name] = b.shape;
    for (const auto& st : cuda_optimizer_state(config(name), t)) gpu_state[st.name] = st.shape;
    EXPECT_EQ(gpu_state, cpu_state);
  }
}


// ---- Delay corrections, against optimizer_step on a small model ------------------------------------------

ModelConfig small_model() {
  ModelConfig m;
  m.vocab_size = 64, m.d_model = 32, m.n_layers = 1, m.n_heads = 2, m.n_kv_heads = 2, m.ffn_hidden = 48;
  m.seq_len = 8;
  return m;
}

// EF: optimizer_step computes u and applies x <- x - u - c (u - u_prev), u_prev <- u, the first step
// ordinary. The GPU kernel gets the same x (before the step) and u, and c per parameter as optimizer_step
// chooses it: 0 at the first step, and 0 for the AdamW-handled parameters of a Muon run with
// ef_adamw_params = false. x must match (element-wise tolerance), u_prev exactly (a copy).
TEST(CudaOptim, ErrorFeedback) {
  REQUIRE_GPU();
  struct Case {
    const char* optimizer;
    double coef;
    bool adamw_params;
  };
  for (const Case k : {Case{"adamw", 0.7, true}, Case{"muon", 1.0, false}}) {
    SCOPED_TRACE(std::string(k.optimizer) + (k.adamw_params ? "" : ", ef_adamw_params = false"));
    const ModelConfig m = small_model();
    const OptimConfig o = config(k.optimizer);
    StageState s(m, whole_model(m), o, 0, true);
    std::mt19937 rng(5);
    s.weights = randn(s.weights.size(), rng, 0.5f);
    DelayConfig d;
    d.correction = "ef", d.ef_coef = k.coef, d.ef_adamw_params = k.adamw_params;
    const bool muon_family = o.name == "muon" || o.name == "normuon";
    Dev<float> d_x(s.weights.size()), d_u(s.weights.size()), d_up(s.weights.size());
    for (int step = 1; step <= kSteps; ++step) {
      const std::string tag = " step " + std::to_string(step);
      const std::vector<float> x_before = s.weights.to_host();
      s.grad = randn(s.grad.size(), rng, 0.1f);
      optimizer_step(s, kLrScale[step - 1], 1.0f, d);
      d_x.upload(x_before);
      d_u.upload(s.update.to_host());
      for (const auto& p : s.stage.params().all()) {
        const bool corrected = step > 1 && (d.ef_adamw_params || !muon_family || muon_takes(p));
        const float c = corrected ? static_cast<float>(d.ef_coef) : 0.0f;
        gpu::ef_apply_update(d_x.get() + p.offset, d_u.get() + p.offset, d_up.get() + p.offset, p.numel, c);
      }
      expect_close(d_x.host(), s.weights.to_host(), kElem.rtol, kElem.atol, "EF weights" + tag);
      expect_bitwise_equal(d_up.host(), s.prev_update.to_host(), "EF u_prev" + tag);
    }
  }
}

// DC-ASGD: optimizer_step clips (g *= grad_scale) and compensates g <- g + lambda g g (w - stale) in place
// before the optimizer; the GPU does the same two steps (scale_inplace, dc_asgd_compensate) on the same
// gradient, weights and stale weights.
TEST(CudaOptim, DcAsgd) {
  REQUIRE_GPU();
  const ModelConfig m = small_model();
  StageState s(m, whole_model(m), config("sgd"), 0, false);
  std::mt19937 rng(6);
  s.weights = randn(s.weights.size(), rng, 0.5f);
  DelayConfig d;
  d.correction = "dc_asgd", d.dc_lambda = 0.3;
  const int64_t n = static_cast<int64_t>(s.weights.size());
  Dev<float> d_g(s.grad.size()), d_w(s.weights.size()), d_stale(s.weights.size());
  for (int step = 1; step <= kSteps; ++step) {
    const std::string tag = " step " + std::to_string(step);
    std::vector<float> stale = s.weights.to_host();
    const auto noise = randn(stale.size(), rng, 0.05f);
    for (size_t i = 0; i < stale.size(); ++i) stale[i] += noise[i];
    s.grad = randn(s.grad.size(), rng, 1.0f);
    d_g.upload(s.grad.to_host());
    d_w.upload(s.weights.to_host());
    d_stale.upload(stale);
    const float grad_scale = 0.5f;
    optimizer_step(s, 1.0, grad_scale, d, stale.data());  // s.grad: clipped and compensated, in place
    gpu::scale_inplace(d_g.get(), grad_scale, n);
    gpu::dc_asgd_compensate(d_g.get(), d_w.get(), d_stale.get(), n, static_cast<float>(d.dc_lambda));
    expect_close(d_g.host(), s.grad.to_host(), kElem.rtol, kElem.atol, "DC-ASGD gradient" + tag);
  }
}

}  // namespace
