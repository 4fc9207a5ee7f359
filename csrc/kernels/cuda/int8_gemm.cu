// CUDA int8 GEMM and GEMVs. The launcher picks the kernel by shape: a few rows (m <= 16)
// are a weight stream, run by a GEMV that gives each warp one output channel and dp4a's
// 16-byte pieces; more rows run on the int8 tensor cores, through a pipelined 128x128
// kernel when k % 16 == 0 and the operands are 16-byte aligned (wgmma on sm_90a,
// int8_gemm_wgmma.cu; mma.sync elsewhere, int8_gemm_tiled.cu), else through the general
// 64x64 kernel here, which stages byte by byte where it must. The W8A16 GEMV dequantizes
// in registers, one warp per output channel.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common.cuh"
#include "convert.cuh"
#include "int8_gemm.cuh"
#include "int8_mma.cuh"

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

// W8A8 with a few rows (m <= kGemvMaxRows) streams the weights: one warp per output
// channel j, each lane 16 bytes of K at a time (two loads in flight), 32 lanes x 16 bytes
// apart, summed exactly in int32 with dp4a and reduced over the warp, then the GEMM's
// epilogue, so the bits are the same. `pieces` (in_16_byte_pieces): every piece is one
// load; otherwise each lane takes single bytes.
constexpr int64_t kGemvMaxRows = 16;
constexpr int kGemvWarps = 8;

template <typename Out, int ROWS>
__global__ void __launch_bounds__(kGemvWarps * 32) int8_gemv_kernel(Int8GemmArgs p, bool pieces) {
  const int64_t j = int64_t(blockIdx.x) * kGemvWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (j >= p.n) return;
  const int8_t* w = p.b + j * p.k;
  int32_t acc[ROWS] = {};
  if (pieces) {
    for_each_piece(w, p.k, lane, [&](int64_t kk, const int4& piece) {
#pragma unroll
      for (int i = 0; i < ROWS; ++i) {
        if (i >= p.m) break;
        const int4 xv = *reinterpret_cast<const int4*>(p.a + i * p.k + kk);
        acc[i] = __dp4a(xv.x, piece.x, acc[i]);
        acc[i] = __dp4a(xv.y, piece.y, acc[i]);
        acc[i] = __dp4a(xv.z, piece.z, acc[i]);
        acc[i] = __dp4a(xv.w, piece.w, acc[i]);
      }
    });
  } else {
    for (int64_t kk = lane; kk < p.k; kk += 32) {
      const int32_t wk = w[kk];
#pragma unroll
      for (int i = 0; i < ROWS; ++i) {
        if (i >= p.m) break;
        acc[i] += int32_t(p.a[i * p.k + kk]) * wk;
      }
    }
  }
#pragma unroll
  for (int i = 0; i < ROWS; ++i) {
    if (i >= p.m) break;
    const int32_t total = warp_sum(acc[i]);
    if (lane == 0) store_scaled<Out>(p, i, j, total);
  }
}

// The 16 int8 weights of a 16-byte piece as floats, exactly. I2F runs at a quarter of the
// FMA rate, too slow to keep up with HBM at one row, so each byte b goes through the bits
// instead: b + 128 (flipping the sign bit) becomes the low mantissa byte of 2^23, a byte
// permute, and one subtraction of 2^23 + 128 takes it back to b.
__device__ __forceinline__ void int8x16_to_floats(const int4& piece, float (&out)[16]) {
  const int32_t words[4] = {piece.x, piece.y, piece.z, piece.w};
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    const uint32_t biased = static_cast<uint32_t>(words[q]) ^ 0x80808080u;
#pragma unroll
    for (int t = 0; t < 4; ++t) {
      // result bytes: byte t of `biased`, 0x00, 0x00, 0x4B (the exponent of 2^23)
      const uint32_t bits = __byte_perm(biased, 0x4B000000u, 0x7540u | t);
      out[4 * q + t] = __fsub_rn(__uint_as_float(bits), 8388736.0f);
    }
  }
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

}  // namespace

cudaError_t int8_gemm(const Int8GemmArgs& args, GemmKernel kernel, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  const bool pieces = in_16_byte_pieces(args);
  if (args.m > kGemvMaxRows && pieces) {
    const bool wgmma = kernel == GemmKernel::kWgmma || (kernel == GemmKernel::kAuto && int8_gemm_wgmma_supported());
    return wgmma ? int8_gemm_wgmma(args, stream) : int8_gemm_tiled(args, stream);
  }
  return with_dtype(args.out_dtype, [&](auto zero) {
    using Out = decltype(zero);
    if (args.m <= kGemvMaxRows) {
      const unsigned blocks = static_cast<unsigned>((args.n + kGemvWarps - 1) / kGemvWarps);
      with_rows<1, 2, 4, 8, 16>(args.m, [&](auto rows) {
        int8_gemv_kernel<Out, rows()><<<blocks, kGemvWarps * 32, 0, stream>>>(args, pieces);
      });
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
  static_assert(kW8A16MaxM == 16, "instantiate up to kW8A16MaxM rows");
  return with_dtype(args.dtype, [&](auto zero) {
    with_rows<1, 2, 4, 8, 16>(args.m, [&](auto rows) {
      w8a16_gemv_kernel<decltype(zero), rows()><<<blocks, kGemvWarps * 32, 0, stream>>>(args, pieces);
    });
  });
}

}  // namespace effgen::cuda
