// CUDA kernels of the binary_gemm family. First versions for correctness: the few-row
// products give each warp one output channel and stream its bits; XNOR gives each thread
// one output and uses __popc on 32-bit words.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>

#include "binary_gemm.cuh"
#include "common.cuh"
#include "convert.cuh"

namespace effgen::cuda {
namespace {

constexpr int kThreads = 256;

__device__ __forceinline__ bool bit_at(const uint8_t* row, int64_t k) { return (row[k / 8] >> (k % 8)) & 1u; }

unsigned blocks_for(int64_t items) { return static_cast<unsigned>((items + kThreads - 1) / kThreads); }

template <typename T>
__global__ void pack_signs_kernel(const T* x, int64_t rows, int64_t k, uint8_t* out) {
  const int64_t row_bytes = (k + 7) / 8;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * row_bytes) return;
  const int64_t r = idx / row_bytes, byte = idx % row_bytes;
  uint8_t bits = 0;
  for (int b = 0; b < 8; ++b) {
    const int64_t col = byte * 8 + b;
    if (col < k && to_f32(x[r * k + col]) >= 0.0f) bits |= static_cast<uint8_t>(1u << b);
  }
  out[idx] = bits;
}

__global__ void pack_ternary_kernel(const int8_t* q, int64_t rows, int64_t k, uint8_t* out) {
  const int64_t plane = (k + 7) / 8;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * plane) return;
  const int64_t r = idx / plane, byte = idx % plane;
  uint8_t positive = 0, negative = 0;
  for (int b = 0; b < 8; ++b) {
    const int64_t col = byte * 8 + b;
    if (col >= k) break;
    const int8_t v = q[r * k + col];
    if (v == 1) positive |= static_cast<uint8_t>(1u << b);
    if (v == -1) negative |= static_cast<uint8_t>(1u << b);
  }
  out[r * 2 * plane + byte] = positive;
  out[r * 2 * plane + plane + byte] = negative;
}

__global__ void unpack_bits_kernel(const uint8_t* packed, int64_t rows, int64_t k, int planes, int8_t* out) {
  const int64_t plane = (k + 7) / 8;
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= rows * k) return;
  const int64_t r = idx / k, col = idx % k;
  const uint8_t* row = packed + r * planes * plane;
  out[idx] = planes == 1 ? (bit_at(row, col) ? 1 : -1)
                         : static_cast<int8_t>(int{bit_at(row, col)} - int{bit_at(row + plane, col)});
}

template <typename T>
__global__ void bits_gemv_kernel(BitsGemvArgs p) {
  const int warps = blockDim.x / 32;
  const int64_t j = int64_t(blockIdx.x) * warps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (j >= p.n) return;
  const T* x = static_cast<const T*>(p.x);
  const int64_t plane = (p.k + 7) / 8;
  const uint8_t* row = p.packed + j * p.planes * plane;
  float acc[kBitsMaxM] = {};
  for (int64_t kk = lane; kk < p.k; kk += 32) {
    float weight;
    if (p.planes == 1) {
      weight = p.scale[j * p.groups + kk / p.group] * (bit_at(row, kk) ? 1.0f : -1.0f);
    } else {
      weight = static_cast<float>(int{bit_at(row, kk)} - int{bit_at(row + plane, kk)});
    }
    for (int64_t i = 0; i < p.m; ++i) acc[i] += weight * to_f32(x[i * p.k + kk]);
  }
  T* out = static_cast<T*>(p.out);
  const float ternary_scale = p.planes == 2 ? p.scale[j * p.scale_stride] : 1.0f;
  for (int64_t i = 0; i < p.m; ++i) {
    float v = acc[i];
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, offset);
    if (lane == 0) store_value(out + i * p.n + j, v * ternary_scale + (p.bias == nullptr ? 0.0f : p.bias[j]));
  }
}

__global__ void xor_popcount_kernel(const uint8_t* a, const uint8_t* b, int64_t m, int64_t n, int64_t nbytes,
                                    int32_t* c) {
  const int64_t idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= m * n) return;
  const int64_t i = idx / n, j = idx % n;
  const uint8_t* ra = a + i * nbytes;
  const uint8_t* rb = b + j * nbytes;
  int32_t count = 0;
  int64_t byte = 0;
  for (; byte + 4 <= nbytes; byte += 4) {
    uint32_t wa, wb;
    memcpy(&wa, ra + byte, 4);
    memcpy(&wb, rb + byte, 4);
    count += __popc(wa ^ wb);
  }
  for (; byte < nbytes; ++byte) count += __popc(static_cast<uint32_t>(ra[byte] ^ rb[byte]));
  c[idx] = count;
}

}  // namespace

cudaError_t pack_signs(DType dtype, const void* x, int64_t rows, int64_t k, uint8_t* out, cudaStream_t stream) {
  const int64_t items = rows * ((k + 7) / 8);
  if (items == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    pack_signs_kernel<T><<<blocks_for(items), kThreads, 0, stream>>>(static_cast<const T*>(x), rows, k, out);
  });
}

cudaError_t pack_ternary(const int8_t* q, int64_t rows, int64_t k, uint8_t* out, cudaStream_t stream) {
  const int64_t items = rows * ((k + 7) / 8);
  if (items == 0) return cudaSuccess;
  pack_ternary_kernel<<<blocks_for(items), kThreads, 0, stream>>>(q, rows, k, out);
  return cudaGetLastError();
}

cudaError_t unpack_bits(const uint8_t* packed, int64_t rows, int64_t k, int planes, int8_t* out,
                        cudaStream_t stream) {
  if (rows * k == 0) return cudaSuccess;
  unpack_bits_kernel<<<blocks_for(rows * k), kThreads, 0, stream>>>(packed, rows, k, planes, out);
  return cudaGetLastError();
}

cudaError_t bits_gemv(const BitsGemvArgs& args, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  constexpr int kWarps = 8;
  const unsigned blocks = static_cast<unsigned>((args.n + kWarps - 1) / kWarps);
  return with_dtype(args.dtype, [&](auto tag) {
    using T = decltype(tag);
    bits_gemv_kernel<T><<<blocks, kWarps * 32, 0, stream>>>(args);
  });
}

cudaError_t xor_popcount(const uint8_t* a, const uint8_t* b, int64_t m, int64_t n, int64_t nbytes, int32_t* c,
                         cudaStream_t stream) {
  if (m * n == 0) return cudaSuccess;
  xor_popcount_kernel<<<blocks_for(m * n), kThreads, 0, stream>>>(a, b, m, n, nbytes, c);
  return cudaGetLastError();
}

}  // namespace effgen::cuda
