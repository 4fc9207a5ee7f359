// CUDA int8 GEMM and GEMVs. The launcher picks the kernel by shape: a few rows (m <= 16)
// are a weight stream, run on the int8 tensor cores by a GEMV whose block owns 8 output
// channels and splits K over its warps; more rows run through the pipelined 128x128
// mma.sync kernel (int8_gemm_tiled.cu) when k % 16 == 0 and the operands are 16-byte
// aligned, or, asked for (GemmKernel::kWgmma, sm_90a), the TMA + wgmma kernel of
// int8_gemm_wgmma.cu; other shapes go through the general 64x64 kernel here, which stages
// byte by byte where it must. The W8A16 GEMV
// decodes the weights in registers: onto the 16-bit tensor cores for bf16/fp16 x
// (skinny_mma.cuh), else one warp per output channel on the CUDA cores.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "convert.cuh"
#include "int8_gemm.cuh"
#include "int8_mma.cuh"
#include "skinny_mma.cuh"

namespace effgen::cuda {
namespace {

constexpr int kTile = 64;   // output tile edge (rows of a and of b staged per step)
constexpr int kTileK = 32;  // bytes of K staged per step: one m16n8k32 deep
// Staged rows are 48 bytes apart: a multiple of 16 for vector stores, and the fragment loads
// of a warp (8 rows x 4 words) then fall on 32 different banks (row r starts at bank 12 r % 32).
constexpr int kRowBytes = 48;
constexpr int kGemmWarps = 8;  // warp w: rows 16 (w % 4) .. +15, columns 32 (w / 4) .. +31
constexpr int kGemmThreads = kGemmWarps * 32;

using Stage = int8_t[kTile][kRowBytes];

// Stages rows [row0, row0 + kTile) x bytes [k0, k0 + kTileK) of a [rows, k] int8 matrix;
// bytes past the matrix are zero, so they add nothing to the dot products. `vector`: k is a
// multiple of 16 and src 16-byte aligned, so each 16-byte piece is one load.
__device__ void stage(const int8_t* src, int64_t rows, int64_t k, int64_t row0, int64_t k0, bool vector, Stage& tile) {
  if (vector) {
    constexpr int kPieces = kTile * kTileK / 16;  // 128: threads 0-127 stage one piece each
    for (int idx = threadIdx.x; idx < kPieces; idx += blockDim.x) {
      const int r = idx / (kTileK / 16), c = idx % (kTileK / 16) * 16;
      const int64_t row = row0 + r, col = k0 + c;
      uint4 piece = make_uint4(0, 0, 0, 0);
      if (row < rows && col < k) piece = *reinterpret_cast<const uint4*>(src + row * k + col);
      *reinterpret_cast<uint4*>(&tile[r][c]) = piece;
    }
    return;
  }
  for (int idx = threadIdx.x; idx < kTile * kTileK; idx += blockDim.x) {
    const int r = idx / kTileK, c = idx % kTileK;
    const int64_t row = row0 + r, col = k0 + c;
    tile[r][c] = (row < rows && col < k) ? src[row * k + col] : int8_t{0};
  }
}

__device__ __forceinline__ uint32_t word(const Stage& tile, TilePosition at) {
  return *reinterpret_cast<const uint32_t*>(&tile[at.row][at.col]);
}

// The staged {row, byte} of a lane's mma fragment words: word q of a (a0..a3: rows lane / 4
// and + 8 of the warp's 16, bytes 4 (lane % 4).. and + 16) and word q of b (b0, b1: column
// lane / 4 of n8 tile t of the warp's 32, the same bytes).
__host__ __device__ __forceinline__ TilePosition a_word_at(int warp, int lane, int q) {
  return {warp % 4 * 16 + lane / 4 + q % 2 * 8, q / 2 * 16 + 4 * (lane % 4)};
}
__host__ __device__ __forceinline__ TilePosition b_word_at(int warp, int lane, int t, int q) {
  return {warp / 4 * 32 + 8 * t + lane / 4, q * 16 + 4 * (lane % 4)};
}

// Where accumulator e of n8 tile t of warp `warp`, lane `lane` belongs in the block: the
// m16n8 result fragment (rows lane / 4 and + 8, columns 2 (lane % 4) and + 1).
__host__ __device__ __forceinline__ TilePosition general_accumulator_position(int warp, int lane, int t, int e) {
  return {warp % 4 * 16 + lane / 4 + e / 2 * 8, warp / 4 * 32 + 8 * t + 2 * (lane % 4) + e % 2};
}

template <typename Out>
__global__ void __launch_bounds__(kGemmThreads) int8_gemm_general_kernel(Int8GemmArgs p) {
  __shared__ __align__(16) Stage a_tile;
  __shared__ __align__(16) Stage b_tile;
  const int64_t row0 = int64_t(blockIdx.x) * kTile, col0 = int64_t(blockIdx.y) * kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const bool a_vector = p.k % 16 == 0 && aligned(p.a, 16);
  const bool b_vector = p.k % 16 == 0 && aligned(p.b, 16);
  constexpr int kColTiles = 4;  // n8 tiles per warp
  int32_t acc[kColTiles][4] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
    stage(p.a, p.m, p.k, row0, k0, a_vector, a_tile);
    stage(p.b, p.n, p.k, col0, k0, b_vector, b_tile);
    __syncthreads();
    const uint32_t a[4] = {word(a_tile, a_word_at(warp, lane, 0)), word(a_tile, a_word_at(warp, lane, 1)),
                           word(a_tile, a_word_at(warp, lane, 2)), word(a_tile, a_word_at(warp, lane, 3))};
#pragma unroll
    for (int t = 0; t < kColTiles; ++t) {
      mma_s8(acc[t], a, word(b_tile, b_word_at(warp, lane, t, 0)), word(b_tile, b_word_at(warp, lane, t, 1)));
    }
    __syncthreads();
  }
#pragma unroll
  for (int t = 0; t < kColTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const TilePosition at = general_accumulator_position(warp, lane, t, e);
      store_scaled<Out>(p, row0 + at.row, col0 + at.col, acc[t][e]);
    }
  }
}

// Streams one weight row w[0, k) (k % 16 == 0, 16-byte aligned) across a warp: lane takes
// the 16-byte pieces at 16 lane, 16 lane + 512, ..., two loads in flight, and calls
// fn(k0, piece) for each, in order.
template <typename Fn>
__device__ __forceinline__ void for_each_piece(const int8_t* w, int64_t k, int lane, Fn&& fn) {
  constexpr int kInFlight = 2;
  constexpr int64_t kStride = 32 * 16;
  for (int64_t k0 = int64_t(lane) * 16; k0 < k; k0 += kInFlight * kStride) {
    int4 pieces[kInFlight];
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (k0 + u * kStride < k) pieces[u] = *reinterpret_cast<const int4*>(w + k0 + u * kStride);
    }
#pragma unroll
    for (int u = 0; u < kInFlight; ++u) {
      if (k0 + u * kStride < k) fn(k0 + u * kStride, pieces[u]);
    }
  }
}

// W8A8 with a few rows (m <= kGemvMaxRows, in_16_byte_pieces) streams the weights through
// the int8 tensor cores: a block owns 8 output channels (one n8 tile) and its 8 warps split
// K in 64-byte steps (warp w takes steps w, w + 8, ...), kGemvSteps in flight per lane. Per
// step lane (g, t) = (lane / 4, lane % 4) loads the 16 bytes at k0 + 16 t of rows g and g + 8
// of a (zero past m) and of channel g of b; their words 0-1 feed one m16n8k32 and words 2-3
// another. That reorders K inside the step (the mma's byte 4 t + j is byte 16 t + j here),
// the same way for a and b, so the int32 sums are exact as ever. The warps' sums are added
// in shared memory and go through the GEMM's epilogue: bit-exact with every other kernel.
constexpr int kGemvWarps = 8;
constexpr int kGemvSteps = 4;
constexpr int kGemvStepBytes = 64;

// Lane's 16-byte piece of row `row` of a [rows, k] int8 matrix at byte k0 + 16 (lane % 4);
// zero past the matrix.
__device__ __forceinline__ int4 gemv_piece(const int8_t* src, int64_t rows, int64_t k, int64_t row, int64_t k0,
                                           int lane) {
  const int64_t col = k0 + 16 * (lane % 4);
  return row < rows && col < k ? *reinterpret_cast<const int4*>(src + row * k + col) : make_int4(0, 0, 0, 0);
}

template <typename Out>
__global__ void __launch_bounds__(kGemvWarps * 32) int8_gemv_kernel(Int8GemmArgs p) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t col0 = int64_t(blockIdx.x) * 8, row = lane / 4, channel = col0 + lane / 4;
  int32_t acc[4] = {};
  // x's pieces are loaded with the weights' (measured on an H200: faster than 8 weight steps
  // in flight with x loaded per step, which the skinny 16-bit kernels prefer)
  for (int64_t k0 = int64_t(warp) * kGemvStepBytes; k0 < p.k; k0 += kGemvSteps * kGemvWarps * kGemvStepBytes) {
    int4 lo[kGemvSteps], hi[kGemvSteps], w[kGemvSteps];
#pragma unroll
    for (int u = 0; u < kGemvSteps; ++u) {
      const int64_t kk = k0 + u * kGemvWarps * kGemvStepBytes;
      w[u] = gemv_piece(p.b, p.n, p.k, channel, kk, lane);
      lo[u] = gemv_piece(p.a, p.m, p.k, row, kk, lane);
      hi[u] = gemv_piece(p.a, p.m, p.k, row + 8, kk, lane);
    }
#pragma unroll
    for (int u = 0; u < kGemvSteps; ++u) {
      mma_s8(acc, a_operand(lo[u], hi[u], 0).regs, uint32_t(w[u].x), uint32_t(w[u].y));
      mma_s8(acc, a_operand(lo[u], hi[u], 1).regs, uint32_t(w[u].z), uint32_t(w[u].w));
    }
  }
  sum_fragments_over_warps<kGemvWarps>(acc, [&](int lane_of, int e, int32_t total) {
    const TilePosition at = general_accumulator_position(0, lane_of, 0, e);  // the m16n8 fragment's place
    store_scaled<Out>(p, at.row, col0 + at.col, total);
  });
}

// W8A16 with few rows: one warp per output channel j, lanes take K in 16-weight pieces,
// 32 pieces apart, and the warp reduces at the end; a piece's products are summed in fp32
// and scaled once (the CPU kernel's group partials), since no piece spans two groups when
// `pieces` holds: k (< 2^31) and the group size multiples of 16, x and w 16-byte aligned. Then every
// load is 16 bytes, two weight pieces in flight per lane. Otherwise lanes take one weight at
// a time, scaled one by one where a piece would span a group boundary. ROWS >= m rows of x,
// a compile-time count so the sums stay in registers.
template <typename T, int ROWS>
__global__ void __launch_bounds__(kGemvWarps * 32) w8a16_gemv_kernel(W8A16Args p, bool pieces) {
  const int64_t j = int64_t(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (j >= p.n) return;
  const T* x = static_cast<const T*>(p.x);
  const int8_t* w = p.w + j * p.k;
  const float* scale = p.scale + j * p.groups;
  float acc[ROWS] = {};
  if (pieces) {
    for_each_piece(w, p.k, lane, [&](int64_t kk, const int4& piece) {
      float wf[16];
      int8x16_to_floats(piece, wf);
      // per channel: one scale; per group: a 32-bit division (pieces holds k < 2^31)
      const float s = p.groups == 1 ? scale[0] : scale[static_cast<uint32_t>(kk) / static_cast<uint32_t>(p.group)];
#pragma unroll
      for (int i = 0; i < ROWS; ++i) {
        if (i >= p.m) break;
        float xv[16];
        load_floats(x + i * p.k + kk, xv);
        float part = 0.0f;
#pragma unroll
        for (int t = 0; t < 16; ++t) part = __fmaf_rn(xv[t], wf[t], part);
        acc[i] = __fmaf_rn(part, s, acc[i]);
      }
    });
  } else {
    for (int64_t kk = lane; kk < p.k; kk += 32) {
      const float wf = __fmul_rn(static_cast<float>(w[kk]), scale[kk / p.group]);
#pragma unroll
      for (int i = 0; i < ROWS; ++i) {
        if (i >= p.m) break;
        acc[i] = __fmaf_rn(to_f32(x[i * p.k + kk]), wf, acc[i]);
      }
    }
  }
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < ROWS; ++i) {
    if (i >= p.m) break;
    const float v = warp_sum(acc[i]);
    if (lane == 0) store_value(out + i * p.n + j, p.bias == nullptr ? v : v + p.bias[j]);
  }
}

// Int8 bytes `low` and `low + 1` of a word as two bf16 pairs whose sum is the bytes' exact
// values (lower byte in the low halves), for one bf16x2 fma by 1. bf16 keeps 8 significant
// bits, too few for byte + 128, so a byte b = u - 128 s (u its low 7 bits, s its sign bit)
// is split: 0x43 over u is 128 + u (u fills the 7 mantissa bits of 128's binade), and
// 0xC3 over s << 7 is -128 (s = 0) or -256 (s = 1, the exponent's low bit): 128 + u - 128
// - 128 s = b. Both parts come from one byte permute that puts 0x43 above each byte.
struct Bf16Parts {
  uint32_t magnitude, offset;
};
__host__ __device__ __forceinline__ Bf16Parts int8_pair_bf16_parts(uint32_t word, int low) {
  const uint32_t spread = permute_bytes(word, 0x43434343u, 0x4040u | low | (low + 1) << 8);  // b_lo 43 b_hi 43
  return {spread & 0xFF7FFF7Fu, and_or(spread, 0x00800080u, 0xC300C300u)};
}

// skinny_mma's decoder of int8 weights (W8A16 on the tensor cores): a lane takes one
// 16-byte piece of its channel per step. GROUPED: the group size is a multiple of the
// 64-weight step, so a step lies in one group and its sums are scaled on their own.
template <typename T, bool GROUPED>
struct Int8Decoder {
  static constexpr int kLaneElements = 16, kStepsInFlight = 4;
  static constexpr bool kScalePerStep = GROUPED;
  using Loaded = int4;
  const int8_t* row;    // the channel's weights, nullptr past n
  const float* scales;  // the channel's scale per group (used only inside n)
  int64_t k, group;

  __device__ int4 load(int64_t col) const {
    return row != nullptr && col < k ? *reinterpret_cast<const int4*>(row + col) : make_int4(0, 0, 0, 0);
  }
  // bytes 2 i and 2 i + 1 of the piece, exactly (|q| <= 128 fits both 16-bit types)
  __device__ uint32_t pair(const int4& piece, int i) const {
    const int32_t words[4] = {piece.x, piece.y, piece.z, piece.w};
    const uint32_t word = static_cast<uint32_t>(words[i / 2]);
    const int low = 2 * (i % 2);
    if constexpr (std::is_same_v<T, __half>) {
      // bytes low and low + 1 (as byte + 128) under 0x64 high bytes: the halves 1024 + byte
      // + 128, then - 1152
      const uint32_t bits = __byte_perm(word ^ 0x80808080u, 0x64646464u, 0x4040u | low | (low + 1) << 8);
      const __half2 v = __hsub2(*reinterpret_cast<const __half2*>(&bits), __half2half2(__ushort_as_half(0x6480u)));
      return *reinterpret_cast<const uint32_t*>(&v);
    } else {
      const Bf16Parts parts = int8_pair_bf16_parts(word, low);
      const __nv_bfloat162 v = __hfma2(*reinterpret_cast<const __nv_bfloat162*>(&parts.magnitude),
                                       __float2bfloat162_rn(1.0f),
                                       *reinterpret_cast<const __nv_bfloat162*>(&parts.offset));
      return *reinterpret_cast<const uint32_t*>(&v);
    }
  }
  __device__ float step_scale(int64_t k0) const {
    return scales[static_cast<uint32_t>(k0) / static_cast<uint32_t>(group)];  // k < 2^31
  }
};

// W8A16 with few rows of bf16/fp16 x on the tensor cores (skinny_mma.cuh): k % 16 == 0,
// k < 2^31, x and w 16-byte aligned; per channel, or per group of a multiple of 64. Blocks
// per SM, all without spills: at m <= 8 four per channel (64 registers; 76-80 left alone),
// three per group (80; they spill at four); at more rows two (101-123).
template <typename T, bool GROUPED, int TILES, int ROW_TILES, bool STAGED>
__global__ void __launch_bounds__(kSkinnyWarps * 32, ROW_TILES == 2 ? 2 : GROUPED ? 3 : 4)
    w8a16_gemv_mma_kernel(W8A16Args p) {
  const int lane = threadIdx.x % 32;
  skinny_mma<T, STAGED, TILES, ROW_TILES>(
      static_cast<const T*>(p.x), p.m, p.n, p.k,
      [&](int64_t col0, int d) {
        const int64_t channel = col0 + skinny_channel(lane, d);
        const bool inside = channel < p.n;  // past n: no weights, and the last channel's scales (never used)
        return Int8Decoder<T, GROUPED>{inside ? p.w + channel * p.k : nullptr,
                                       p.scale + (inside ? channel : p.n - 1) * p.groups, p.k, p.group};
      },
      [&](int64_t row, int64_t col, float sum) {
        const float v = GROUPED ? sum : sum * p.scale[col];
        store_value(static_cast<T*>(p.out) + row * p.n + col, p.bias == nullptr ? v : v + p.bias[col]);
      });
}

// Epilogues of sums computed elsewhere (cuBLAS): 4 columns of a row per thread, rows on grid
// y (striding where m exceeds its 65535). `vector`: n % 4 == 0 and acc, out 16-byte aligned,
// so the 4 sums are one 16-byte load and the 4 outputs one 8- or 16-byte store. Acc is int32
// or fp32; value(row, col, sum) is the output before its rounding to Out.
constexpr int kEpilogueThreads = 256;

template <typename Out, typename Acc, typename Value>
__global__ void __launch_bounds__(kEpilogueThreads) sums_epilogue_kernel(int64_t m, int64_t n, const Acc* acc,
                                                                         Out* out, bool vector, Value value) {
  static_assert(sizeof(Acc) == 4, "4 sums in 16 bytes");
  using Quad = std::conditional_t<sizeof(Out) == 2, uint2, uint4>;  // 4 outputs
  const int64_t col = (int64_t(blockIdx.x) * kEpilogueThreads + threadIdx.x) * 4;
  if (col >= n) return;
  for (int64_t row = blockIdx.y; row < m; row += gridDim.y) {
    const Acc* sums = acc + row * n + col;
    if (vector) {
      union {
        int4 piece;
        Acc values[4];
      } in;
      in.piece = *reinterpret_cast<const int4*>(sums);
      union {
        Out values[4];
        Quad quad;
      } result;
#pragma unroll
      for (int j = 0; j < 4; ++j) result.values[j] = from_f32<Out>(value(row, col + j, in.values[j]));
      *reinterpret_cast<Quad*>(out + row * n + col) = result.quad;
    } else {
      for (int j = 0; j < 4 && col + j < n; ++j) store_value(out + row * n + col + j, value(row, col + j, sums[j]));
    }
  }
}

template <typename Acc, typename Value>
cudaError_t launch_sums_epilogue(int64_t m, int64_t n, const Acc* acc, DType out_dtype, void* out, Value value,
                                 cudaStream_t stream) {
  if (m == 0 || n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((n + 4 * kEpilogueThreads - 1) / (4 * kEpilogueThreads)),
                  static_cast<unsigned>(m < 65535 ? m : 65535));
  const bool vector = n % 4 == 0 && aligned(acc, 16) && aligned(out, 16);
  return with_dtype(out_dtype, [&](auto zero) {
    using Out = decltype(zero);
    sums_epilogue_kernel<Out><<<grid, kEpilogueThreads, 0, stream>>>(m, n, acc, static_cast<Out*>(out), vector, value);
  });
}

// int8_scale_accumulators' value: int8_gemm's scaled, biased sum.
struct Int8Scaling {
  Int8GemmArgs p;
  __device__ float operator()(int64_t row, int64_t col, int32_t acc) const { return scaled_value(p, row, col, acc); }
};

// scale_float_sums' value: ATen's mul and add, each rounded on its own.
struct ColumnScaling {
  FloatSumsArgs p;
  __device__ float operator()(int64_t /*row*/, int64_t col, float sum) const {
    const float v = p.scale == nullptr ? sum : __fmul_rn(sum, p.scale[col * p.scale_stride]);
    return p.bias == nullptr ? v : __fadd_rn(v, p.bias[col]);
  }
};

}  // namespace

cudaError_t int8_gemm(const Int8GemmArgs& args, GemmKernel kernel, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  const bool pieces = in_16_byte_pieces(args);
  if (args.m > kGemvMaxRows && pieces) {
    const bool wgmma = kernel == GemmKernel::kWgmma && tma_gemm_takes(args);
    return wgmma ? int8_gemm_wgmma(args, stream) : int8_gemm_tiled(args, stream);
  }
  return with_dtype(args.out_dtype, [&](auto zero) {
    using Out = decltype(zero);
    if (pieces) {  // m <= kGemvMaxRows
      int8_gemv_kernel<Out><<<static_cast<unsigned>((args.n + 7) / 8), kGemvWarps * 32, 0, stream>>>(args);
      return;
    }
    // rows on x (up to 2^31 - 1 tiles), output columns on y (up to 65535 tiles)
    const dim3 grid(static_cast<unsigned>((args.m + kTile - 1) / kTile),
                    static_cast<unsigned>((args.n + kTile - 1) / kTile));
    int8_gemm_general_kernel<Out><<<grid, kGemmThreads, 0, stream>>>(args);
  });
}

cudaError_t w8a16_gemv(const W8A16Args& args, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  const bool pieces = args.k % 16 == 0 && args.k < (int64_t{1} << 31) && args.group % 16 == 0 &&
                      aligned(args.x, 16) && aligned(args.w, 16);
  const unsigned blocks = static_cast<unsigned>((args.n + kGemvWarps - 1) / kGemvWarps);
  const bool grouped = args.groups > 1;
  if (pieces && (!grouped || args.group % 64 == 0) && with_16bit_dtype(args.dtype, [&](auto tag) {
        using T = decltype(tag);
        with_staged_x<T>(args.skinny.stage_x, args.m, args.k, [&](auto staged, size_t shared_bytes) {
          const auto launch = [&](auto tiles, auto kernel) {
            const unsigned blocks = skinny_launch_blocks<tiles()>(kernel, args.n, shared_bytes, args.skinny);
            kernel<<<blocks, kSkinnyWarps * 32, shared_bytes, stream>>>(args);
          };
          with_skinny_tiles(args.m, [&](auto tiles) {
            if (grouped) {  // one tile: two need 136 registers, one block per SM (0.79x bf16 at 16 rows, was 0.88x)
              launch(std::integral_constant<int, 1>{}, w8a16_gemv_mma_kernel<T, true, 1, tiles(), staged()>);
            } else {
              launch(tiles, w8a16_gemv_mma_kernel<T, false, tiles(), tiles(), staged()>);
            }
          });
        });
      })) {
    return cudaGetLastError();
  }
  static_assert(kW8A16MaxM == 16, "instantiate up to kW8A16MaxM rows");
  return with_dtype(args.dtype, [&](auto zero) {
    with_rows<1, 2, 4, 8, 16>(args.m, [&](auto rows) {
      w8a16_gemv_kernel<decltype(zero), rows()><<<blocks, kGemvWarps * 32, 0, stream>>>(args, pieces);
    });
  });
}

cudaError_t int8_scale_accumulators(const Int8GemmArgs& args, const int32_t* acc, cudaStream_t stream) {
  return launch_sums_epilogue(args.m, args.n, acc, args.out_dtype, args.out, Int8Scaling{args}, stream);
}

cudaError_t scale_float_sums(const FloatSumsArgs& args, cudaStream_t stream) {
  return launch_sums_epilogue(args.m, args.n, args.sums, args.out_dtype, args.out, ColumnScaling{args}, stream);
}

}  // namespace effgen::cuda
