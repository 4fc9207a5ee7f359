// Pieces shared by the int8 GEMM kernels (int8_gemm.cu, int8_gemm_tiled.cu,
// int8_gemm_wgmma.cu): the int8 mma.sync instruction and the fused epilogue. Internal linkage, like common.cuh.
#pragma once
#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "convert.cuh"
#include "int8_gemm.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the int8 GEMM needs int8 mma.sync (sm_80 or newer): set EFFGEN_CUDA_ARCHS accordingly"
#endif

namespace effgen::cuda {
namespace {

// A block-relative position: an output's row (of a) and column (row of b), or a staged
// row and byte.
struct TilePosition {
  int row, col;
};

__device__ __forceinline__ uint32_t shared_address(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// d += a (16 x 32, row-major) * b (32 x 8, column-major), int8 in, int32 exact. Fragments
// (PTX ISA, lane = 4 group + thread): a = rows group and group + 8, bytes 4 thread.. and
// 16 + 4 thread..; b = column group, the same bytes of K; d = rows group and group + 8,
// columns 2 thread and 2 thread + 1. Bytes in a word run along K, lowest first.
__device__ __forceinline__ void mma_s8(int32_t (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// out[row][col] = float(acc) * a_scale[row] * b_scale[col] (+ bias[col]), each step rounded
// on its own (no FMA), in the order of reference.int8_linear, so every kernel is bit-exact.
// Skips positions outside the output.
__device__ __forceinline__ float scaled_by(const Int8GemmArgs& p, float row_scale, int64_t col, int32_t acc) {
  float v = __fmul_rn(__fmul_rn(static_cast<float>(acc), row_scale), p.b_scale[col * p.b_stride]);
  return p.bias == nullptr ? v : __fadd_rn(v, p.bias[col]);
}
__device__ __forceinline__ float scaled_value(const Int8GemmArgs& p, int64_t row, int64_t col, int32_t acc) {
  return scaled_by(p, p.a_scale[row * p.a_stride], col, acc);
}
template <typename Out>
__device__ __forceinline__ void store_scaled(const Int8GemmArgs& p, int64_t row, int64_t col, int32_t acc) {
  if (row >= p.m || col >= p.n) return;
  store_value(static_cast<Out*>(p.out) + row * p.n + col, scaled_value(p, row, col, acc));
}

// The scale of a row of a (0 past the output: its values are never stored), for epilogues
// that load it once for the many outputs of a row they hold.
__device__ __forceinline__ float row_scale_of(const Int8GemmArgs& p, int64_t row) {
  return row < p.m ? p.a_scale[row * p.a_stride] : 0.0f;
}

// Outputs (row, col) and (row, col + 1), from acc0 and acc1, as one store where both are inside
// and the pair is aligned for it (the tensor-core fragments hold adjacent columns in pairs).
template <typename Out>
__device__ __forceinline__ void store_scaled_pair(const Int8GemmArgs& p, int64_t row, int64_t col, float row_scale,
                                                  int32_t acc0, int32_t acc1) {
  using Pair = std::conditional_t<sizeof(Out) == 4, uint2, uint32_t>;
  if (row >= p.m || col >= p.n) return;
  Out* dst = static_cast<Out*>(p.out) + row * p.n + col;
  const float v0 = scaled_by(p, row_scale, col, acc0);
  if (col + 1 >= p.n) {
    store_value(dst, v0);
    return;
  }
  const float v1 = scaled_by(p, row_scale, col + 1, acc1);
  if (aligned(dst, sizeof(Pair))) {
    union {
      Out values[2];
      Pair pair;
    } out;
    out.values[0] = from_f32<Out>(v0), out.values[1] = from_f32<Out>(v1);
    *reinterpret_cast<Pair*>(dst) = out.pair;
  } else {
    store_value(dst, v0), store_value(dst + 1, v1);
  }
}

// k % 16 == 0 and a, b 16-byte aligned: every 16-byte piece of a row of a or b is one
// aligned load.
inline bool in_16_byte_pieces(const Int8GemmArgs& args) {
  return args.k % 16 == 0 && aligned(args.a, 16) && aligned(args.b, 16);
}

}  // namespace

// The pipelined GEMMs for products with more than a few rows: mma.sync (int8_gemm_tiled.cu,
// needing in_16_byte_pieces(args)) and TMA + wgmma on sm_90a (int8_gemm_wgmma.cu, only where
// int8_gemm_wgmma_supported() and tma_gemm_takes(args)).
cudaError_t int8_gemm_tiled(const Int8GemmArgs& args, cudaStream_t stream);
bool tma_gemm_takes(const Int8GemmArgs& args);
cudaError_t int8_gemm_wgmma(const Int8GemmArgs& args, cudaStream_t stream);

}  // namespace effgen::cuda
