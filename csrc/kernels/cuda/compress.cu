// CUDA kernels of the compress family. Memory-bound and simple: the int8 encoder runs one
// thread block per compression block (absmax, then encode); the rest is one thread per
// value (or per packed byte). Explicit round-to-nearest intrinsics (and --fmad=false in the
// build) keep the fp32 sequence of the CPU kernels.
#include <cstdint>

#include "common.cuh"
#include "compress.cuh"
#include "convert.cuh"

namespace effgen::cuda {
namespace {

constexpr int kThreads = 256;
constexpr uint32_t kMaxFiniteBits = 0x7F7FFFFFu;

int blocks_for(int64_t items) {
  const int64_t needed = (items + kThreads - 1) / kThreads;
  return static_cast<int>(needed < 1 ? 1 : (needed < 65535 * 32 ? needed : 65535 * 32));
}

template <typename T>
__global__ void ef_int8_kernel(const T* x, float* error, int64_t n, int64_t block, int64_t blocks, int8_t* q,
                               float* scales) {
  for (int64_t b = blockIdx.x; b < blocks; b += gridDim.x) {
    const int64_t start = b * block, end = start + block < n ? start + block : n;
    uint32_t bits = 0;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
      bits = max(bits, __float_as_uint(__fadd_rn(to_f32(x[i]), error[i])) & 0x7FFFFFFFu);
    }
    bits = block_max(bits);
    if (bits > kMaxFiniteBits) {
      if (threadIdx.x == 0) scales[b] = __int_as_float(0x7FC00000);
      for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
        q[i] = 0;
        error[i] = 0.0f;
      }
      continue;
    }
    const float scale = __fdiv_rn(__uint_as_float(bits), 127.0f), inv = scale > 0.0f ? __fdiv_rn(1.0f, scale) : 0.0f;
    if (threadIdx.x == 0) scales[b] = scale;
    for (int64_t i = start + threadIdx.x; i < end; i += blockDim.x) {
      const float v = __fadd_rn(to_f32(x[i]), error[i]);
      const float code = fminf(fmaxf(rintf(__fmul_rn(v, inv)), -127.0f), 127.0f);
      q[i] = static_cast<int8_t>(code);
      error[i] = __fsub_rn(v, __fmul_rn(code, scale));
    }
  }
}

__global__ void decompress_int8_kernel(const int8_t* q, const float* scales, int64_t rows, int64_t n, int64_t block,
                                       int64_t blocks, float* total) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      acc = __fadd_rn(acc, __fmul_rn(float(q[r * n + i]), scales[r * blocks + i / block]));
    }
    total[i] = acc;
  }
}

// One thread per packed byte: its eight bits first (v may alias error), then the residual.
__global__ void sign_pack_kernel(const float* v, const float* scales, int64_t n, int64_t block, uint8_t* packed,
                                 float* error) {
  const int64_t bytes = (n + 7) / 8;
  for (int64_t byte = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; byte < bytes;
       byte += int64_t(gridDim.x) * blockDim.x) {
    uint32_t bits = 0;
    float values[8];
    const int count = n - byte * 8 < 8 ? static_cast<int>(n - byte * 8) : 8;
    for (int k = 0; k < count; ++k) {
      values[k] = v[byte * 8 + k];
      bits |= static_cast<uint32_t>(values[k] >= 0.0f) << k;
    }
    packed[byte] = static_cast<uint8_t>(bits);
    for (int k = 0; k < count; ++k) {
      const int64_t i = byte * 8 + k;
      error[i] = __fsub_rn(values[k], __fmul_rn(values[k] >= 0.0f ? 1.0f : -1.0f, scales[i / block]));
    }
  }
}

__global__ void decompress_sign_kernel(const uint8_t* packed, const float* scales, int64_t rows, int64_t n,
                                       int64_t block, int64_t blocks, float* total) {
  const int64_t row_bytes = (n + 7) / 8;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (int64_t r = 0; r < rows; ++r) {
      const float scale = scales[r * blocks + i / block];
      acc = __fadd_rn(acc, (packed[r * row_bytes + i / 8] >> (i % 8)) & 1u ? scale : -scale);
    }
    total[i] = acc;
  }
}

}  // namespace

cudaError_t ef_compress_int8(DType dtype, const void* x, float* error, int64_t n, int64_t block, int8_t* q,
                             float* scales, cudaStream_t stream) {
  const int64_t blocks = (n + block - 1) / block;
  if (blocks == 0) return cudaSuccess;
  const int grid = static_cast<int>(blocks < 65535 * 32 ? blocks : 65535 * 32);
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    ef_int8_kernel<T><<<grid, kThreads, 0, stream>>>(static_cast<const T*>(x), error, n, block, blocks, q, scales);
  });
}

cudaError_t decompress_sum_int8(const int8_t* q, const float* scales, int64_t rows, int64_t n, int64_t block,
                                float* total, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  decompress_int8_kernel<<<blocks_for(n), kThreads, 0, stream>>>(q, scales, rows, n, block, (n + block - 1) / block,
                                                                  total);
  return cudaGetLastError();
}

cudaError_t sign_pack_update(const float* v, const float* scales, int64_t n, int64_t block, uint8_t* packed,
                             float* error, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  sign_pack_kernel<<<blocks_for((n + 7) / 8), kThreads, 0, stream>>>(v, scales, n, block, packed, error);
  return cudaGetLastError();
}

cudaError_t decompress_sum_sign(const uint8_t* packed, const float* scales, int64_t rows, int64_t n, int64_t block,
                                float* total, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  decompress_sign_kernel<<<blocks_for(n), kThreads, 0, stream>>>(packed, scales, rows, n, block,
                                                                  (n + block - 1) / block, total);
  return cudaGetLastError();
}

}  // namespace effgen::cuda
