// Few-row (m <= 16) products of bf16/fp16 activations with compressed weights (int8 for
// W8A16, sign or ternary bits) on the tensor cores: each weight is decoded to an exact value
// of x's type in registers and goes through mma m16n8k16 with fp32 sums, so the kernel is
// bound by the weight stream, not by re-reading x per channel as one-warp-per-channel
// kernels are. Internal linkage, like common.cuh.
//
// A block owns 8 output channels (one n8 tile); its kSkinnyWarps warps split K in steps of
// 4 x Decoder::kLaneElements (warp w takes steps w, w + kSkinnyWarps, ...). Per step lane
// (g, t) = (lane / 4, lane % 4) decodes kLaneElements weights of channel g from element
// k0 + kLaneElements t on and holds the x values there of rows g and g + 8 (zero past m) in
// 16-byte pieces; each piece feeds two mmas, its words 0-1 and 2-3. That reorders K inside
// the step (the mma's k 2 t + j is k0 + kLaneElements t + 8 q + j here, its k 8 + 2 t + j
// is ... + 2 + j), the same way for x and weights, which a sum does not see. The warps'
// sums meet in shared memory and the caller's epilogue finishes each output.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "convert.cuh"

namespace effgen::cuda {
namespace {

constexpr int kSkinnyWarps = 8;

template <typename T>
__device__ __forceinline__ void mma_16bit(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "bf16 or fp16 operands");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

// The PIECES 16-byte pieces of row `row` of x [m, k] from element col on; zero past the
// rows or K (k a multiple of 8 PIECES, so a piece is all in or all out).
template <int PIECES, typename T>
__device__ __forceinline__ void skinny_x_pieces(const T* x, int64_t m, int64_t k, int64_t row, int64_t col,
                                                int4 (&out)[PIECES]) {
  const bool inside = row < m && col < k;
#pragma unroll
  for (int q = 0; q < PIECES; ++q) {
    out[q] = inside ? reinterpret_cast<const int4*>(x + row * k + col)[q] : make_int4(0, 0, 0, 0);
  }
}

// The K loop and block reduction described above. Decoder, made per lane for channel
// col0 + lane / 4, has
//   kLaneElements (a multiple of 8): weights a lane decodes per step;
//   kStepsInFlight: steps whose weights a lane loads before decoding the first (the
//     weight stream's bytes in flight);
//   kScalePerStep: whether each step's sums are scaled on their own (one scale group per
//     step), by float2 step_scales(int64_t k0): the scales of the lane's output columns
//     col0 + 2 (lane % 4) and + 1;
//   Loaded load(int64_t k) const: the lane's weights from element k on (zeros past K or N);
//   uint32_t pair(const Loaded&, int i) const: loaded weights 2 i and 2 i + 1 as a pair of
//     T, lower k in the low half.
// finish(row, col, sum) is then called once for each output of the block's tile inside
// [m, n), by the first 128 threads.
template <typename T, typename Decoder, typename Finish>
__device__ __forceinline__ void skinny_mma(const T* x, int64_t m, int64_t n, int64_t k, const Decoder& decoder,
                                           Finish&& finish) {
  constexpr int kPieces = Decoder::kLaneElements / 8;
  constexpr int64_t kStep = 4 * Decoder::kLaneElements, kWarpStride = kSkinnyWarps * kStep;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col0 = int64_t(blockIdx.x) * 8, row = lane / 4, lane_offset = Decoder::kLaneElements * (lane % 4);
  float acc[4] = {};
  for (int64_t k0 = int64_t(warp) * kStep; k0 < k; k0 += Decoder::kStepsInFlight * kWarpStride) {
    typename Decoder::Loaded loaded[Decoder::kStepsInFlight];
#pragma unroll
    for (int u = 0; u < Decoder::kStepsInFlight; ++u) loaded[u] = decoder.load(k0 + u * kWarpStride + lane_offset);
#pragma unroll
    for (int u = 0; u < Decoder::kStepsInFlight; ++u) {
      const int64_t step0 = k0 + u * kWarpStride;
      if (step0 >= k) break;  // the same for the whole warp
      int4 lo[kPieces], hi[kPieces];
      skinny_x_pieces(x, m, k, row, step0 + lane_offset, lo);
      skinny_x_pieces(x, m, k, row + 8, step0 + lane_offset, hi);
      float step[4] = {};
      float(&sums)[4] = Decoder::kScalePerStep ? step : acc;
#pragma unroll
      for (int q = 0; q < kPieces; ++q) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {  // weights 8 q + 4 half .. + 3: pairs 4 q + 2 half, + 1
          mma_16bit<T>(sums, a_operand(lo[q], hi[q], half).regs, decoder.pair(loaded[u], 4 * q + 2 * half),
                       decoder.pair(loaded[u], 4 * q + 2 * half + 1));
        }
      }
      if constexpr (Decoder::kScalePerStep) {
        const float2 scales = decoder.step_scales(step0);
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[e] = __fmaf_rn(step[e], e % 2 ? scales.y : scales.x, acc[e]);  // column e % 2
      }
    }
  }
  sum_fragments_over_warps<kSkinnyWarps>(acc, [&](int lane_of, int e, float total) {
    // the m16n8 accumulator fragment: rows lane / 4 and + 8, columns 2 (lane % 4) and + 1
    const int64_t r = lane_of / 4 + e / 2 * 8, c = col0 + 2 * (lane_of % 4) + e % 2;
    if (r < m && c < n) finish(r, c, total);
  });
}

// Calls fn with a value of the 16-bit type of `dtype` (bf16/fp16) and returns true; false for
// fp32, which has no exact 16-bit form and stays on the callers' CUDA-core kernels.
template <typename Fn>
bool with_16bit_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kBF16: fn(__nv_bfloat16{}); return true;
    case DType::kF16: fn(__half{}); return true;
    case DType::kF32: return false;
  }
  return false;
}

}  // namespace
}  // namespace effgen::cuda
