// Causal grouped-query attention, flash-attention style: queries and keys are processed in blocks of
// kBlk rows, scores exist only one kBlk x kBlk tile at a time, the forward keeps an online softmax and
// saves lse = log-sum-exp of the scaled scores; the backward recomputes the probabilities from q, k, lse
// and uses delta = rowsum(dout * out).
//
// Layouts: q, out [B,T,H,D]; k, v [B,T,KV,D]; lse [B,H,T]. Head h reads kv head h / (H/KV).
// Tiles are packed into contiguous per-thread buffers and multiplied with a small AVX2 register-tiled
// kernel (scalar fallback without AVX2/FMA); diagonal tiles skip their masked upper triangle.
//
// Determinism. Every output element is written by exactly one task and its contributions are added in
// one fixed order, independent of the thread count and of which backward scheme runs:
//   dq rows of (b, h, query block qb): += tile by tile over key blocks kb = 0..qb in order;
//   dk, dv rows of (b, kvh, key block kb): tiles summed locally over (h in the group, qb = kb..) in
//   lexicographic order, then added once.
// The backward parallelises over (b, kv head) when that gives the threads enough equal tasks, else in
// two passes: dq over (b, h, qb), then dk/dv over (b, kvh, kb). Both schemes compute bit-identical
// tiles in the same order, so the result is the same whichever runs.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "kernels/cpu/fast_math.h"
#include "kernels/cpu/ops.h"

namespace onestep::cpu {

using namespace detail;

namespace {

constexpr int kBlk = 64;  // query rows and keys per tile

// ---------------------------------------------------------------------------------------------------
// Small dense products on tiles: C[M,N] (+)= op(A)[M,K] * B[K,N], row-major with leading dimensions;
// op(A) = A [M,K] (TA = false) or A^T with A stored [K,M] (TA = true). Every element of C is one FMA
// chain over k in order, whatever the tile shape, so results do not depend on M, N or the code path.
template <bool TA>
inline const float* a_at(const float* A, int lda, int r, int k) {
  return TA ? A + static_cast<int64_t>(k) * lda + r : A + static_cast<int64_t>(r) * lda + k;
}

#ifdef ONESTEP_CPU_AVX2
// MR x (8*NV) register tile, NV in {1, 2}, MR <= 6: 12 accumulators + 2 B vectors + 1 broadcast.
template <bool TA, int MR, int NV>
[[gnu::always_inline]] inline void tile_avx2(int K, const float* A, int lda, const float* B, int ldb,
                                             float* C, int ldc, bool acc) {
  static_assert(NV == 1 || NV == 2);
  __m256 c[MR][NV];
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) c[r][v] = acc ? _mm256_loadu_ps(C + r * ldc + 8 * v) : _mm256_setzero_ps();
  for (int k = 0; k < K; ++k) {
    const float* bk = B + static_cast<int64_t>(k) * ldb;
    __m256 b0 = _mm256_loadu_ps(bk), b1 = NV == 2 ? _mm256_loadu_ps(bk + 8) : b0;
    // Keep b in registers: otherwise GCC folds the loads into every FMA and the loop is load-bound.
    asm("" : "+x"(b0), "+x"(b1));
#pragma GCC unroll 8
    for (int r = 0; r < MR; ++r) {
      const __m256 a = _mm256_broadcast_ss(a_at<TA>(A, lda, r, k));
      c[r][0] = _mm256_fmadd_ps(a, b0, c[r][0]);
      if constexpr (NV == 2) c[r][NV - 1] = _mm256_fmadd_ps(a, b1, c[r][NV - 1]);
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 2
    for (int v = 0; v < NV; ++v) _mm256_storeu_ps(C + r * ldc + 8 * v, c[r][v]);
}

// Causal structure of a diagonal tile (query block == key block), so that no work is spent on the
// masked upper triangle:
//   kOutLower: only C[i][n] with n <= i is needed (others may be left unwritten);
//   kKEnd:     A[i][k] = 0 for k > i (row i sums k <= i);
//   kKBegin:   op(A)[i][k] = 0 for k < i (row i sums k >= i).
// Skipped terms are exact zeros, so the results equal the full products.
enum class Causal { kNone, kOutLower, kKEnd, kKBegin };

// One row tile [i, i + MR) of a 16- or 8-column strip, honouring the causal k range.
template <bool TA, int MR, int NV>
inline void row_tile(int i, int K, Causal cz, const float* A, int lda, const float* B, int ldb, float* C,
                     int ldc, bool acc) {
  int k0 = 0, k1 = K;
  if (cz == Causal::kKEnd) k1 = std::min(K, i + MR);
  if (cz == Causal::kKBegin) k0 = std::min(K, i);
  tile_avx2<TA, MR, NV>(k1 - k0, a_at<TA>(A, lda, i, k0), lda, B + static_cast<int64_t>(k0) * ldb, ldb,
                        C + static_cast<int64_t>(i) * ldc, ldc, acc);
}

template <bool TA, int NV>
inline void rows_avx2(int i, int M, int K, Causal cz, const float* A, int lda, const float* B, int ldb,
                      float* C, int ldc, bool acc) {
  for (; i + 6 <= M; i += 6) row_tile<TA, 6, NV>(i, K, cz, A, lda, B, ldb, C, ldc, acc);
  switch (M - i) {
    case 5: row_tile<TA, 5, NV>(i, K, cz, A, lda, B, ldb, C, ldc, acc); break;
    case 4: row_tile<TA, 4, NV>(i, K, cz, A, lda, B, ldb, C, ldc, acc); break;
    case 3: row_tile<TA, 3, NV>(i, K, cz, A, lda, B, ldb, C, ldc, acc); break;
    case 2: row_tile<TA, 2, NV>(i, K, cz, A, lda, B, ldb, C, ldc, acc); break;
    case 1: row_tile<TA, 1, NV>(i, K, cz, A, lda, B, ldb, C, ldc, acc); break;
    default: break;
  }
}
#endif

template <bool TA = false>
void gemm_tile(int M, int N, int K, const float* A, int lda, const float* B, int ldb, float* C, int ldc,
               bool acc, Causal cz = Causal::kNone) {
  int n0 = 0;
#ifdef ONESTEP_CPU_AVX2
  // Column strips outer, row tiles inner; with kOutLower, rows above the strip are skipped.
  for (; n0 + 16 <= N; n0 += 16)
    rows_avx2<TA, 2>(cz == Causal::kOutLower ? std::min(n0, M) : 0, M, K, cz, A, lda, B + n0, ldb, C + n0,
                     ldc, acc);
  for (; n0 + 8 <= N; n0 += 8)
    rows_avx2<TA, 1>(cz == Causal::kOutLower ? std::min(n0, M) : 0, M, K, cz, A, lda, B + n0, ldb, C + n0,
                     ldc, acc);
#endif
  for (int i = 0; i < M; ++i) {
    const int k0 = cz == Causal::kKBegin ? std::min(K, i) : 0;
    const int k1 = cz == Causal::kKEnd ? std::min(K, i + 1) : K;
    for (int n = n0; n < N; ++n) {
      float s = acc ? C[static_cast<int64_t>(i) * ldc + n] : 0.0f;
      for (int k = k0; k < k1; ++k)
        s = fmadd(*a_at<TA>(A, lda, i, k), B[static_cast<int64_t>(k) * ldb + n], s);
      C[static_cast<int64_t>(i) * ldc + n] = s;
    }
  }
}

// dst[c * ldd + r] = src[r * lds + c] for r < rows, c < cols.
inline void transpose(float* dst, int ldd, const float* src, int64_t lds, int rows, int cols) {
  int r0 = 0;
#ifdef ONESTEP_CPU_AVX2
  for (; r0 + 8 <= rows; r0 += 8) {
    int c0 = 0;
    for (; c0 + 8 <= cols; c0 += 8) {  // 8x8 in-register transpose
      __m256 x[8], t[8];
      for (int i = 0; i < 8; ++i) x[i] = _mm256_loadu_ps(src + (r0 + i) * lds + c0);
      for (int i = 0; i < 8; i += 2) {
        t[i] = _mm256_unpacklo_ps(x[i], x[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(x[i], x[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {
        x[i] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(1, 0, 1, 0));
        x[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], _MM_SHUFFLE(3, 2, 3, 2));
        x[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(1, 0, 1, 0));
        x[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], _MM_SHUFFLE(3, 2, 3, 2));
      }
      for (int i = 0; i < 4; ++i) {
        t[i] = _mm256_permute2f128_ps(x[i], x[i + 4], 0x20);
        t[i + 4] = _mm256_permute2f128_ps(x[i], x[i + 4], 0x31);
      }
      for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + static_cast<int64_t>(c0 + i) * ldd + r0, t[i]);
    }
    for (int r = r0; r < r0 + 8; ++r)
      for (int c = c0; c < cols; ++c) dst[static_cast<int64_t>(c) * ldd + r] = src[r * lds + c];
  }
#endif
  for (int r = r0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[static_cast<int64_t>(c) * ldd + r] = src[r * lds + c];
}

inline int round_up8(int n) { return (n + 7) & ~7; }

struct Dims {
  int B, T, H, KV, D, G, nblk;  // G = H / KV query heads per kv head; nblk = number of row/key blocks
  int64_t ldq, ldk;             // row strides of q/out/dq (H*D) and of k/v/dk/dv (KV*D)
  float scale;
  Dims(int B_, int T_, int H_, int KV_, int D_)
      : B(B_),
        T(T_),
        H(H_),
        KV(KV_),
        D(D_),
        G(H_ / KV_),
        nblk((T_ + kBlk - 1) / kBlk),
        ldq(static_cast<int64_t>(H_) * D_),
        ldk(static_cast<int64_t>(KV_) * D_),
        scale(1.0f / std::sqrt(static_cast<float>(D_))) {}
  int64_t qoff(int b, int t, int h) const {
    return (static_cast<int64_t>(b) * T + t) * ldq + static_cast<int64_t>(h) * D;
  }
  int64_t koff(int b, int t, int kvh) const {
    return (static_cast<int64_t>(b) * T + t) * ldk + static_cast<int64_t>(kvh) * D;
  }
  int64_t loff(int b, int h, int t) const { return (static_cast<int64_t>(b) * H + h) * T + t; }
  int rows(int blk) const { return std::min(kBlk, T - blk * kBlk); }
};

// S[m, 0..N) = Q K^T (raw, unscaled) for the tile, N = round_up8(kn); Qb is [m, D], Kt is [D, kBlk]
// with zero padding.
inline void scores(float* S, const float* Qb, const float* Kt, int D, int m, int kn, bool diag) {
  gemm_tile(m, round_up8(kn), D, Qb, D, Kt, kBlk, S, kBlk, false, diag ? Causal::kOutLower : Causal::kNone);
}

// Forward online-softmax step for one score row s (raw scores, valid for j < lim <= kn, computed up to
// round_up8(kn)): s[j] becomes exp(s[j] * scale - m_new) for j < lim and 0 for lim <= j < kn; updates the
// running max m and sum l; returns the rescale factor exp(m_old - m_new) for the row's accumulator.
inline float softmax_row_fwd(float* s, int lim, int kn, float scale, float& m, float& l) {
  float mx = -std::numeric_limits<float>::infinity(), sum = 0.0f, alpha;
#ifdef ONESTEP_CPU_AVX2
  const int n8 = round_up8(lim);
  const __m256 vscale = _mm256_set1_ps(scale), ninf = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 vmax = ninf;
  for (int j = 0; j < n8; j += 8) {
    const __m256 x =
        _mm256_blendv_ps(ninf, _mm256_mul_ps(_mm256_loadu_ps(s + j), vscale), lane_mask(lim - j));
    _mm256_storeu_ps(s + j, x);
    vmax = _mm256_max_ps(vmax, x);
  }
  mx = hmax8(vmax);
  const float mnew = std::max(m, mx);
  alpha = fast_exp(m - mnew);  // 0 on the first block (m = -inf)
  const __m256 vm = _mm256_set1_ps(mnew);
  __m256 vsum = _mm256_setzero_ps();
  for (int j = 0; j < n8; j += 8) {
    const __m256 p = exp8(_mm256_sub_ps(_mm256_loadu_ps(s + j), vm));  // masked lanes: exp(-inf) = 0
    _mm256_storeu_ps(s + j, p);
    vsum = _mm256_add_ps(vsum, p);
  }
  sum = hsum8(vsum);
  for (int j = n8; j < kn; ++j) s[j] = 0.0f;
#else
  for (int j = 0; j < lim; ++j) mx = std::max(mx, s[j] *= scale);
  const float mnew = std::max(m, mx);
  alpha = fast_exp(m - mnew);
  for (int j = 0; j < lim; ++j) sum += (s[j] = fast_exp(s[j] - mnew));
  for (int j = lim; j < kn; ++j) s[j] = 0.0f;
#endif
  l = l * alpha + sum;
  m = mnew;
  return alpha;
}

// Backward probabilities and score gradients for one row: p holds raw scores, ds holds dP = dO . v.
// p[j] = exp(p[j] * scale - lse), ds[j] = p[j] * (ds[j] - delta) * scale for j < lim; 0 for lim <= j < kn.
inline void probs_row_bwd(float* p, float* ds, int lim, int kn, float scale, float lse, float delta) {
#ifdef ONESTEP_CPU_AVX2
  const int n8 = round_up8(lim);
  const __m256 vscale = _mm256_set1_ps(scale), vl = _mm256_set1_ps(lse), vd = _mm256_set1_ps(delta);
  for (int j = 0; j < n8; j += 8) {
    const __m256 x = _mm256_mul_ps(_mm256_loadu_ps(p + j), vscale);
    // Masked lanes may hold unwritten scores (causal tiles skip them): and-ing with the mask zeroes them.
    const __m256 mask = lane_mask(lim - j);
    const __m256 e = _mm256_and_ps(exp8(_mm256_sub_ps(x, vl)), mask);
    const __m256 g = _mm256_mul_ps(_mm256_mul_ps(e, _mm256_sub_ps(_mm256_loadu_ps(ds + j), vd)), vscale);
    _mm256_storeu_ps(p + j, e);
    _mm256_storeu_ps(ds + j, _mm256_and_ps(g, mask));
  }
  for (int j = n8; j < kn; ++j) p[j] = ds[j] = 0.0f;
#else
  for (int j = 0; j < lim; ++j) {
    const float e = fast_exp(p[j] * scale - lse);
    p[j] = e;
    ds[j] = e * (ds[j] - delta) * scale;
  }
  for (int j = lim; j < kn; ++j) p[j] = ds[j] = 0.0f;
#endif
}

// Copies rows [t0, t0 + n) of one head of a [B,T,heads,D] tensor (row stride ld) into dst [n, D].
inline void pack_rows(float* dst, const float* src, int64_t ld, int n, int D) {
  for (int r = 0; r < n; ++r) {
    const float* a = src + r * ld;
    float* o = dst + static_cast<int64_t>(r) * D;
#pragma omp simd
    for (int c = 0; c < D; ++c) o[c] = a[c];
  }
}

// Transposes kn rows of k (or v) starting at koff into Kt [D, kBlk], zero-padding columns kn..kBlk.
inline void load_transposed(float* Kt, const float* k, const Dims& d, int64_t koff, int kn) {
  transpose(Kt, kBlk, k + koff, d.ldk, kn, d.D);
  if (kn < kBlk)
    for (int c = 0; c < d.D; ++c)
      for (int j = kn; j < kBlk; ++j) Kt[c * kBlk + j] = 0.0f;
}

// dst[r * ld + c] += src[r * D + c]
inline void add_rows(float* dst, int64_t ld, const float* src, int n, int D) {
  for (int r = 0; r < n; ++r) {
    float* o = dst + r * ld;
    const float* a = src + static_cast<int64_t>(r) * D;
#pragma omp simd
    for (int c = 0; c < D; ++c) o[c] += a[c];
  }
}

// Per-thread scratch for the backward. Blocks are packed contiguously: rows of q/k/v are H*D or KV*D
// floats apart, a power-of-two stride that makes strided tiles thrash the L1 cache sets.
struct BwdScratch {
  std::vector<float> Kt, Vt, Kb, Qb, dOb, P, dS, dK, dV;
  explicit BwdScratch(int D)
      : Kt(static_cast<size_t>(D) * kBlk),
        Vt(Kt.size()),
        Kb(Kt.size()),
        Qb(Kt.size()),
        dOb(Kt.size()),
        P(kBlk * kBlk),
        dS(kBlk * kBlk),
        dK(Kt.size()),
        dV(Kt.size()) {}
  // Key block kb of (b, kvh): Kt, Vt transposed and Kb row-major.
  void load_keys(const float* k, const float* v, const Dims& d, int b, int kvh, int kb) {
    const int kn = d.rows(kb);
    const int64_t ko = d.koff(b, kb * kBlk, kvh);
    load_transposed(Kt.data(), k, d, ko, kn);
    load_transposed(Vt.data(), v, d, ko, kn);
    pack_rows(Kb.data(), k + ko, d.ldk, kn, d.D);
  }
  // Query block qb of (b, h): Qb and dOb row-major.
  void load_queries(const float* q, const float* dout, const Dims& d, int b, int h, int qb) {
    const int m = d.rows(qb);
    const int64_t qo = d.qoff(b, qb * kBlk, h);
    pack_rows(Qb.data(), q + qo, d.ldq, m, d.D);
    pack_rows(dOb.data(), dout + qo, d.ldq, m, d.D);
  }
};

// One (query block qb, key block kb) tile of the backward for head h, with the key block and the query
// block loaded in w. Adds the tile's dq contribution to the global dq if dq != null, and its dk/dv
// contributions to w.dK / w.dV if do_dkv.
void backward_tile(BwdScratch& w, float* dq, bool do_dkv, const float* lse, const float* delta, const Dims& d,
                   int b, int h, int qb, int kb) {
  const int D = d.D;
  const int m = d.rows(qb), kn = d.rows(kb);
  const bool diag = qb == kb;
  const float* lrow = lse + d.loff(b, h, qb * kBlk);
  const float* drow = delta + d.loff(b, h, qb * kBlk);
  float* P = w.P.data();
  float* dS = w.dS.data();
  const Causal out_lower = diag ? Causal::kOutLower : Causal::kNone;
  scores(P, w.Qb.data(), w.Kt.data(), D, m, kn, diag);
  gemm_tile(m, round_up8(kn), D, w.dOb.data(), D, w.Vt.data(), kBlk, dS, kBlk, false,
            out_lower);  // dP = dO V^T
  for (int i = 0; i < m; ++i)
    probs_row_bwd(P + i * kBlk, dS + i * kBlk, diag ? i + 1 : kn, kn, d.scale, lrow[i], drow[i]);
  if (dq)  // dq += dS K
    gemm_tile(m, D, kn, dS, kBlk, w.Kb.data(), D, dq + d.qoff(b, qb * kBlk, h), static_cast<int>(d.ldq), true,
              diag ? Causal::kKEnd : Causal::kNone);
  if (do_dkv) {
    const Causal cz = diag ? Causal::kKBegin : Causal::kNone;
    gemm_tile<true>(kn, D, m, dS, kBlk, w.Qb.data(), D, w.dK.data(), D, true, cz);  // dk += dS^T Q
    gemm_tile<true>(kn, D, m, P, kBlk, w.dOb.data(), D, w.dV.data(), D, true, cz);  // dv += P^T dO
  }
}

// All dk/dv contributions of key block kb of (b, kvh), summed locally over (h in the group, qb >= kb)
// in order and then added to dk/dv; optionally also the dq contributions of those tiles.
void backward_key_block(BwdScratch& w, float* dq, float* dk, float* dv, const float* dout, const float* q,
                        const float* k, const float* v, const float* lse, const float* delta, const Dims& d,
                        int b, int kvh, int kb) {
  const int kn = d.rows(kb);
  w.load_keys(k, v, d, b, kvh, kb);
  std::fill(w.dK.begin(), w.dK.begin() + static_cast<int64_t>(kn) * d.D, 0.0f);
  std::fill(w.dV.begin(), w.dV.begin() + static_cast<int64_t>(kn) * d.D, 0.0f);
  for (int g = 0; g < d.G; ++g)
    for (int qb = kb; qb < d.nblk; ++qb) {
      const int h = kvh * d.G + g;
      w.load_queries(q, dout, d, b, h, qb);
      backward_tile(w, dq, true, lse, delta, d, b, h, qb, kb);
    }
  const int64_t ko = d.koff(b, kb * kBlk, kvh);
  add_rows(dk + ko, d.ldk, w.dK.data(), kn, d.D);
  add_rows(dv + ko, d.ldk, w.dV.data(), kn, d.D);
}

}  // namespace

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, int B, int T,
                       int H, int KV, int D) {
  if (B <= 0 || T <= 0 || H <= 0 || D <= 0) return;
  const Dims d(B, T, H, KV, D);
  const int ntasks = B * H * d.nblk;
#pragma omp parallel
  {
    const size_t blk = static_cast<size_t>(kBlk) * D;
    std::vector<float> Qb(blk), Kt(blk), Vb(blk), O(blk), S(kBlk * kBlk);
    float mrow[kBlk], lrow[kBlk];
    // Round-robin over (b, h, qb): the causal cost grows with qb, so interleaving balances the threads.
#pragma omp for schedule(static, 1)
    for (int task = 0; task < ntasks; ++task) {
      const int qb = task % d.nblk, bh = task / d.nblk, h = bh % H, b = bh / H, kvh = h / d.G;
      const int i0 = qb * kBlk, m = d.rows(qb);
      const int64_t qo = d.qoff(b, i0, h);
      pack_rows(Qb.data(), q + qo, d.ldq, m, D);
      std::fill(O.begin(), O.begin() + static_cast<int64_t>(m) * D, 0.0f);
      for (int i = 0; i < m; ++i) {
        mrow[i] = -std::numeric_limits<float>::infinity();
        lrow[i] = 0.0f;
      }
      for (int kb = 0; kb <= qb; ++kb) {
        const int kn = d.rows(kb);
        const bool diag = kb == qb;
        const int64_t ko = d.koff(b, kb * kBlk, kvh);
        load_transposed(Kt.data(), k, d, ko, kn);
        pack_rows(Vb.data(), v + ko, d.ldk, kn, D);
        scores(S.data(), Qb.data(), Kt.data(), D, m, kn, diag);
        for (int i = 0; i < m; ++i) {
          const float alpha =
              softmax_row_fwd(S.data() + i * kBlk, diag ? i + 1 : kn, kn, d.scale, mrow[i], lrow[i]);
          if (alpha != 1.0f) {
            float* o = O.data() + static_cast<int64_t>(i) * D;
#pragma omp simd
            for (int c = 0; c < D; ++c) o[c] *= alpha;
          }
        }
        gemm_tile(m, D, kn, S.data(), kBlk, Vb.data(), D, O.data(), D, true,  // O += P V
                  diag ? Causal::kKEnd : Causal::kNone);
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
    // Pass 1: dq, task (b, h, qb), key blocks in order (the same additions as the single pass makes).
    const int n1 = B * H * d.nblk;
#pragma omp for schedule(static, 1) nowait
    for (int task = 0; task < n1; ++task) {
      const int qb = task % d.nblk, bh = task / d.nblk, h = bh % H, b = bh / H;
      w.load_queries(q, dout, d, b, h, qb);
      for (int kb = 0; kb <= qb; ++kb) {
        w.load_keys(k, v, d, b, h / d.G, kb);
        backward_tile(w, dq, false, lse, dl, d, b, h, qb, kb);
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
