// Few-row (m <= 16) products of bf16/fp16 activations with compressed weights (int8 for
// W8A16, sign or ternary bits) on the tensor cores: each weight is decoded to an exact value
// of x's type in registers and goes through mma m16n8k16 with fp32 sums, so the kernel is
// bound by the weight stream, not by re-reading x per channel as one-warp-per-channel
// kernels are. Internal linkage, like common.cuh.
//
// The weights are the mma's A operand (16 output channels x 16 of K) and x its B operand
// (16 of K x 8 rows): a decoded pair goes straight into an A register and two adjacent words
// of a 16-byte x load make B, so no register is copied to assemble an operand, and one mma
// covers 16 channels (x rows 8-15, when m > 8, take a second mma with the same A).
//
// A block owns 16 x TILES output channels (TILES channel tiles of 16, each its own A
// operand against the same x; two tiles for more than 8 rows of x, whose loads from L2 would
// otherwise outweigh the weights' several times over); its kSkinnyWarps warps split K in
// steps of 4 x Decoder::kLaneElements (warp w takes steps w, w + kSkinnyWarps, ...). Per
// step lane (g, t) = (lane / 4, lane % 4) decodes kLaneElements weights of each of its
// channels (skinny_channel) from element k0 + kLaneElements t on and holds the x values
// there of row g (and g + 8) in 16-byte pieces; each piece feeds two mmas per tile, its
// words 0-1 and 2-3. That reorders K inside the step (the mma's k 2 t + j is
// k0 + kLaneElements t + 8 q + j here, its k 8 + 2 t + j is ... + 2 + j), the same way for x
// and weights, which a sum does not see. The warps' sums meet in shared memory and the
// caller's epilogue finishes each output.
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
__device__ __forceinline__ void mma_16bit(float (&d)[4], const uint32_t (&a)[4], uint2 b) {
  static_assert(std::is_same_v<T, __nv_bfloat16> || std::is_same_v<T, __half>, "bf16 or fp16 operands");
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b.x), "r"(b.y));
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

// The A operand of one mma: decoded pairs p and p + 1 of the lane's channels g and g + 8
// (PTX fragment order: a0/a2 row g's lower and upper K, a1/a3 row g + 8's).
__host__ __device__ __forceinline__ AOperand skinny_weights(uint32_t g_pair, uint32_t g8_pair, uint32_t g_next,
                                                            uint32_t g8_next) {
  return AOperand{{g_pair, g8_pair, g_next, g8_next}};
}

// The B operand of one mma: words 2 half and 2 half + 1 of a 16-byte x piece, x values of
// the weights' pairs p and p + 1.
__host__ __device__ __forceinline__ uint2 skinny_x(const int4& piece, int half) {
  return half == 0 ? make_uint2(uint32_t(piece.x), uint32_t(piece.y))
                   : make_uint2(uint32_t(piece.z), uint32_t(piece.w));
}

// The channel (within the block's 16 x TILES) of a lane's decoder d: channel tile d / 2,
// row g or g + 8 of its A operand.
__host__ __device__ __forceinline__ int skinny_channel(int lane, int d) {
  return lane / 4 + 8 * (d % 2) + 16 * (d / 2);
}

// Where a lane's accumulator e (4 per mma: channel tile e / 8, x rows 8 ((e / 4) % 2) ..)
// lands: x row, and channel within the block's (the m16n8 fragment: rows g and g + 8,
// columns 2 t and + 1).
struct SkinnyOutput {
  int row, channel;
};
__host__ __device__ __forceinline__ SkinnyOutput skinny_output(int lane, int e) {
  return {8 * (e / 4 % 2) + 2 * (lane % 4) + e % 2, lane / 4 + 8 * (e % 4 / 2) + 16 * (e / 8)};
}

// The K loop and block reduction described above. The Decoders, decoders[d] made per lane
// for channel col0 + skinny_channel(lane, d), have
//   kLaneElements (a multiple of 8): weights a lane decodes per step;
//   kStepsInFlight: steps whose weights a lane loads before decoding the first (the
//     weight stream's bytes in flight), for one tile; TILES tiles load 1 / TILES as many;
//   kScalePerStep: whether each step's sums are scaled on their own (one scale group per
//     step), by float step_scale(int64_t k0): the scale of the decoder's channel;
//   Loaded load(int64_t k) const: the lane's weights from element k on (zeros past K or N);
//   uint32_t pair(const Loaded&, int i) const: loaded weights 2 i and 2 i + 1 as a pair of
//     T, lower k in the low half.
// finish(row, col, sum) is then called once for each output of the block's channels
// (columns col0 ..) inside [m, n).
template <typename T, typename Decoder, int DECODERS, typename Finish>
__device__ __forceinline__ void skinny_mma(const T* x, int64_t m, int64_t n, int64_t k, int64_t col0,
                                           const Decoder (&decoders)[DECODERS], Finish&& finish) {
  constexpr int kTiles = DECODERS / 2, kPieces = Decoder::kLaneElements / 8;
  constexpr int kInFlight = Decoder::kStepsInFlight / kTiles > 0 ? Decoder::kStepsInFlight / kTiles : 1;
  constexpr int64_t kStep = 4 * Decoder::kLaneElements, kWarpStride = kSkinnyWarps * kStep;
  static_assert(DECODERS % 2 == 0, "two decoders (channels g, g + 8) per tile");
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = lane / 4, lane_offset = Decoder::kLaneElements * (lane % 4);
  const bool second_row_tile = m > 8;  // the same for the whole block
  float acc[kTiles][2][4] = {};        // per channel tile, the mmas of x rows 0-7 and 8-15
  for (int64_t k0 = int64_t(warp) * kStep; k0 < k; k0 += kInFlight * kWarpStride) {
    typename Decoder::Loaded loaded[kInFlight][DECODERS];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
#pragma unroll
      for (int d = 0; d < DECODERS; ++d) loaded[u][d] = decoders[d].load(k0 + u * kWarpStride + lane_offset);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      const int64_t step0 = k0 + u * kWarpStride;
      if (step0 >= k) break;  // the same for the whole warp
      int4 lo[kPieces], hi[kPieces];
      skinny_x_pieces(x, m, k, row, step0 + lane_offset, lo);
      if (second_row_tile) skinny_x_pieces(x, m, k, row + 8, step0 + lane_offset, hi);
      float step[kTiles][2][4] = {};
      float(&sums)[kTiles][2][4] = Decoder::kScalePerStep ? step : acc;
#pragma unroll
      for (int q = 0; q < kPieces; ++q) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {  // weights 8 q + 4 half .. + 3: pairs 4 q + 2 half, + 1
          const int i = 4 * q + 2 * half;
#pragma unroll
          for (int c = 0; c < kTiles; ++c) {
            const Decoder& g = decoders[2 * c];
            const Decoder& g8 = decoders[2 * c + 1];
            const typename Decoder::Loaded& wg = loaded[u][2 * c];
            const typename Decoder::Loaded& wg8 = loaded[u][2 * c + 1];
            const AOperand a = skinny_weights(g.pair(wg, i), g8.pair(wg8, i), g.pair(wg, i + 1), g8.pair(wg8, i + 1));
            mma_16bit<T>(sums[c][0], a.regs, skinny_x(lo[q], half));
            if (second_row_tile) mma_16bit<T>(sums[c][1], a.regs, skinny_x(hi[q], half));
          }
        }
      }
      if constexpr (Decoder::kScalePerStep) {
#pragma unroll
        for (int c = 0; c < kTiles; ++c) {
          const float scales[2] = {decoders[2 * c].step_scale(step0), decoders[2 * c + 1].step_scale(step0)};
#pragma unroll
          for (int e = 0; e < 8; ++e) {  // accumulator e % 4 of row tile e / 4: channel g + 8 ((e % 4) / 2)
            acc[c][e / 4][e % 4] = __fmaf_rn(step[c][e / 4][e % 4], scales[e % 4 / 2], acc[c][e / 4][e % 4]);
          }
        }
      }
    }
  }
  float flat[8 * kTiles];
#pragma unroll
  for (int e = 0; e < 8 * kTiles; ++e) flat[e] = acc[e / 8][e / 4 % 2][e % 4];
  sum_fragments_over_warps<kSkinnyWarps>(flat, [&](int lane_of, int e, float total) {
    const SkinnyOutput at = skinny_output(lane_of, e);
    if (at.row < m && col0 + at.channel < n) finish(at.row, col0 + at.channel, total);
  });
}

// x staged in shared memory (the default; EFFGEN_CUDA_SKINNY_X=global reads it from global
// memory): the block copies x [m, k] once, then every step reads it there instead of from L2.
// Session 10's counters had the binary and W8A16 decode kernels stalled mostly on global
// loads, x being loaded per step while the weights are loaded ahead. Session 44 (H200, M = 1):
// 1.10x binary, 1.03x ternary, 1.04-1.09x W8A16 over global memory, short of the stall share.
// Taken only where x fits: kMaxStagedXBytes, so that with the block reduction's 16 KB at most
// a block stays inside the 48 KB it may use without an opt-in.
constexpr int64_t kMaxStagedXBytes = 32 << 10;

template <typename T>
__host__ __device__ __forceinline__ int64_t staged_x_bytes(int64_t m, int64_t k) {
  return m * k * static_cast<int64_t>(sizeof(T));
}

// x [m, k] (16-byte aligned, k a multiple of 8) copied into the block's dynamic shared
// memory by all its threads; returns the copy.
template <typename T>
__device__ __forceinline__ const T* stage_x(const T* x, int64_t m, int64_t k) {
  extern __shared__ int4 staged[];
  const int64_t pieces = staged_x_bytes<T>(m, k) / 16;
  for (int64_t i = threadIdx.x; i < pieces; i += blockDim.x) staged[i] = reinterpret_cast<const int4*>(x)[i];
  __syncthreads();
  return reinterpret_cast<const T*>(staged);
}

// x as the kernel reads it: staged (STAGED) or in global memory.
template <bool STAGED, typename T>
__device__ __forceinline__ const T* skinny_x_source(const T* x, int64_t m, int64_t k) {
  if constexpr (STAGED) return stage_x(x, m, k);
  return x;
}

// Channel tiles per block for m rows of x (see above), to fn as a compile-time constant.
template <typename Fn>
void with_skinny_tiles(int64_t m, Fn&& fn) {
  if (m > 8) {
    fn(std::integral_constant<int, 2>{});
  } else {
    fn(std::integral_constant<int, 1>{});
  }
}

// Whether x is staged (asked for and fits), to fn as a compile-time constant with the
// dynamic shared memory it needs.
template <typename T, typename Fn>
void with_staged_x(bool asked, int64_t m, int64_t k, Fn&& fn) {
  if (asked && staged_x_bytes<T>(m, k) <= kMaxStagedXBytes) {
    fn(std::true_type{}, static_cast<size_t>(staged_x_bytes<T>(m, k)));
  } else {
    fn(std::false_type{}, size_t{0});
  }
}

// Blocks of skinny_mma for n output channels in tiles of 16 x TILES.
template <int TILES>
unsigned skinny_blocks(int64_t n) {
  return static_cast<unsigned>((n + 16 * TILES - 1) / (16 * TILES));
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
