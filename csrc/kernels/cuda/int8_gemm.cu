// CUDA int8 GEMM and W8A16 GEMV. First versions, written for correctness on every shape:
// the GEMM uses __dp4a (4 int8 products per instruction) on 64x64 shared-memory tiles; the
// GEMV gives each warp one output channel and streams its int8 weights with 16-byte loads.
// Tensor-core (mma.sync / wgmma) GEMMs are the next step once a GPU can measure them.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "convert.cuh"
#include "int8_gemm.cuh"

namespace effgen::cuda {
namespace {

constexpr int kTile = 64;        // output tile edge
constexpr int kTileK = 32;       // bytes of K staged per step
constexpr int kThreadRows = 4;   // outputs per thread: 4 x 4
constexpr int kGemmThreads = (kTile / kThreadRows) * (kTile / kThreadRows);  // 256

// Stages rows [row0, row0 + kTile) x bytes [k0, k0 + kTileK) of a [rows, k] int8 matrix;
// bytes past the matrix are zero, so they add nothing to the dot products.
__device__ void stage(const int8_t* src, int64_t rows, int64_t k, int64_t row0, int64_t k0,
                      int8_t (&tile)[kTile][kTileK + 4]) {
  for (int idx = threadIdx.x; idx < kTile * kTileK; idx += blockDim.x) {
    const int r = idx / kTileK, c = idx % kTileK;
    const int64_t row = row0 + r, col = k0 + c;
    tile[r][c] = (row < rows && col < k) ? src[row * k + col] : int8_t{0};
  }
}

__device__ __forceinline__ int32_t pack4(const int8_t* p) {
  return static_cast<int32_t>(static_cast<uint8_t>(p[0])) | static_cast<int32_t>(static_cast<uint8_t>(p[1])) << 8 |
         static_cast<int32_t>(static_cast<uint8_t>(p[2])) << 16 | static_cast<int32_t>(static_cast<uint8_t>(p[3])) << 24;
}

template <typename Out>
__global__ void int8_gemm_kernel(Int8GemmArgs p) {
  __shared__ int8_t a_tile[kTile][kTileK + 4];  // +4: rows start on different banks
  __shared__ int8_t b_tile[kTile][kTileK + 4];
  const int64_t row0 = int64_t(blockIdx.y) * kTile, col0 = int64_t(blockIdx.x) * kTile;
  const int tr = threadIdx.x / (kTile / kThreadRows), tc = threadIdx.x % (kTile / kThreadRows);
  int32_t acc[kThreadRows][kThreadRows] = {};
  for (int64_t k0 = 0; k0 < p.k; k0 += kTileK) {
    stage(p.a, p.m, p.k, row0, k0, a_tile);
    stage(p.b, p.n, p.k, col0, k0, b_tile);
    __syncthreads();
#pragma unroll
    for (int kk = 0; kk < kTileK; kk += 4) {
      int32_t av[kThreadRows], bv[kThreadRows];
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) av[i] = pack4(&a_tile[tr * kThreadRows + i][kk]);
#pragma unroll
      for (int j = 0; j < kThreadRows; ++j) bv[j] = pack4(&b_tile[tc * kThreadRows + j][kk]);
#pragma unroll
      for (int i = 0; i < kThreadRows; ++i) {
#pragma unroll
        for (int j = 0; j < kThreadRows; ++j) acc[i][j] = __dp4a(av[i], bv[j], acc[i][j]);
      }
    }
    __syncthreads();
  }
  Out* out = static_cast<Out*>(p.out);
  for (int i = 0; i < kThreadRows; ++i) {
    const int64_t row = row0 + tr * kThreadRows + i;
    if (row >= p.m) continue;
    const float a_scale = p.a_scale[row * p.a_stride];
    for (int j = 0; j < kThreadRows; ++j) {
      const int64_t col = col0 + tc * kThreadRows + j;
      if (col >= p.n) continue;
      float v = __fmul_rn(__fmul_rn(static_cast<float>(acc[i][j]), a_scale), p.b_scale[col * p.b_stride]);
      if (p.bias != nullptr) v = __fadd_rn(v, p.bias[col]);
      store_value(out + row * p.n + col, v);
    }
  }
}

// One warp per output channel j: lanes stride over K in 16-weight chunks (one 16-byte
// load when aligned), multiply with every row of x, and reduce across the warp.
template <typename T>
__global__ void w8a16_gemv_kernel(W8A16Args p) {
  const int warps_per_block = blockDim.x / 32;
  const int64_t j = int64_t(blockIdx.x) * warps_per_block + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (j >= p.n) return;
  const T* x = static_cast<const T*>(p.x);
  const int8_t* w = p.w + j * p.k;
  const bool vec_ok = reinterpret_cast<uintptr_t>(w) % 16 == 0;
  float acc[kW8A16MaxM] = {};
  for (int64_t k0 = int64_t(lane) * 16; k0 < p.k; k0 += 32 * 16) {
    alignas(16) int8_t wv[16];
    const int count = p.k - k0 < 16 ? static_cast<int>(p.k - k0) : 16;
    if (vec_ok && count == 16) {
      *reinterpret_cast<uint4*>(wv) = *reinterpret_cast<const uint4*>(w + k0);
    } else {
      for (int t = 0; t < 16; ++t) wv[t] = t < count ? w[k0 + t] : int8_t{0};
    }
    for (int t = 0; t < count; ++t) {
      const int64_t kk = k0 + t;
      const float wf = static_cast<float>(wv[t]) * p.scale[j * p.groups + kk / p.group];
      for (int64_t i = 0; i < p.m; ++i) acc[i] += to_f32(x[i * p.k + kk]) * wf;
    }
  }
  T* out = static_cast<T*>(p.out);
  for (int64_t i = 0; i < p.m; ++i) {
    float v = acc[i];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    if (lane == 0) store_value(out + i * p.n + j, p.bias == nullptr ? v : v + p.bias[j]);
  }
}

}  // namespace

cudaError_t int8_gemm(const Int8GemmArgs& args, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  const dim3 grid(static_cast<unsigned>((args.n + kTile - 1) / kTile), static_cast<unsigned>((args.m + kTile - 1) / kTile));
  switch (args.out_dtype) {
    case DType::kBF16: int8_gemm_kernel<__nv_bfloat16><<<grid, kGemmThreads, 0, stream>>>(args); break;
    case DType::kF16: int8_gemm_kernel<__half><<<grid, kGemmThreads, 0, stream>>>(args); break;
    case DType::kF32: int8_gemm_kernel<float><<<grid, kGemmThreads, 0, stream>>>(args); break;
  }
  return cudaGetLastError();
}

cudaError_t w8a16_gemv(const W8A16Args& args, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  constexpr int kWarps = 8;
  const unsigned blocks = static_cast<unsigned>((args.n + kWarps - 1) / kWarps);
  switch (args.dtype) {
    case DType::kBF16: w8a16_gemv_kernel<__nv_bfloat16><<<blocks, kWarps * 32, 0, stream>>>(args); break;
    case DType::kF16: w8a16_gemv_kernel<__half><<<blocks, kWarps * 32, 0, stream>>>(args); break;
    case DType::kF32: w8a16_gemv_kernel<float><<<blocks, kWarps * 32, 0, stream>>>(args); break;
  }
  return cudaGetLastError();
}

}  // namespace effgen::cuda
