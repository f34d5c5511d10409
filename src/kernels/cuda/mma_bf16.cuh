// Private to src/kernels/cuda: the tensor-core instruction mma.sync.m16n8k16 (bf16 operands, fp32 accumulation)
// on explicit registers, as FlashAttention-2 uses it: the fragment layout is documented (unlike WMMA's), so that a
// product's fp32 result can be rescaled row by row and fed back as the next product's bf16 operand without a trip
// through shared memory. One warp computes C[16, 8] += A[16, 16] B[16, 8]; with g = lane / 4 and t = lane % 4
// (PTX ISA, "Matrix Fragments for mma.m16n8k16"), each register packs two bf16, the lower column or row first:
//   A, row-major: a[0] = A[g][2t, 2t+1], a[1] = A[g+8][2t, 2t+1], a[2] = A[g][2t+8, 2t+9], a[3] = A[g+8][2t+8, 2t+9]
//   B, by column: b[0] = B[2t, 2t+1][g], b[1] = B[2t+8, 2t+9][g]
//   C (fp32):     c[0], c[1] = C[g][2t, 2t+1], c[2], c[3] = C[g+8][2t, 2t+1]
// So C fragments of two neighbouring 8-column tiles, packed pairwise, are the A fragment of their 16 columns.
#pragma once
#include <cuda_bf16.h>

#include <cstdint>
#if !defined(__CUDACC__)
#include <mma.h>  // the CPU emulation's stand-in for the instruction
#endif

namespace onestep::cuda::detail {

// Two bf16 in one register, `lo` in the lower half.
__device__ inline uint32_t pack_pair(__nv_bfloat16 lo, __nv_bfloat16 hi) {
  return static_cast<uint32_t>(__bfloat16_as_ushort(lo)) | static_cast<uint32_t>(__bfloat16_as_ushort(hi)) << 16;
}
// Two fp32 rounded to bf16 (to nearest, ties to even) in one register.
__device__ inline uint32_t pack_bf16(float lo, float hi) {
  return pack_pair(__float2bfloat16_rn(lo), __float2bfloat16_rn(hi));
}

// Four 8 x 8 bf16 matrices from shared memory (ldmatrix .x4): lane 8 i + j passes the address of row j of matrix i
// (16-byte aligned), and r[i] receives matrix i's row g, columns 2t and 2t + 1, i.e. one A or B fragment register
// per matrix; with Trans, the transposed matrix's: column g, rows 2t and 2t + 1. One instruction where loading the
// same fragments pair by pair takes four (or, for a transposed B, sixteen 16-bit loads). Every lane calls it.
template <bool Trans>
__device__ inline void ldmatrix_x4_as(uint32_t (&r)[4], const __nv_bfloat16* row) {
#if defined(__CUDACC__) && __CUDA_ARCH__ >= 800
  const uint32_t a = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  if constexpr (Trans)
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
  else
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(a));
#elif defined(__CUDACC__)
  __trap();
#else
  ::emu::ldmatrix_x4(r, row, Trans);
#endif
}
__device__ inline void ldmatrix_x4(uint32_t (&r)[4], const __nv_bfloat16* row) { ldmatrix_x4_as<false>(r, row); }
__device__ inline void ldmatrix_x4_trans(uint32_t (&r)[4], const __nv_bfloat16* row) { ldmatrix_x4_as<true>(r, row); }

// c += A B over the whole warp (every lane calls it).
__device__ inline void mma_bf16(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDACC__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#elif defined(__CUDACC__)
  __trap();  // compiled for a GPU without bf16 tensor cores: fail loudly rather than leave results unwritten
#else
  ::emu::mma_m16n8k16_bf16(c, a, b);  // tests/cuda_emu/include/mma.h
#endif
}

}  // namespace onestep::cuda::detail
