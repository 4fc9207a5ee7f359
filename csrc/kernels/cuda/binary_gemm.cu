// CUDA kernels of the binary_gemm family. The few-row products give each warp one output
// channel and stream its bits a 32-bit word per lane; XNOR gives each thread one output and
// uses __popc on 32-bit words (a b1 tensor-core path is the next step once a GPU can
// measure it).
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

// 32 weight bits of one plane row from bit k0 (a multiple of 8) on, bit t of the word being
// weight k0 + t; bytes past the row read as 0.
__device__ __forceinline__ uint32_t bits_word(const uint8_t* plane_row, int64_t plane_bytes, int64_t k0) {
  const int64_t byte0 = k0 / 8;
  uint32_t word = 0;
#pragma unroll
  for (int b = 0; b < 4; ++b) {
    if (byte0 + b < plane_bytes) word |= static_cast<uint32_t>(plane_row[byte0 + b]) << (8 * b);
  }
  return word;
}

// sums[i] += x[i][k0 + t] * weight(t) for t < count and the rows there are. `vector`:
// count == 32 and x's rows 16-byte aligned at k0, so x comes in 16-byte loads; otherwise
// element by element (unrolled when count == 32, so bit t is a constant shift).
template <typename T, int ROWS, typename Weight>
__device__ __forceinline__ void add_word(float (&sums)[ROWS], const T* x, int64_t m, int64_t k, int64_t k0, int count,
                                         bool vector, Weight weight) {
  if (vector) {
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
      if (i >= m) break;
      float xv[32];
      load_floats(x + i * k + k0, xv);
#pragma unroll
      for (int t = 0; t < 32; ++t) sums[i] = __fmaf_rn(xv[t], weight(t), sums[i]);
    }
    return;
  }
  auto add = [&](int t) {
    const float w = weight(t);
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
      if (i < m) sums[i] = __fmaf_rn(to_f32(x[i * k + k0 + t]), w, sums[i]);
    }
  };
  if (count == 32) {
#pragma unroll
    for (int t = 0; t < 32; ++t) add(t);
  } else {
    for (int t = 0; t < count; ++t) add(t);
  }
}

// One warp per output channel j: each lane takes 32 weights at a time (a 32-bit word per
// plane), words 32 apart, and the warp reduces at the end. Binary words inside one alpha
// group (every word when the group size is a multiple of 32) are summed as +-x and scaled
// once; a word across a group boundary scales each weight. `words`: k % 32 == 0, packed
// 4-byte and x 16-byte aligned, so a plane word is one load and x comes in 16-byte loads.
// ROWS >= m rows of x, a compile-time count so the sums stay in registers.
template <typename T, int ROWS>
__global__ void bits_gemv_kernel(BitsGemvArgs p, bool words) {
  const int warps = blockDim.x / 32;
  const int64_t j = int64_t(blockIdx.x) * warps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (j >= p.n) return;
  const T* x = static_cast<const T*>(p.x);
  const int64_t plane = (p.k + 7) / 8;
  const uint8_t* row = p.packed + j * p.planes * plane;
  auto word_at = [&](const uint8_t* plane_row, int64_t k0) {
    return words ? *reinterpret_cast<const uint32_t*>(plane_row + k0 / 8) : bits_word(plane_row, plane, k0);
  };
  float acc[ROWS] = {};
  for (int64_t k0 = int64_t(lane) * 32; k0 < p.k; k0 += 32 * 32) {
    const int count = p.k - k0 < 32 ? static_cast<int>(p.k - k0) : 32;
    const uint32_t first = word_at(row, k0);
    if (p.planes == 2) {  // ternary: positive minus negative plane, one scale per row
      const uint32_t negative = word_at(row + plane, k0);
      add_word(acc, x, p.m, p.k, k0, count, words,
               [&](int t) { return static_cast<float>(int((first >> t) & 1u) - int((negative >> t) & 1u)); });
      continue;
    }
    const float* alpha = p.scale + j * p.groups;
    auto sign = [&](int t) { return (first >> t) & 1u ? 1.0f : -1.0f; };
    // per channel (one group): no division, which would cost more than the word's products
    const int64_t group = p.groups == 1 ? 0 : k0 / p.group;
    if (p.groups > 1 && group != (k0 + count - 1) / p.group) {
      add_word(acc, x, p.m, p.k, k0, count, words, [&](int t) { return sign(t) * alpha[(k0 + t) / p.group]; });
      continue;
    }
    float part[ROWS] = {};
    add_word(part, x, p.m, p.k, k0, count, words, sign);
#pragma unroll
    for (int i = 0; i < ROWS; ++i) acc[i] += part[i] * alpha[group];
  }
  T* out = static_cast<T*>(p.out);
  const float ternary_scale = p.planes == 2 ? p.scale[j * p.scale_stride] : 1.0f;
#pragma unroll
  for (int i = 0; i < ROWS; ++i) {
    if (i >= p.m) break;
    const float v = warp_sum(acc[i]);
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
  const bool words = args.k % 32 == 0 && aligned(args.packed, 4) && aligned(args.x, 16);
  return with_dtype(args.dtype, [&](auto tag) {
    static_assert(kBitsMaxM == 16, "instantiate up to kBitsMaxM rows");
    with_rows<1, 4, 16>(args.m, [&](auto rows) {
      bits_gemv_kernel<decltype(tag), rows()><<<blocks, kWarps * 32, 0, stream>>>(args, words);
    });
  });
}

cudaError_t xor_popcount(const uint8_t* a, const uint8_t* b, int64_t m, int64_t n, int64_t nbytes, int32_t* c,
                         cudaStream_t stream) {
  if (m * n == 0) return cudaSuccess;
  xor_popcount_kernel<<<blocks_for(m * n), kThreads, 0, stream>>>(a, b, m, n, nbytes, c);
  return cudaGetLastError();
}

}  // namespace effgen::cuda
