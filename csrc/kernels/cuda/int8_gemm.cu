// CUDA int8 GEMM and W8A16 GEMV. The GEMM runs on the int8 tensor cores (mma.sync
// m16n8k32, sm_80+) over 64x64 output tiles staged through shared memory 32 bytes of K at a
// time; the GEMV gives each warp one output channel and streams its int8 weights with
// 16-byte loads. wgmma (sm_90a) and a multi-stage cp.async pipeline are the next steps once
// a GPU can measure them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "common.cuh"
#include "convert.cuh"
#include "int8_gemm.cuh"

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#error "the int8 GEMM needs int8 mma.sync (sm_80 or newer): set EFFGEN_CUDA_ARCHS accordingly"
#endif

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

__device__ __forceinline__ uint32_t word(const Stage& tile, int row, int byte) {
  return *reinterpret_cast<const uint32_t*>(&tile[row][byte]);
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

template <typename Out>
__global__ void __launch_bounds__(kGemmThreads) int8_gemm_kernel(Int8GemmArgs p) {
  __shared__ __align__(16) Stage a_tile;
  __shared__ __align__(16) Stage b_tile;
  const int64_t row0 = int64_t(blockIdx.y) * kTile, col0 = int64_t(blockIdx.x) * kTile;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, group = lane / 4, thread = lane % 4;
  const int warp_row = warp % 4 * 16, warp_col = warp / 4 * 32;
  const bool a_vector = p.k % 16 == 0 && reinterpret_cast<uintptr_t>(p.a) % 16 == 0;
  const bool b_vector = p.k % 16 == 0 && reinterpret_cast<uintptr_t>(p.b) % 16 == 0;
  constexpr int kColTiles = 4;  // n8 tiles per warp
  int32_t acc[kColTiles][4] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
    stage(p.a, p.m, p.k, row0, k0, a_vector, a_tile);
    stage(p.b, p.n, p.k, col0, k0, b_vector, b_tile);
    __syncthreads();
    const uint32_t a[4] = {word(a_tile, warp_row + group, 4 * thread), word(a_tile, warp_row + group + 8, 4 * thread),
                           word(a_tile, warp_row + group, 16 + 4 * thread),
                           word(a_tile, warp_row + group + 8, 16 + 4 * thread)};
#pragma unroll
    for (int t = 0; t < kColTiles; ++t) {
      const int col = warp_col + 8 * t + group;
      mma_s8(acc[t], a, word(b_tile, col, 4 * thread), word(b_tile, col, 16 + 4 * thread));
    }
    __syncthreads();
  }
  Out* out = static_cast<Out*>(p.out);
#pragma unroll
  for (int t = 0; t < kColTiles; ++t) {
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int64_t row = row0 + warp_row + group + (e / 2) * 8;
      const int64_t col = col0 + warp_col + 8 * t + 2 * thread + e % 2;
      if (row >= p.m || col >= p.n) continue;
      float v = __fmul_rn(__fmul_rn(static_cast<float>(acc[t][e]), p.a_scale[row * p.a_stride]),
                          p.b_scale[col * p.b_stride]);
      if (p.bias != nullptr) v = __fadd_rn(v, p.bias[col]);
      store_value(out + row * p.n + col, v);
    }
  }
}

// One warp per output channel j: lanes take K in 16-weight chunks (one 16-byte load when
// aligned), 32 chunks apart, and the warp reduces at the end. A chunk inside one scale
// group (every chunk when the group size is a multiple of 16) is summed in fp32 and scaled
// once, like the CPU kernel's group partials; a chunk across a group boundary scales each
// weight. ROWS >= m rows of x, a compile-time count so the sums stay in registers.
template <typename T, int ROWS>
__global__ void w8a16_gemv_kernel(W8A16Args p) {
  const int warps_per_block = blockDim.x / 32;
  const int64_t j = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (j >= p.n) return;
  const T* x = static_cast<const T*>(p.x);
  const int8_t* w = p.w + j * p.k;
  const float* scale = p.scale + j * p.groups;
  const bool vec_ok = reinterpret_cast<uintptr_t>(w) % 16 == 0;
  float acc[ROWS] = {};
  // sums[i] += x[i][kk] * wf for the rows there are.
  auto add_rows = [&](float (&sums)[ROWS], int64_t kk, float wf) {
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
      if (i < p.m) sums[i] += to_f32(x[i * p.k + kk]) * wf;
    }
  };
  for (int64_t k0 = int64_t(lane) * 16; k0 < p.k; k0 += 32 * 16) {
    alignas(16) int8_t wv[16];
    const int count = p.k - k0 < 16 ? static_cast<int>(p.k - k0) : 16;
    if (vec_ok && count == 16) {
      *reinterpret_cast<uint4*>(wv) = *reinterpret_cast<const uint4*>(w + k0);
    } else {
      for (int t = 0; t < 16; ++t) wv[t] = t < count ? w[k0 + t] : int8_t{0};
    }
    const int64_t group = k0 / p.group;
    if (group != (k0 + count - 1) / p.group) {
      for (int t = 0; t < count; ++t) add_rows(acc, k0 + t, static_cast<float>(wv[t]) * scale[(k0 + t) / p.group]);
      continue;
    }
    float part[ROWS] = {};
    if (count == 16) {
#pragma unroll
      for (int t = 0; t < 16; ++t) add_rows(part, k0 + t, static_cast<float>(wv[t]));
    } else {
      for (int t = 0; t < count; ++t) add_rows(part, k0 + t, static_cast<float>(wv[t]));
    }
    const float s = scale[group];
#pragma unroll
    for (int i = 0; i < ROWS; ++i) acc[i] += part[i] * s;
  }
  T* out = static_cast<T*>(p.out);
#pragma unroll
  for (int i = 0; i < ROWS; ++i) {
    if (i >= p.m) break;
    float v = acc[i];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    if (lane == 0) store_value(out + i * p.n + j, p.bias == nullptr ? v : v + p.bias[j]);
  }
}

// The w8a16_gemv_kernel instantiation for m rows: the next power of two.
template <typename T>
void launch_gemv(const W8A16Args& args, unsigned blocks, unsigned threads, cudaStream_t stream) {
  if (args.m <= 1) return w8a16_gemv_kernel<T, 1><<<blocks, threads, 0, stream>>>(args);
  if (args.m <= 2) return w8a16_gemv_kernel<T, 2><<<blocks, threads, 0, stream>>>(args);
  if (args.m <= 4) return w8a16_gemv_kernel<T, 4><<<blocks, threads, 0, stream>>>(args);
  if (args.m <= 8) return w8a16_gemv_kernel<T, 8><<<blocks, threads, 0, stream>>>(args);
  static_assert(kW8A16MaxM == 16, "instantiate up to kW8A16MaxM rows");
  w8a16_gemv_kernel<T, 16><<<blocks, threads, 0, stream>>>(args);
}

}  // namespace

cudaError_t int8_gemm(const Int8GemmArgs& args, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((args.n + kTile - 1) / kTile), static_cast<unsigned>((args.m + kTile - 1) / kTile));
  return with_dtype(args.out_dtype, [&](auto zero) {
    int8_gemm_kernel<decltype(zero)><<<grid, kGemmThreads, 0, stream>>>(args);
  });
}

cudaError_t w8a16_gemv(const W8A16Args& args, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  constexpr int kWarps = 8;
  const unsigned blocks = static_cast<unsigned>((args.n + kWarps - 1) / kWarps);
  return with_dtype(args.dtype, [&](auto zero) { launch_gemv<decltype(zero)>(args, blocks, kWarps * 32, stream); });
}

}  // namespace effgen::cuda
