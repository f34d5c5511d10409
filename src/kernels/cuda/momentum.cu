// The momentum family: SGD with momentum (Sgd::compute_update, src/optim/sgd.cpp) and the Muon family's
// element-wise passes (MuonMatrices, src/optim/muon.cpp; NorMuon's per-row normalisation,
// src/optim/normuon.cpp), which share the momentum recursion. Same per-element expressions as the CPU's;
// the float scalars come from the *_scalars() helpers of optim_cuda.h.
#include <vector>

#include "kernels/cuda/common.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/cuda/optim_cuda.h"

namespace onestep::cuda {

namespace {

// B = mu B + g (no dampening); returns the direction g + mu B (Nesterov) or B.
__device__ inline float momentum_direction(float gi, float* B, int64_t i, float mu, int nesterov) {
  const float b = mu * B[i] + gi;
  B[i] = b;
  return nesterov ? gi + mu * b : b;
}

// Each matrix's momentum pass into its u (q), then X = NS(q) over u, the group's Newton–Schulz batched
// (MuonMatrices::orthogonalized_momentum).
void orthogonalized_momentum(const std::vector<MuonMatrix>& group, int rows, int cols, const MuonScalars& s,
                             cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(rows) * cols;
  std::vector<float*> us;
  for (const MuonMatrix& m : group) {
    muon_momentum(m.u, m.B, m.g, n, s.momentum, s.nesterov != 0, stream);
    us.push_back(m.u);
  }
  newton_schulz_batched(us.data(), us.data(), static_cast<int>(us.size()), rows, cols, s.ns_steps, s.ns_eps, stream);
}

// u = a u + d x, u holding X (Muon) or Y (NorMuon): MuonMatrices::finish_update. a is read from the device
// (*a_dev) when a_dev is given.
void finish_update(float* u, const float* x, int64_t n, float a, const float* a_dev, float d, cudaStream_t stream) {
  detail::for_each_element(n, stream, "muon finish_update", [=] __device__(int64_t i) {
    const float ai = a_dev ? *a_dev : a;
    u[i] = ai * u[i] + d * x[i];
  });
}

// NorMuon, one block per row: v_row = b2 v_row + (1-b2) mean_cols(X^2) (the row summed in double in a
// fixed order), then the row scaled by 1 / (sqrt(v_row) + eps).
__global__ void normuon_rows_kernel(float* X, float* v_row, int cols, float b2, float omb2, float eps) {
  float* xr = X + static_cast<int64_t>(blockIdx.x) * cols;
  const float v_old = v_row[blockIdx.x];  // read before block_sum's barriers: thread 0 overwrites it below
  double s = 0.0;
  for (int j = threadIdx.x; j < cols; j += blockDim.x) s += static_cast<double>(xr[j]) * xr[j];
  s = detail::block_sum(s);
  const float vr = b2 * v_old + omb2 * static_cast<float>(s / static_cast<double>(cols));
  if (threadIdx.x == 0) v_row[blockIdx.x] = vr;
  const float inv = 1.0f / (sqrtf(vr) + eps);
  for (int j = threadIdx.x; j < cols; j += blockDim.x) xr[j] *= inv;
}

}  // namespace

// PAPER.md §3, SGD with momentum: buf = mu buf + g; d = g + mu buf (Nesterov) or buf; u = lr (d + wd x).
void sgd_update(float* u, const float* x, const float* g, float* buf, int64_t n, const SgdScalars& s,
                cudaStream_t stream) {
  detail::for_each_element(n, stream, "sgd_update", [=] __device__(int64_t i) {
    const float d = momentum_direction(g[i], buf, i, s.momentum, s.nesterov);
    u[i] = s.lr * (d + s.weight_decay * x[i]);
  });
}

// PAPER.md §3, Muon: B = mu B + g, Nesterov q = g + mu B.
void muon_momentum(float* q, float* B, const float* g, int64_t n, float momentum, bool nesterov,
                   cudaStream_t stream) {
  const int nest = nesterov ? 1 : 0;
  detail::for_each_element(n, stream, "muon_momentum", [=] __device__(int64_t i) {
    q[i] = momentum_direction(g[i], B, i, momentum, nest);
  });
}

// PAPER.md §3, Muon: X = NS(q); u = lr s X + lr wd x.
void muon_update(const std::vector<MuonMatrix>& group, int rows, int cols, const MuonScalars& s, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || group.empty()) return;
  orthogonalized_momentum(group, rows, cols, s, stream);
  for (const MuonMatrix& m : group)
    finish_update(m.u, m.x, static_cast<int64_t>(rows) * cols, static_cast<float>(s.lr_shape), nullptr, s.lr_wd, stream);
}

// PAPER.md §3, NorMuon: Muon's X, v_row = b2 v_row + (1-b2) mean_cols(X^2), Y = X / (sqrt(v_row) + eps),
// rescaled to ||X||_F; u = lr s Y + lr wd x.
void normuon_update(const std::vector<MuonMatrix>& group, int rows, int cols, const MuonScalars& s,
                    const NorMuonScalars& ns, cudaStream_t stream) {
  if (rows <= 0 || cols <= 0 || group.empty()) return;
  const int64_t n = static_cast<int64_t>(rows) * cols;
  orthogonalized_momentum(group, rows, cols, s, stream);
  // Per matrix: [0] ||X||^2, [1] ||Y||^2 (double), then the float scale a = lr s ||X|| / ||Y||.
  detail::Scratch scratch(3 * sizeof(double) * group.size(), stream);
  for (size_t i = 0; i < group.size(); ++i) {
    float* u = group[i].u;
    double* ss = scratch.as<double>() + 3 * i;
    float* a = reinterpret_cast<float*>(ss + 2);
    sum_squares_async(ss, u, n, stream);
    normuon_rows_kernel<<<static_cast<unsigned>(rows), detail::kThreads, 0, stream>>>(u, group[i].v_row, cols, ns.beta2,
                                                                                      ns.one_minus_beta2, ns.eps);
    ONESTEP_CUDA_LAUNCHED("normuon_update(rows)");
    sum_squares_async(ss + 1, u, n, stream);
    const double lr_shape = s.lr_shape;
    detail::run_single(stream, "normuon_update(rescale)", [=] __device__() {
      const double rescale = ss[1] > 0 ? sqrt(ss[0] / ss[1]) : 0.0;
      *a = static_cast<float>(lr_shape * rescale);  // the CPU's lr * s * rescale, in double
    });
    finish_update(u, group[i].x, n, 0.0f, a, s.lr_wd, stream);
  }
}

}  // namespace onestep::cuda
