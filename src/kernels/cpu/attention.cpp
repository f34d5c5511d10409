// Causal grouped-query attention, flash-attention style: queries and keys are processed in blocks of
// kBlk rows, scores exist only one kBlk x kBlk tile at a time, the forward keeps an online softmax and
// saves lse = log-sum-exp of the scaled scores; the backward recomputes the probabilities from q, k, lse.
//
// Layouts: q, out [B,T,H,D]; k, v [B,T,KV,D]; lse [B,H,T]. Head h reads kv head h / (H/KV).
//
// Determinism. Every output element is written by exactly one task and its contributions are added in
// one fixed order, independent of the thread count and of which backward scheme runs:
//   dq rows of (b, h, query block qb):  += over key blocks kb = 0..qb in order;
//   dk, dv rows of (b, kvh, key block kb): += over (h in the group, qb = kb..) in lexicographic order.
// The backward parallelises over (b, kv head) when that gives the threads enough equal tasks, else in
// two passes: dq over (b, h, qb), then dk/dv over (b, kvh, kb); both schemes compute bit-identical
// tiles, so the result is the same whichever runs.
#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include <omp.h>

#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/ops.h"

#if defined(__AVX2__) && defined(__FMA__)
#include <immintrin.h>
#define ONESTEP_ATTN_AVX2 1
#endif

namespace onestep::cpu {

using detail::fast_exp;

namespace {

constexpr int kBlk = 64;  // query rows and keys per tile

// ---------------------------------------------------------------------------------------------------
// Small dense products on tiles: C[M,N] (+)= A[M,K] * B[K,N], all row-major with leading dimensions.
#ifdef ONESTEP_ATTN_AVX2
template <int MR, int NV>
[[gnu::always_inline]] inline void tile_avx2(int K, const float* A, int lda, const float* B, int ldb, float* C,
                                             int ldc, bool acc) {
  __m256 c[MR][NV];
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) c[r][v] = acc ? _mm256_loadu_ps(C + r * ldc + 8 * v) : _mm256_setzero_ps();
  for (int k = 0; k < K; ++k) {
    __m256 b[NV];
    for (int v = 0; v < NV; ++v) b[v] = _mm256_loadu_ps(B + static_cast<int64_t>(k) * ldb + 8 * v);
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(A + static_cast<int64_t>(r) * lda + k);
      for (int v = 0; v < NV; ++v) c[r][v] = _mm256_fmadd_ps(a, b[v], c[r][v]);
    }
  }
  for (int r = 0; r < MR; ++r)
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(C + r * ldc + 8 * v, c[r][v]);
}

template <int NV>
inline void rows_avx2(int M, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
                      bool acc) {
  int i = 0;
  for (; i + 4 <= M; i += 4)
    tile_avx2<4, NV>(K, A + static_cast<int64_t>(i) * lda, lda, B, ldb, C + static_cast<int64_t>(i) * ldc,
                     ldc, acc);
  const float* a = A + static_cast<int64_t>(i) * lda;
  float* c = C + static_cast<int64_t>(i) * ldc;
  switch (M - i) {
    case 3: tile_avx2<3, NV>(K, a, lda, B, ldb, c, ldc, acc); break;
    case 2: tile_avx2<2, NV>(K, a, lda, B, ldb, c, ldc, acc); break;
    case 1: tile_avx2<1, NV>(K, a, lda, B, ldb, c, ldc, acc); break;
    default: break;
  }
}
#endif

void gemm_tile(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
               bool acc) {
  int n0 = 0;
#ifdef ONESTEP_ATTN_AVX2
  for (; n0 + 16 <= N; n0 += 16) rows_avx2<2>(M, K, A, lda, B + n0, ldb, C + n0, ldc, acc);
  for (; n0 + 8 <= N; n0 += 8) rows_avx2<1>(M, K, A, lda, B + n0, ldb, C + n0, ldc, acc);
#endif
  for (int i = 0; i < M; ++i)
    for (int n = n0; n < N; ++n) {
      float s = acc ? C[static_cast<int64_t>(i) * ldc + n] : 0.0f;
      for (int k = 0; k < K; ++k) s += A[static_cast<int64_t>(i) * lda + k] * B[static_cast<int64_t>(k) * ldb + n];
      C[static_cast<int64_t>(i) * ldc + n] = s;
    }
}

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols.
inline void transpose(float* dst, int ldd, const float* src, int64_t lds, int rows, int cols) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[static_cast<int64_t>(c) * ldd + r] = src[r * lds + c];
}

inline int round_up8(int n) { return (n + 7) & ~7; }

struct Dims {
  int B, T, H, KV, D, G, nblk;  // G = H / KV query heads per kv head; nblk = number of row/key blocks
  int64_t ldq, ldk;             // row strides of q/out/dq (H*D) and of k/v/dk/dv (KV*D)
  float scale;
  Dims(int B_, int T_, int H_, int KV_, int D_)
      : B(B_), T(T_), H(H_), KV(KV_), D(D_), G(H_ / KV_), nblk((T_ + kBlk - 1) / kBlk),
        ldq(static_cast<int64_t>(H_) * D_), ldk(static_cast<int64_t>(KV_) * D_),
        scale(1.0f / std::sqrt(static_cast<float>(D_))) {}
  int64_t qoff(int b, int t, int h) const { return (static_cast<int64_t>(b) * T + t) * ldq + static_cast<int64_t>(h) * D; }
  int64_t koff(int b, int t, int kvh) const { return (static_cast<int64_t>(b) * T + t) * ldk + static_cast<int64_t>(kvh) * D; }
  int64_t loff(int b, int h, int t) const { return (static_cast<int64_t>(b) * H + h) * T + t; }
  int rows(int blk) const { return std::min(kBlk, T - blk * kBlk); }
};

// S[m, 0..N) = (Q K^T) * scale for the tile, N = round_up8(kn); Kt is [D, kBlk] with zero padding.
inline void scores(float* S, const float* q, const float* Kt, const Dims& d, int m, int kn) {
  gemm_tile(m, round_up8(kn), d.D, q, static_cast<int>(d.ldq), Kt, kBlk, S, kBlk, false);
  const float sc = d.scale;
  for (int i = 0; i < m; ++i) {
    float* s = S + i * kBlk;
#pragma omp simd
    for (int j = 0; j < kn; ++j) s[j] *= sc;
  }
}

// Transposes kn rows of k (or v) starting at koff into Kt [D, kBlk], zero-padding columns kn..kBlk.
inline void load_transposed(float* Kt, const float* k, const Dims& d, int64_t koff, int kn) {
  transpose(Kt, kBlk, k + koff, d.ldk, kn, d.D);
  if (kn < kBlk)
    for (int c = 0; c < d.D; ++c)
      for (int j = kn; j < kBlk; ++j) Kt[c * kBlk + j] = 0.0f;
}

// Per-thread scratch for the backward.
struct BwdScratch {
  std::vector<float> Kt, Vt, P, dS, Pt, dSt;
  explicit BwdScratch(int D)
      : Kt(static_cast<size_t>(D) * kBlk), Vt(static_cast<size_t>(D) * kBlk), P(kBlk * kBlk), dS(kBlk * kBlk),
        Pt(kBlk * kBlk), dSt(kBlk * kBlk) {}
};

// One (query block qb, key block kb) tile of the backward for head h (kv head h / G). Kt/Vt hold key
// block kb transposed. Adds the tile's dq contribution if dq != null, its dk/dv contribution if dk != null.
void backward_tile(BwdScratch& w, float* dq, float* dk, float* dv, const float* dout, const float* q,
                   const float* k, const float* lse, const float* delta, const Dims& d, int b, int h, int qb,
                   int kb) {
  const int kvh = h / d.G;
  const int i0 = qb * kBlk, m = d.rows(qb);
  const int j0 = kb * kBlk, kn = d.rows(kb);
  const bool diag = qb == kb;
  const int64_t qo = d.qoff(b, i0, h), ko = d.koff(b, j0, kvh);
  const float* lrow = lse + d.loff(b, h, i0);
  const float* drow = delta + d.loff(b, h, i0);
  float* P = w.P.data();
  float* dS = w.dS.data();

  scores(P, q + qo, w.Kt.data(), d, m, kn);
  // dP = dO V^T
  gemm_tile(m, round_up8(kn), d.D, dout + qo, static_cast<int>(d.ldq), w.Vt.data(), kBlk, dS, kBlk, false);
  for (int i = 0; i < m; ++i) {
    float* p = P + i * kBlk;
    float* ds = dS + i * kBlk;
    const int lim = diag ? i + 1 : kn;
    const float l = lrow[i], dl = drow[i], sc = d.scale;
#pragma omp simd
    for (int j = 0; j < lim; ++j) {
      const float pj = fast_exp(p[j] - l);
      p[j] = pj;
      ds[j] = pj * (ds[j] - dl) * sc;  // gradient w.r.t. the raw score q.k
    }
    for (int j = lim; j < kn; ++j) p[j] = ds[j] = 0.0f;
  }
  if (dq)  // dq += dS K
    gemm_tile(m, d.D, kn, dS, kBlk, k + ko, static_cast<int>(d.ldk), dq + qo, static_cast<int>(d.ldq), true);
  if (dk) {
    transpose(w.dSt.data(), kBlk, dS, kBlk, m, kn);
    transpose(w.Pt.data(), kBlk, P, kBlk, m, kn);
    // dk += dS^T Q ; dv += P^T dO
    gemm_tile(kn, d.D, m, w.dSt.data(), kBlk, q + qo, static_cast<int>(d.ldq), dk + ko, static_cast<int>(d.ldk), true);
    gemm_tile(kn, d.D, m, w.Pt.data(), kBlk, dout + qo, static_cast<int>(d.ldq), dv + ko, static_cast<int>(d.ldk), true);
  }
}

// All dk/dv contributions of key block kb of (b, kvh), and optionally the dq contributions of those tiles.
void backward_key_block(BwdScratch& w, float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* lse, const float* delta, const Dims& d,
                        int b, int kvh, int kb) {
  const int kn = d.rows(kb);
  const int64_t ko = d.koff(b, kb * kBlk, kvh);
  load_transposed(w.Kt.data(), k, d, ko, kn);
  load_transposed(w.Vt.data(), v, d, ko, kn);
  for (int g = 0; g < d.G; ++g)
    for (int qb = kb; qb < d.nblk; ++qb)
      backward_tile(w, dq, dk, dv, dout, q, k, lse, delta, d, b, kvh * d.G + g, qb, kb);
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T,
                       int H, int KV, int D) {
  if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return;
  const Dims d(B, T, H, KV, D);
  const int ntasks = B * H * d.nblk;
#pragma omp parallel
  {
    std::vector<float> Kt(static_cast<size_t>(D) * kBlk), S(kBlk * kBlk), O(static_cast<size_t>(kBlk) * D);
    float mrow[kBlk], lrow[kBlk];
    // Round-robin over (b, h, qb): the causal cost grows with qb, so interleaving balances the threads.
#pragma omp for schedule(static, 1)
    for (int task = 0; task < ntasks; ++task) {
      const int qb = task % d.nblk, bh = task / d.nblk, h = bh % H, b = bh / H, kvh = h / d.G;
      const int i0 = qb * kBlk, m = d.rows(qb);
      const int64_t qo = d.qoff(b, i0, h);
      std::fill(O.begin(), O.begin() + static_cast<int64_t>(m) * D, 0.0f);
      for (int i = 0; i < m; ++i) {
        mrow[i] = -std::numeric_limits<float>::infinity();
        lrow[i] = 0.0f;
      }
      for (int kb = 0; kb <= qb; ++kb) {
        const int j0 = kb * kBlk, kn = d.rows(kb);
        const bool diag = kb == qb;
        const int64_t ko = d.koff(b, j0, kvh);
        load_transposed(Kt.data(), k, d, ko, kn);
        scores(S.data(), q + qo, Kt.data(), d, m, kn);
        for (int i = 0; i < m; ++i) {
          float* s = S.data() + i * kBlk;
          const int lim = diag ? i + 1 : kn;
          float mx = -std::numeric_limits<float>::infinity();
#pragma omp simd reduction(max : mx)
          for (int j = 0; j < lim; ++j) mx = s[j] > mx ? s[j] : mx;
          const float mnew = std::max(mrow[i], mx);
          const float alpha = fast_exp(mrow[i] - mnew);  // 0 on the first block (exp(-inf))
          float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
          for (int j = 0; j < lim; ++j) {
            const float p = fast_exp(s[j] - mnew);
            s[j] = p;
            sum += p;
          }
          for (int j = lim; j < kn; ++j) s[j] = 0.0f;
          lrow[i] = lrow[i] * alpha + sum;
          mrow[i] = mnew;
          if (alpha != 1.0f) {
            float* o = O.data() + static_cast<int64_t>(i) * D;
#pragma omp simd
            for (int c = 0; c < D; ++c) o[c] *= alpha;
          }
        }
        // O += P V
        gemm_tile(m, D, kn, S.data(), kBlk, v + ko, static_cast<int>(d.ldk), O.data(), D, true);
      }
      for (int i = 0; i < m; ++i) {
        const float inv = 1.0f / lrow[i];
        const float* o = O.data() + static_cast<int64_t>(i) * D;
        float* dst = out + qo + i * d.ldq;
#pragma omp simd
        for (int c = 0; c < D; ++c) dst[c] = o[c] * inv;
        lse[d.loff(b, h, i0 + i)] = mrow[i] + std::log(lrow[i]);
      }
    }
  }
}

void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* q, const float* k,
                        const float* v, const float* out, const float* lse, int B, int T, int H, int KV,
                        int D) {
  if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return;
  const Dims d(B, T, H, KV, D);
  // delta[b, h, t] = sum_d dout * out (= sum_j P dP of the row).
  std::vector<float> delta(static_cast<size_t>(B) * H * T);
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * T; ++bt) {
    const int b = bt / T, t = bt % T;
    for (int h = 0; h < H; ++h) {
      const float* g = dout + d.qoff(b, t, h);
      const float* o = out + d.qoff(b, t, h);
      float s = 0.0f;
#pragma omp simd reduction(+ : s)
      for (int c = 0; c < D; ++c) s += g[c] * o[c];
      delta[d.loff(b, h, t)] = s;
    }
  }
  const float* dl = delta.data();

  // Scheme choice: one pass over (b, kvh) costs 5 tile products per tile, two passes cost 7 but offer
  // B*H*nblk and B*KV*nblk tasks. Take the single pass when its load balance is at least 5/7.
  const int nthreads = omp_get_max_threads();
  const int units = B * KV;
  const int rounds = (units + nthreads - 1) / nthreads;
  const bool single_pass = 7 * units >= 5 * rounds * nthreads;

  if (single_pass) {
#pragma omp parallel
    {
      BwdScratch w(D);
#pragma omp for schedule(static)
      for (int u = 0; u < units; ++u)
        for (int kb = 0; kb < d.nblk; ++kb)
          backward_key_block(w, dq, dk, dv, dout, q, k, v, lse, dl, d, u / KV, u % KV, kb);
    }
    return;
  }
#pragma omp parallel
  {
    BwdScratch w(D);
    // Pass 1: dq, task (b, h, qb), key blocks in order.
    const int n1 = B * H * d.nblk;
#pragma omp for schedule(static, 1) nowait
    for (int task = 0; task < n1; ++task) {
      const int qb = task % d.nblk, bh = task / d.nblk, h = bh % H, b = bh / H;
      for (int kb = 0; kb <= qb; ++kb) {
        const int64_t ko = d.koff(b, kb * kBlk, h / d.G);
        load_transposed(w.Kt.data(), k, d, ko, d.rows(kb));
        load_transposed(w.Vt.data(), v, d, ko, d.rows(kb));
        backward_tile(w, dq, nullptr, nullptr, dout, q, k, lse, dl, d, b, h, qb, kb);
      }
    }
    // Pass 2: dk, dv, task (b, kvh, kb). No barrier between the passes: they write disjoint arrays.
    const int n2 = B * KV * d.nblk;
#pragma omp for schedule(static, 1) nowait
    for (int task = 0; task < n2; ++task) {
      const int kb = task % d.nblk, u = task / d.nblk;
      backward_key_block(w, nullptr, dk, dv, dout, q, k, v, lse, dl, d, u / KV, u % KV, kb);
    }
  }
}

}  // namespace onestep::cpu
