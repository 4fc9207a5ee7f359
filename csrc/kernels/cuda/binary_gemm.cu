// CUDA kernels of the binary_gemm family. Few-row products of bf16/fp16 x decode the bits
// onto the 16-bit tensor cores (skinny_mma.cuh); fp32 x (and per-group alpha off the
// tensor cores' step) gives each warp one output channel and streams its bits a 32-bit word
// per lane. XNOR gives a warp a channel and up to 16 rows of x that it XORs and popcounts;
// many-row real-x products expand the weights (expand_bits) for cuBLAS.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "binary_gemm.cuh"
#include "common.cuh"
#include "convert.cuh"
#include "skinny_mma.cuh"

namespace effgen::cuda {
namespace {

constexpr int kThreads = 256;

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

// A weight's code as T, exactly: int8 itself, or the float / bf16 / fp16 value.
template <typename T>
__host__ __device__ __forceinline__ T code_as(int code) {
  if constexpr (std::is_same_v<T, int8_t>) {
    return static_cast<int8_t>(code);
  } else {
    return from_f32<T>(static_cast<float>(code));
  }
}

// Eight codes as one 8- or 16-byte store (two for fp32); dst aligned to their size, or to
// 16 bytes for fp32.
template <typename T>
__host__ __device__ __forceinline__ void store_eight(T* dst, const T (&codes)[8]) {
  using Piece = std::conditional_t<sizeof(T) == 1, uint2, uint4>;
  constexpr int kPieces = 8 * sizeof(T) / sizeof(Piece);
  union {
    T values[8];
    Piece pieces[kPieces];
  } buffer;
#pragma unroll
  for (int b = 0; b < 8; ++b) buffer.values[b] = codes[b];
#pragma unroll
  for (int q = 0; q < kPieces; ++q) reinterpret_cast<Piece*>(dst)[q] = buffer.pieces[q];
}

// The codes of packed byte `item` (row item / plane, its 8 weights) as T into out [rows, k]:
// binary bit 1 -> +1, 0 -> -1; ternary positive minus negative plane. `vector`: k % 8 == 0
// and out aligned for store_eight, so a warp's stores are whole, consecutive pieces (one
// byte at a time, a warp's store touched 32 scattered bytes, and the expanded weights of a
// many-row product went through an int8 copy first). Host and device
// (tests/cuda_host/expand_bits.cu).
template <typename T>
__host__ __device__ __forceinline__ void expand_packed_byte(const uint8_t* packed, int64_t k, int planes, T* out,
                                                            bool vector, int64_t item) {
  const int64_t plane = (k + 7) / 8;
  const int64_t r = item / plane, byte = item % plane;
  const uint8_t* row = packed + r * planes * plane;
  const uint32_t first = row[byte], negative = planes == 2 ? row[plane + byte] : 0u;
  T codes[8];
#pragma unroll
  for (int b = 0; b < 8; ++b) {
    const int positive_bit = (first >> b) & 1, negative_bit = (negative >> b) & 1;
    codes[b] = code_as<T>(planes == 1 ? 2 * positive_bit - 1 : positive_bit - negative_bit);
  }
  T* dst = out + r * k + byte * 8;
  if (vector) {
    store_eight(dst, codes);
    return;
  }
  const int64_t count = k - byte * 8;
#pragma unroll
  for (int b = 0; b < 8; ++b) {  // constant indices: codes stays in registers
    if (b < count) dst[b] = codes[b];
  }
}

// One thread per packed byte: one 64-bit division per 8 outputs, not per output.
template <typename T>
__global__ void expand_bits_kernel(const uint8_t* packed, int64_t rows, int64_t k, int planes, T* out, bool vector) {
  const int64_t item = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (item < rows * ((k + 7) / 8)) expand_packed_byte(packed, k, planes, out, vector, item);
}

template <typename T>
cudaError_t launch_expand_bits(const uint8_t* packed, int64_t rows, int64_t k, int planes, T* out,
                               cudaStream_t stream) {
  const int64_t items = rows * ((k + 7) / 8);
  if (items == 0) return cudaSuccess;
  const bool vector = k % 8 == 0 && aligned(out, sizeof(T) == 1 ? 8 : 16);
  expand_bits_kernel<T><<<blocks_for(items), kThreads, 0, stream>>>(packed, rows, k, planes, out, vector);
  return cudaGetLastError();
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

// A plane word (bit t = weight t) with its 16 pairs of weights (2 i, 2 i + 1) regrouped so
// that a pair's bits sit 16 apart: pairs 0-7 in `low` at bits 2 i and 2 i + 16, pairs 8-15
// in `high` the same way. Regrouped once per word, a pair then takes one shift and one lop3
// to reach its two halves (binary_pair, ternary_pair) instead of gathering two bits on its own.
struct PairBits {
  uint32_t low, high;
};

__host__ __device__ __forceinline__ PairBits pair_bits(uint32_t word) {
  // low: even bits 0-14 stay, odd bits 1-15 move up 15; high: even bits 16-30 move down 16,
  // odd bits 17-31 down 1.
  PairBits bits{(word & 0x5555u) | ((word << 15) & 0x55550000u),
                ((word >> 16) & 0x5555u) | ((word >> 1) & 0x55550000u)};
#ifdef __CUDA_ARCH__
  // Opaque to the optimizer, which would otherwise fold each pair's mask into the regrouping
  // and redo part of it for all 16 pairs (3 instead of 2 instructions a pair).
  asm("" : "+r"(bits.low), "+r"(bits.high));
#endif
  return bits;
}

// Weights 2 i and 2 i + 1 of plane words as a pair of T (the lower k in the low half). One
// is 0x3F80 in bf16, 0x3C00 in fp16; bit 15 of a half is its sign, so a pair's bits shifted
// to 15 and 31 become signs.
template <typename T>
constexpr uint32_t kOneBits = std::is_same_v<T, __nv_bfloat16> ? 0x3F80u : 0x3C00u;

__host__ __device__ __forceinline__ uint32_t pair_signs(const PairBits& bits, int i) {
  const int at = 2 * (i % 8);  // pair i's bits in the regrouped words: at and at + 16
  return (i < 8 ? bits.low : bits.high) << (15 - at);  // and_or keeps bits 15 and 31
}

// Binary: bit 1 -> +1, 0 -> -1, from pair_bits(~word) (a set bit is a -1, the sign).
template <typename T>
__host__ __device__ __forceinline__ uint32_t binary_pair(const PairBits& inverted, int i) {
  return and_or(pair_signs(inverted, i), 0x80008000u, kOneBits<T> * 0x00010001u);
}

// Ternary: positive bit -> +1, negative bit -> -1, neither -> 0, from pair_bits of
// positive ^ negative (both set is never packed and decodes to 0, as unpack does) and of
// the negative plane.
template <typename T>
__host__ __device__ __forceinline__ uint32_t ternary_pair(const PairBits& nonzero, const PairBits& negative, int i) {
  const int at = 2 * (i % 8);
  const uint32_t units = ((i < 8 ? nonzero.low : nonzero.high) >> at) & 0x00010001u;
  return and_or(pair_signs(negative, i), 0x80008000u, units * kOneBits<T>);  // the halves' ones, then the signs
}

// skinny_mma's decoder of packed bits: a lane takes one 32-bit word per plane per step
// (x: the first plane, y: the negative plane of ternary weights) of its channel.
template <typename T, int PLANES>
struct BitsDecoder {
  // 64 bytes of weights in flight per lane either way (two channels); 8 ternary steps spill
  static constexpr int kLaneElements = 32, kStepsInFlight = PLANES == 1 ? 8 : 4;
  static constexpr bool kScalePerStep = false;
  using Loaded = uint2;
  const uint8_t* planes_row;  // the channel's first plane, nullptr past n
  int64_t plane_bytes, k;

  __device__ uint2 load(int64_t bit) const {
    const bool inside = planes_row != nullptr && bit < k;
    return make_uint2(inside ? *reinterpret_cast<const uint32_t*>(planes_row + bit / 8) : 0u,
                      inside && PLANES == 2 ? *reinterpret_cast<const uint32_t*>(planes_row + plane_bytes + bit / 8)
                                            : 0u);
  }
  // pair_bits is a pure function of the loaded words: the 16 calls of a step share it.
  __device__ uint32_t pair(const uint2& words, int i) const {
    if constexpr (PLANES == 1) return binary_pair<T>(pair_bits(~words.x), i);
    return ternary_pair<T>(pair_bits(words.x ^ words.y), pair_bits(words.y), i);
  }
};

// Few rows of bf16/fp16 x (skinny_mma.cuh): k % 32 == 0, x 16-byte and the planes 4-byte
// aligned, one scale per channel (binary) or per channel / tensor (ternary). Four blocks
// per SM for one channel tile (m <= 8: 59-64 registers, no spills, where left alone the
// compiler keeps x for all steps in flight); two for two tiles, which spill at three (and
// number half the blocks).
template <typename T, int PLANES, int TILES, bool STAGED>
__global__ void __launch_bounds__(kSkinnyWarps * 32, TILES == 1 ? 4 : 2) bits_gemv_mma_kernel(BitsGemvArgs p) {
  const int64_t plane_bytes = p.k / 8, scale_stride = PLANES == 2 ? p.scale_stride : 1;
  const int lane = threadIdx.x % 32;
  skinny_mma<T, STAGED, TILES, TILES>(
      static_cast<const T*>(p.x), p.m, p.n, p.k,
      [&](int64_t col0, int d) {
        const int64_t channel = col0 + skinny_channel(lane, d);
        return BitsDecoder<T, PLANES>{channel < p.n ? p.packed + channel * PLANES * plane_bytes : nullptr,
                                      plane_bytes, p.k};
      },
      [&](int64_t row, int64_t col, float sum) {
        const float v = sum * p.scale[col * scale_stride] + (p.bias == nullptr ? 0.0f : p.bias[col]);
        store_value(static_cast<T*>(p.out) + row * p.n + col, v);
      });
}

// XNOR-Net products: one warp per output channel j and block of up to ROWS rows of x. Lanes
// take units of both sign rows 32 units apart (coalesced), the channel's unit once for all
// the rows; `Unit`: 16-byte pieces, 32-bit words or bytes, the widest that nbytes and the
// operands' alignment allow. (One warp per output (i, j) read the weights once per row, and
// ATen's epilogue took seven more kernels: 25 us at one row of 8192 x 8192 and 54 us at 16
// rows on an H200, session 45, against 12 and 16 us for BinaryLinear with real x.)
constexpr int kXorWarps = 8;

__device__ __forceinline__ int popc_xor(uint8_t a, uint8_t b) { return __popc(static_cast<uint32_t>(a ^ b)); }
__device__ __forceinline__ int popc_xor(uint32_t a, uint32_t b) { return __popc(a ^ b); }
__device__ __forceinline__ int popc_xor(const uint4& a, const uint4& b) {
  return __popc(a.x ^ b.x) + __popc(a.y ^ b.y) + __popc(a.z ^ b.z) + __popc(a.w ^ b.w);
}

template <typename Unit, int ROWS>
__device__ __forceinline__ void add_disagreements(const XnorArgs& p, int64_t i0, int64_t j, int lane,
                                                  int32_t (&count)[ROWS]) {
  const int64_t units = p.nbytes / static_cast<int64_t>(sizeof(Unit));
  const Unit* w = reinterpret_cast<const Unit*>(p.w_bits + j * p.nbytes);
  for (int64_t u = lane; u < units; u += 32) {
    const Unit w_unit = w[u];
#pragma unroll
    for (int i = 0; i < ROWS; ++i) {
      if (i0 + i < p.m) count[i] += popc_xor(reinterpret_cast<const Unit*>(p.x_bits + (i0 + i) * p.nbytes)[u], w_unit);
    }
  }
}

// out[i][j] = (K - 2 * disagreements) * x_scale[i] * alpha[j] + bias[j], each step rounded
// to fp32 in reference.xnor_linear's order, then to T.
template <typename T, int ROWS>
__global__ void __launch_bounds__(kXorWarps * 32) xnor_kernel(XnorArgs p, int unit_bytes) {
  const int64_t idx = int64_t(blockIdx.x) * kXorWarps + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  const int64_t j = idx % p.n, i0 = idx / p.n * ROWS;
  if (i0 >= p.m) return;
  int32_t count[ROWS] = {};
  if (unit_bytes == 16) {
    add_disagreements<uint4>(p, i0, j, lane, count);
  } else if (unit_bytes == 4) {
    add_disagreements<uint32_t>(p, i0, j, lane, count);
  } else {
    add_disagreements<uint8_t>(p, i0, j, lane, count);
  }
  const float alpha = p.alpha[j * p.alpha_stride], bias = p.bias == nullptr ? 0.0f : p.bias[j];
  // x's pad bits are 0, so each set pad bit of the weight row (K comes from x; those bits
  // hold no weight) counted as one disagreement.
  const int pad_ones = p.k % 8 == 0 ? 0 : __popc(uint32_t{p.w_bits[(j + 1) * p.nbytes - 1]} >> (p.k % 8));
#pragma unroll
  for (int i = 0; i < ROWS; ++i) {
    if (i0 + i >= p.m) break;
    const int32_t disagreements = warp_sum(count[i]);
    if (lane != 0) continue;
    const float dot = static_cast<float>(p.k - 2 * (int64_t{disagreements} - pad_ones));
    const float v = __fmul_rn(__fmul_rn(dot, p.x_scale[i0 + i]), alpha);
    store_value(static_cast<T*>(p.out) + (i0 + i) * p.n + j, p.bias == nullptr ? v : __fadd_rn(v, bias));
  }
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
  return launch_expand_bits(packed, rows, k, planes, out, stream);
}

cudaError_t expand_bits(const uint8_t* packed, int64_t rows, int64_t k, int planes, DType dtype, void* out,
                        cudaStream_t stream) {
  return with_dtype(dtype, [&](auto zero) {
    launch_expand_bits(packed, rows, k, planes, static_cast<decltype(zero)*>(out), stream);
  });
}

cudaError_t bits_gemv(const BitsGemvArgs& args, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  const bool words = args.k % 32 == 0 && aligned(args.packed, 4) && aligned(args.x, 16);
  if (words && (args.planes == 2 || args.groups == 1) &&
      with_16bit_dtype(args.dtype, [&](auto tag) {
        using T = decltype(tag);
        with_skinny_tiles(args.m, [&](auto tiles) {
          with_staged_x<T>(args.skinny.stage_x, args.m, args.k, [&](auto staged, size_t shared_bytes) {
            const auto launch = [&](auto kernel) {
              const unsigned blocks = skinny_launch_blocks<tiles()>(kernel, args.n, shared_bytes, args.skinny);
              kernel<<<blocks, kSkinnyWarps * 32, shared_bytes, stream>>>(args);
            };
            if (args.planes == 2) {
              launch(bits_gemv_mma_kernel<T, 2, tiles(), staged()>);
            } else {
              launch(bits_gemv_mma_kernel<T, 1, tiles(), staged()>);
            }
          });
        });
      })) {
    return cudaGetLastError();
  }
  constexpr int kWarps = 8;
  const unsigned blocks = static_cast<unsigned>((args.n + kWarps - 1) / kWarps);
  return with_dtype(args.dtype, [&](auto tag) {
    static_assert(kBitsMaxM == 16, "instantiate up to kBitsMaxM rows");
    with_rows<1, 4, 16>(args.m, [&](auto rows) {
      bits_gemv_kernel<decltype(tag), rows()><<<blocks, kWarps * 32, 0, stream>>>(args, words);
    });
  });
}

cudaError_t xnor_gemm(const XnorArgs& args, cudaStream_t stream) {
  if (args.m == 0 || args.n == 0) return cudaSuccess;
  const auto fits = [&](int bytes) {
    return args.nbytes % bytes == 0 && aligned(args.x_bits, bytes) && aligned(args.w_bits, bytes);
  };
  const int unit_bytes = fits(16) ? 16 : fits(4) ? 4 : 1;
  return with_dtype(args.dtype, [&](auto tag) {
    static_assert(kXnorMaxRows == 16, "instantiate up to kXnorMaxRows rows");
    with_rows<1, 4, 16>(args.m, [&](auto rows) {
      const int64_t warps = (args.m + rows() - 1) / rows() * args.n;
      const unsigned blocks = static_cast<unsigned>((warps + kXorWarps - 1) / kXorWarps);
      xnor_kernel<decltype(tag), rows()><<<blocks, kXorWarps * 32, 0, stream>>>(args, unit_bytes);
    });
  });
}

}  // namespace effgen::cuda
