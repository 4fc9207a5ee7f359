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
// A block's tile is 16 x TILES output channels (TILES channel tiles of 16, each its own A
// operand against the same x; two tiles for more than 8 rows of x, whose loads from L2 would
// otherwise outweigh the weights' several times over); a block takes one tile, or several in
// turn when the grid is capped (skinny_walk); its kSkinnyWarps warps split K in
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

// Which channel tiles and K steps a warp of a block runs, and in what order (checked on the
// host by tests/cuda_host/skinny_walk.cu). A block takes the tiles first, first + stride, ...
// below `tiles` (blockIdx.x, gridDim.x: one tile a block unless EFFGEN_CUDA_SKINNY_BLOCKS
// caps the grid); warp w takes steps w, w + kSkinnyWarps, ... of each, `steps` of them.
struct SkinnyWalk {
  int tiles, first, stride, steps;  // tiles: a grid's blocks at most (2^31 - 1)
};

// A warp's steps per tile for k elements in steps of step_elements: at least one, so that a
// tile with k = 0 still reaches its epilogue (the bias alone).
__host__ __device__ __forceinline__ int skinny_steps_per_warp(int64_t k, int64_t step_elements) {
  const int64_t warp_steps = ((k + step_elements - 1) / step_elements + kSkinnyWarps - 1) / kSkinnyWarps;
  return warp_steps > 0 ? static_cast<int>(warp_steps) : 1;
}

// A place in a walk: the channel tile and the warp's step j in it.
struct SkinnyCursor {
  int tile, step;
};

// Where the K of warp `warp`'s step at `at` starts: its step j is the tile's step
// warp + kSkinnyWarps j.
__host__ __device__ __forceinline__ int64_t skinny_step_k0(int warp, const SkinnyCursor& at, int64_t step_elements) {
  return (warp + int64_t{kSkinnyWarps} * at.step) * step_elements;
}

// Runs a warp's walk, tile after tile, through F register slots: the first F steps' loads,
// then started() (the kernel stages x there, under those loads), then step s used from slot
// s % F and at once that slot's load of step s + F. So F - 1 steps stay in flight while a step
// is decoded, and the next tile's loads run under a tile's epilogue. load(slot, cursor) and
// use(slot, cursor); every warp of a block walks as many steps, so a barrier in use (the
// epilogue's) is reached by all of them.
template <int F, typename Load, typename Started, typename Use>
__host__ __device__ __forceinline__ void skinny_walk(const SkinnyWalk& walk, Load&& load, Started&& started,
                                                     Use&& use) {
  const int block_tiles = walk.first < walk.tiles ? (walk.tiles - walk.first + walk.stride - 1) / walk.stride : 0;
  const int64_t uses = int64_t{block_tiles} * walk.steps;
  SkinnyCursor loading{walk.first, 0}, using_at{walk.first, 0};
  const auto advance = [&](SkinnyCursor& at) {
    if (++at.step == walk.steps) at = {at.tile + walk.stride, 0};
  };
#pragma unroll
  for (int u = 0; u < F; ++u) {
    if (u < uses) {
      load(u, loading);
      advance(loading);
    }
  }
  started();
  for (int64_t s0 = 0; s0 < uses; s0 += F) {
#pragma unroll
    for (int u = 0; u < F; ++u) {
      if (s0 + u >= uses) break;  // the same for the whole block
      use(u, using_at);
      if (s0 + u + F < uses) {
        load(u, loading);
        advance(loading);
      }
      advance(using_at);
    }
  }
}

// The K loop and block reduction described above, over the block's tiles (skinny_walk). The
// decoders, decoder_for(col0, d) for the channel col0 + skinny_channel(lane, d) of the tile
// whose channels start at col0, have
//   kLaneElements (a multiple of 8): weights a lane decodes per step;
//   kStepsInFlight: steps whose weights a lane has loaded ahead (the weight stream's bytes in
//     flight), for one tile; TILES tiles load 1 / TILES as many;
//   kScalePerStep: whether each step's sums are scaled on their own (one scale group per
//     step), by float step_scale(int64_t k0): the scale of the decoder's channel;
//   Loaded load(int64_t k) const: the lane's weights from element k on (zeros past K or N);
//   uint32_t pair(const Loaded&, int i) const: loaded weights 2 i and 2 i + 1 as a pair of
//     T, lower k in the low half.
// x is read from shared memory when STAGED (copied there under the first loads); ROW_TILES is
// 1 for m <= 8 (one mma per channel tile and step: no registers for x rows 8-15, which would
// be zeros), 2 for more (with_skinny_tiles). finish(row, col, sum) is then called once for
// each output of the block's channels inside [m, n).
template <typename T, bool STAGED, int TILES, int ROW_TILES, typename DecoderFor, typename Finish>
__device__ __forceinline__ void skinny_mma(const T* x_global, int64_t m, int64_t n, int64_t k,
                                           DecoderFor&& decoder_for, Finish&& finish) {
  using Decoder = decltype(decoder_for(int64_t{0}, 0));
  constexpr int kDecoders = 2 * TILES, kPieces = Decoder::kLaneElements / 8;
  constexpr int kInFlight = Decoder::kStepsInFlight / TILES > 0 ? Decoder::kStepsInFlight / TILES : 1;
  constexpr int64_t kStep = 4 * Decoder::kLaneElements;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t row = lane / 4, lane_offset = Decoder::kLaneElements * (lane % 4);
  constexpr bool kSecondRowTile = ROW_TILES == 2;
  const SkinnyWalk walk{static_cast<int>((n + 16 * TILES - 1) / (16 * TILES)), static_cast<int>(blockIdx.x),
                        static_cast<int>(gridDim.x), skinny_steps_per_warp(k, kStep)};
  const T* x = x_global;
  typename Decoder::Loaded loaded[kInFlight][kDecoders];
  float acc[TILES][2][4] = {};  // per channel tile, the mmas of x rows 0-7 and 8-15
  const auto load = [&](int slot, const SkinnyCursor& at) {
    const int64_t col0 = int64_t{at.tile} * 16 * TILES, k0 = skinny_step_k0(warp, at, kStep) + lane_offset;
#pragma unroll
    for (int d = 0; d < kDecoders; ++d) loaded[slot][d] = decoder_for(col0, d).load(k0);
  };
  const auto step = [&](int slot, int64_t col0, int64_t step0) {
    int4 lo[kPieces], hi[kPieces];
    skinny_x_pieces(x, m, k, row, step0 + lane_offset, lo);
    if constexpr (kSecondRowTile) skinny_x_pieces(x, m, k, row + 8, step0 + lane_offset, hi);
    float step_sums[TILES][2][4] = {};
    float(&sums)[TILES][2][4] = Decoder::kScalePerStep ? step_sums : acc;
#pragma unroll
    for (int q = 0; q < kPieces; ++q) {
#pragma unroll
      for (int half = 0; half < 2; ++half) {  // weights 8 q + 4 half .. + 3: pairs 4 q + 2 half, + 1
        const int i = 4 * q + 2 * half;
#pragma unroll
        for (int c = 0; c < TILES; ++c) {
          const Decoder g = decoder_for(col0, 2 * c), g8 = decoder_for(col0, 2 * c + 1);
          const typename Decoder::Loaded& wg = loaded[slot][2 * c];
          const typename Decoder::Loaded& wg8 = loaded[slot][2 * c + 1];
          const AOperand a = skinny_weights(g.pair(wg, i), g8.pair(wg8, i), g.pair(wg, i + 1), g8.pair(wg8, i + 1));
          mma_16bit<T>(sums[c][0], a.regs, skinny_x(lo[q], half));
          if constexpr (kSecondRowTile) mma_16bit<T>(sums[c][1], a.regs, skinny_x(hi[q], half));
        }
      }
    }
    if constexpr (Decoder::kScalePerStep) {
#pragma unroll
      for (int c = 0; c < TILES; ++c) {
        const float scales[2] = {decoder_for(col0, 2 * c).step_scale(step0),
                                 decoder_for(col0, 2 * c + 1).step_scale(step0)};
#pragma unroll
        for (int e = 0; e < 8; ++e) {  // accumulator e % 4 of row tile e / 4: channel g + 8 ((e % 4) / 2)
          acc[c][e / 4][e % 4] = __fmaf_rn(step_sums[c][e / 4][e % 4], scales[e % 4 / 2], acc[c][e / 4][e % 4]);
        }
      }
    }
  };
  const auto epilogue = [&](int64_t col0) {
    float flat[8 * TILES];
#pragma unroll
    for (int e = 0; e < 8 * TILES; ++e) {
      flat[e] = acc[e / 8][e / 4 % 2][e % 4];
      acc[e / 8][e / 4 % 2][e % 4] = 0.0f;
    }
    sum_fragments_over_warps<kSkinnyWarps>(flat, [&](int lane_of, int e, float total) {
      const SkinnyOutput at = skinny_output(lane_of, e);
      if (at.row < m && col0 + at.channel < n) finish(at.row, col0 + at.channel, total);
    });
  };
  skinny_walk<kInFlight>(
      walk, load, [&] { x = skinny_x_source<STAGED>(x_global, m, k); },
      [&](int slot, const SkinnyCursor& at) {
        const int64_t col0 = int64_t{at.tile} * 16 * TILES, step0 = skinny_step_k0(warp, at, kStep);
        if (step0 < k) step(slot, col0, step0);  // the same for the whole warp
        if (at.step + 1 < walk.steps) return;
        epilogue(col0);
        if (at.tile + walk.stride < walk.tiles) __syncthreads();  // before the next tile's sums reuse the buffer
      });
}

// Channel tiles per block for m rows of x (see above), to fn as a compile-time constant; the
// same number as ROW_TILES, the mmas of 8 rows of x each tile takes per step.
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

// Blocks of a launch for `tiles` channel tiles with at most `cap` of them (cap <= 0: one per
// tile): as few as keep each block's share, ceil(tiles / cap), so no block takes more tiles
// than the cap makes necessary and none fewer than one less.
__host__ __device__ __forceinline__ int64_t skinny_grid_blocks(int64_t tiles, int64_t cap) {
  if (cap <= 0 || tiles <= cap) return tiles;
  const int64_t share = (tiles + cap - 1) / cap;
  return (tiles + share - 1) / share;
}

// Blocks of `kernel` (a skinny_mma kernel of 16 x TILES channels a tile) for n channels under
// options.blocks (SkinnyOptions): a cap of its own, or as many as the SMs hold at once.
template <int TILES, typename Kernel>
unsigned skinny_launch_blocks(Kernel kernel, int64_t n, size_t shared_bytes, const SkinnyOptions& options) {
  int64_t cap = options.blocks;
  if (cap == kSkinnyResidentBlocks) {
    int per_sm = 0;  // a failed query leaves its error for the launch's cudaGetLastError
    cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kSkinnyWarps * 32, shared_bytes);
    cap = (per_sm > 0 ? per_sm : 1) * multiprocessors();
  }
  return static_cast<unsigned>(skinny_grid_blocks((n + 16 * TILES - 1) / (16 * TILES), cap));
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
