// CUDA kernels of the compress family. Memory-bound: the int8 encoder runs one warp per
// compression block (absmax, then encode), 4 values per lane at a time; the fused sign
// encoder one warp per block too (mean, spread, then bits), 8 values per lane at a time; the
// sign packer of other block sizes 8 values per thread, in 16-byte pieces where aligned; the decoders 4 or 8 values a
// lane in 4-value groups a warp-width apart (coalesced 16-byte stores). Explicit round-to-nearest
// intrinsics (and --fmad=false in the build) keep the fp32 sequence of the CPU kernels.
#include <cstdint>
#include <cstring>
#include <type_traits>

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

constexpr int kWarps = kThreads / 32;

// The canonical quiet NaN (0x7FC00000, what the CPU kernels write), on host and device.
__host__ __device__ __forceinline__ float quiet_nan() {
  const uint32_t bits = 0x7FC00000u;
  float value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

// 4 consecutive values from p + i into out (count < 4: the first count, the rest 0). `vector`:
// i % 4 == 0 and p 16-byte aligned, so a full group is one load of 4 * sizeof(T) bytes.
template <typename T>
__host__ __device__ __forceinline__ void load4(const T* p, int64_t i, int count, bool vector, float (&out)[4]) {
  if (vector && count == 4) {
    union {
      T values[4];
      typename std::conditional<sizeof(T) == 4, float4, uint2>::type piece;
    } buffer;
    buffer.piece = *reinterpret_cast<const decltype(buffer.piece)*>(p + i);
#pragma unroll
    for (int t = 0; t < 4; ++t) out[t] = to_f32(buffer.values[t]);
    return;
  }
#pragma unroll
  for (int t = 0; t < 4; ++t) out[t] = t < count ? to_f32(p[i + t]) : 0.0f;
}

// v = x + error for the 4 values from i on (see load4).
template <typename T>
__host__ __device__ __forceinline__ void load_sum4(const T* x, const float* error, int64_t i, int count, bool vector,
                                                   float (&v)[4]) {
  float e[4];
  load4(x, i, count, vector, v);
  load4(error, i, count, vector, e);
#pragma unroll
  for (int t = 0; t < 4; ++t) v[t] = add_rn(v[t], e[t]);
}

// One warp per compression block: each lane takes 4 values at a time, 128 apart; the
// absmax is a warp reduction (no block barriers), then a second pass over the same values
// (now in L1) encodes them. `vector`: block % 4 == 0 and x, error, q aligned, so every
// group of 4 is one load per input and one store per output.
template <typename T>
__global__ void __launch_bounds__(kThreads) ef_int8_kernel(const T* x, float* error, int64_t n, int64_t block,
                                                           int64_t blocks, bool vector, int8_t* q, float* scales) {
  const int lane = threadIdx.x % 32;
  for (int64_t b = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; b < blocks; b += int64_t(gridDim.x) * kWarps) {
    const int64_t start = b * block, end = start + block < n ? start + block : n;
    uint32_t bits = 0;
    for (int64_t i = start + 4 * lane; i < end; i += 128) {
      const int count = end - i < 4 ? static_cast<int>(end - i) : 4;
      float v[4];
      load_sum4(x, error, i, count, vector, v);
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        if (t < count) bits = max(bits, __float_as_uint(v[t]) & 0x7FFFFFFFu);
      }
    }
    bits = warp_max(bits);
    const bool finite = bits <= kMaxFiniteBits;
    const float scale = finite ? __fdiv_rn(__uint_as_float(bits), 127.0f) : quiet_nan();
    const float inv = symmetric_inverse_scale(scale);  // 0 for the NaN scale of a non-finite block
    if (lane == 0) scales[b] = scale;
    for (int64_t i = start + 4 * lane; i < end; i += 128) {
      const int count = end - i < 4 ? static_cast<int>(end - i) : 4;
      float v[4];
      load_sum4(x, error, i, count, vector, v);
      int8_t codes[4];
      float residuals[4];
#pragma unroll
      for (int t = 0; t < 4; ++t) {
        // a block holding Inf/NaN: q = 0 and the residual is dropped; + 0: an int8 code has
        // no negative zero (compress_impl.h)
        const float code = finite ? __fadd_rn(fminf(fmaxf(rintf(__fmul_rn(v[t], inv)), -127.0f), 127.0f), 0.0f) : 0.0f;
        codes[t] = static_cast<int8_t>(code);
        residuals[t] = finite ? __fsub_rn(v[t], __fmul_rn(code, scale)) : 0.0f;
      }
      if (vector && count == 4) {
        *reinterpret_cast<char4*>(q + i) = make_char4(codes[0], codes[1], codes[2], codes[3]);
        *reinterpret_cast<float4*>(error + i) = make_float4(residuals[0], residuals[1], residuals[2], residuals[3]);
      } else {
#pragma unroll
        for (int t = 0; t < 4; ++t) {
          if (t < count) q[i + t] = codes[t], error[i + t] = residuals[t];
        }
      }
    }
  }
}

// A sign block's levels once the warp has its sums: mean = sum / count rounded to float
// (0 for a block holding Inf/NaN, which gets NaN levels, bits 0 and residuals 0, as in
// compress.h), spread = min(rms(d), cap * mean |d|) of d = v - mean.
struct SignLevels {
  bool finite;
  float mean, low, high;
};

__host__ __device__ __forceinline__ float sign_block_mean(double sum, double count) {
  return isfinite(sum) ? static_cast<float>(sum / count) : 0.0f;
}

__host__ __device__ __forceinline__ SignLevels sign_levels(double sum, float mean, double magnitudes, double squares,
                                                           double count, double cap) {
  if (!isfinite(sum)) return {false, mean, quiet_nan(), quiet_nan()};
  const double rms = sqrt(squares / count), capped = cap * (magnitudes / count);
  const float spread = static_cast<float>(rms < capped ? rms : capped);
  return {true, mean, sub_rn(mean, spread), add_rn(mean, spread)};
}

// The sign codec's work on one compression block (block % 8 == 0, so no packed byte spans
// two blocks) by one lane of the warp that takes it: 8 values at a time, 256 apart, in three
// passes, a warp-wide sum after each of the first two (the CPU kernel's double sums;
// compress_sign_impl.h says when their order can show). The later passes re-read the block
// (in L1). Host and device: tests/cuda_host/sign_encoder.cu runs every lane with the warp's
// sums emulated.
template <typename T>
struct SignBlockLane {
  const T* x;
  float* error;
  int64_t start, end;
  bool vector;  // x and error 16-byte aligned: 8 values are one or two loads per input
  int lane;

  __host__ __device__ int values_at(int64_t i) const { return end - i < 8 ? static_cast<int>(end - i) : 8; }

  // v = x + error for the 8 values from i on (count < 8: the first count, the rest 0)
  __host__ __device__ void load_sum8(int64_t i, int count, float (&v)[8]) const {
    float low[4], high[4];
    load_sum4(x, error, i, count < 4 ? count : 4, vector, low);
    load_sum4(x, error, i + 4, count > 4 ? count - 4 : 0, vector, high);
#pragma unroll
    for (int t = 0; t < 4; ++t) v[t] = low[t], v[4 + t] = high[t];
  }

  // Pass 1: this lane's part of the sum of v.
  __host__ __device__ double sum() const {
    double sum = 0.0;
    for (int64_t i = start + 8 * lane; i < end; i += 256) {
      float v[8];
      load_sum8(i, values_at(i), v);
#pragma unroll
      for (int t = 0; t < 8; ++t) sum += v[t];  // 0 past the end: adds nothing
    }
    return sum;
  }

  // Pass 2: this lane's parts of the sums of |d| and d^2, d = v - mean in fp32.
  __host__ __device__ void spread_sums(float mean, double& magnitude, double& square) const {
    magnitude = square = 0.0;
    for (int64_t i = start + 8 * lane; i < end; i += 256) {
      const int values = values_at(i);
      float v[8];
      load_sum8(i, values, v);
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        const double d = t < values ? sub_rn(v[t], mean) : 0.0f;
        magnitude += fabs(d);
        square += d * d;
      }
    }
  }

  // Pass 3: bits v >= mean (LSB first) and residuals v - (bit ? high : low).
  __host__ __device__ void pack(const SignLevels& levels, uint8_t* packed) const {
    for (int64_t i = start + 8 * lane; i < end; i += 256) {
      const int values = values_at(i);
      float v[8], residual[8];
      load_sum8(i, values, v);
      uint32_t bits = 0;
#pragma unroll
      for (int t = 0; t < 8; ++t) {
        const bool above = v[t] >= levels.mean;
        if (t < values) bits |= static_cast<uint32_t>(levels.finite && above) << t;
        residual[t] = levels.finite ? sub_rn(v[t], above ? levels.high : levels.low) : 0.0f;
      }
      packed[i / 8] = static_cast<uint8_t>(bits);
      if (vector && values == 8) {
        *reinterpret_cast<float4*>(error + i) = make_float4(residual[0], residual[1], residual[2], residual[3]);
        *reinterpret_cast<float4*>(error + i + 4) = make_float4(residual[4], residual[5], residual[6], residual[7]);
      } else {
#pragma unroll
        for (int t = 0; t < 8; ++t) {
          if (t < values) error[i + t] = residual[t];
        }
      }
    }
  }
};

// The sign codec in one kernel, for block % 8 == 0: one warp per compression block (see
// SignBlockLane), levels[2b], levels[2b + 1] = low, high.
template <typename T>
__global__ void __launch_bounds__(kThreads) ef_sign_kernel(const T* x, float* error, int64_t n, int64_t block,
                                                           int64_t blocks, double cap, bool vector, uint8_t* packed,
                                                           float* levels) {
  const int lane = threadIdx.x % 32;
  for (int64_t b = int64_t(blockIdx.x) * kWarps + threadIdx.x / 32; b < blocks; b += int64_t(gridDim.x) * kWarps) {
    const int64_t start = b * block, end = start + block < n ? start + block : n;
    const SignBlockLane<T> work{x, error, start, end, vector, lane};
    const double count = static_cast<double>(end - start), sum = warp_sum(work.sum());
    const float mean = sign_block_mean(sum, count);
    double magnitude, square;
    work.spread_sums(mean, magnitude, square);
    const SignLevels block_levels = sign_levels(sum, mean, warp_sum(magnitude), warp_sum(square), count, cap);
    if (lane == 0) levels[2 * b] = block_levels.low, levels[2 * b + 1] = block_levels.high;
    work.pack(block_levels, packed);
  }
}

// Decoder thread layout: a warp takes the 4-value groups of 32 x Codec::kLaneGroups x 4
// consecutive values, lane L the groups L, L + 32, ... of them, so that each load and each
// 16-byte store instruction of a warp covers consecutive addresses. (H200, 64M values, two
// rows: a lane owning 16 or 32 consecutive values, session 9, made each store write 16
// bytes into 32 separate spans and ran the sign decoder at half its session-8 speed; 16
// values a lane coalesced held 60 registers, 41% occupancy, the loads' latency exposed.)
constexpr int kGroupValues = 4;
constexpr int kGroupStride = 32 * kGroupValues;  // values from one of a lane's groups to the next

// What a decoder sums: `rows` received chunks of n values each (int8 codes [rows, n] or
// packed bits [rows, ceil(n / 8)]) with their blocks' words [rows, blocks x
// Codec::kBlockWords] (int8: a scale; sign: the levels low, high), into total [n].
// `vector`: block % 4 == 0 (a group shares one block), total 16-byte aligned and, for int8,
// n % 4 == 0 and the codes 4-byte aligned (a group is one 32-bit load per row and one
// 16-byte store); other groups go value by value.
struct DecodeArgs {
  const void* payload;
  const float* scales;
  int64_t rows, n, block, blocks;
  bool vector;
  float* total;
};

// The int8 codec: code times its block's scale, rounded. One group a lane: one 32-bit load
// per row (session 8's layout, as fast as torch's own int8 -> fp32 conversion of a row).
struct Int8Codes {
  static constexpr int kLaneGroups = 1, kBlockWords = 1;
  __host__ __device__ static void add_group(const DecodeArgs& a, int64_t r, int64_t v, const float* scale,
                                            float (&acc)[kGroupValues]) {
    const auto* q = static_cast<const int8_t*>(a.payload) + r * a.n + v;
    // The scale in a register first: read through the pointer in the loop, the kernel took
    // 40 registers on sm_90a (six blocks a SM) against session 10's 32 (eight), when it
    // fell from 77% of the copy bandwidth to 64-68% (sessions 44-45); so it takes 32 again.
    const float s = *scale;
    float codes[kGroupValues];
    int8x4_to_floats(*reinterpret_cast<const uint32_t*>(q), codes);
#pragma unroll
    for (int t = 0; t < kGroupValues; ++t) acc[t] = add_rn(acc[t], mul_rn(codes[t], s));
  }
  __host__ __device__ static float value(const DecodeArgs& a, int64_t r, int64_t i, const float* scale) {
    return mul_rn(float(static_cast<const int8_t*>(a.payload)[r * a.n + i]), *scale);
  }
};

// The sign codec: bit i % 8 of byte i / 8 of a row (LSB first) picks its block's level,
// levels[1] (high) when set, levels[0] (low) when not. Two groups a lane (8 values, as
// session 8's byte a thread, its fastest).
struct SignBits {
  static constexpr int kLaneGroups = 2, kBlockWords = 2;
  __host__ __device__ static const uint8_t* row(const DecodeArgs& a, int64_t r) {
    return static_cast<const uint8_t*>(a.payload) + r * ((a.n + 7) / 8);
  }
  __host__ __device__ static void add_group(const DecodeArgs& a, int64_t r, int64_t v, const float* levels,
                                            float (&acc)[kGroupValues]) {
    const uint32_t bits = row(a, r)[v / 8] >> (v % 8);  // v % 8 is 0 or 4: the group's nibble
    const float low = levels[0], high = levels[1];
#pragma unroll
    for (int t = 0; t < kGroupValues; ++t) acc[t] = add_rn(acc[t], (bits >> t) & 1u ? high : low);
  }
  __host__ __device__ static float value(const DecodeArgs& a, int64_t r, int64_t i, const float* levels) {
    return levels[(row(a, r)[i / 8] >> (i % 8)) & 1u];
  }
};

// Row r's words of block b.
template <typename Codec>
__host__ __device__ __forceinline__ const float* block_words(const DecodeArgs& a, int64_t r, int64_t b) {
  return a.scales + (r * a.blocks + b) * Codec::kBlockWords;
}

// One lane's work: its groups of the warp's values from `warp_first` on, summed over the rows
// in row order, then stored. Host and device (tests/cuda_host/decoders.cu).
template <typename Codec>
__host__ __device__ __forceinline__ void decode_lane(const DecodeArgs& a, int64_t warp_first, int lane) {
  constexpr int kGroups = Codec::kLaneGroups;
  const int64_t first = warp_first + kGroupValues * lane;
  if (a.vector && first + (kGroups - 1) * kGroupStride + kGroupValues <= a.n) {
    float acc[kGroups][kGroupValues] = {};
    int64_t block_index[kGroups];
#pragma unroll
    for (int g = 0; g < kGroups; ++g) block_index[g] = (first + g * kGroupStride) / a.block;
#pragma unroll 2
    for (int64_t r = 0; r < a.rows; ++r) {
#pragma unroll
      for (int g = 0; g < kGroups; ++g) {
        Codec::add_group(a, r, first + g * kGroupStride, block_words<Codec>(a, r, block_index[g]), acc[g]);
      }
    }
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      *reinterpret_cast<float4*>(a.total + first + g * kGroupStride) =
          make_float4(acc[g][0], acc[g][1], acc[g][2], acc[g][3]);
    }
    return;
  }
  // Value by value, each sum in a scalar: indexing the vector path's array with these
  // run-time counters would put it in local memory for both paths (the sign decoder ran at
  // 27% of the copy bandwidth so).
  for (int g = 0; g < kGroups; ++g) {
    for (int t = 0; t < kGroupValues; ++t) {
      const int64_t i = first + g * kGroupStride + t;
      if (i >= a.n) return;
      float sum = 0.0f;
      for (int64_t r = 0; r < a.rows; ++r) {
        sum = add_rn(sum, Codec::value(a, r, i, block_words<Codec>(a, r, i / a.block)));
      }
      a.total[i] = sum;
    }
  }
}

// The values a warp takes.
template <typename Codec>
constexpr int64_t kWarpValues = int64_t{kGroupStride} * Codec::kLaneGroups;

template <typename Codec>
__global__ void __launch_bounds__(kThreads) decompress_kernel(DecodeArgs a) {
  const int lane = threadIdx.x % 32;
  const int64_t warp = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32, warps = int64_t(gridDim.x) * kWarps;
  for (int64_t first = warp * kWarpValues<Codec>; first < a.n; first += warps * kWarpValues<Codec>) {
    decode_lane<Codec>(a, first, lane);
  }
}

// Blocks of decompress_kernel<Codec> for n values.
template <typename Codec>
int decode_blocks(int64_t n) {
  return blocks_for((n + kWarpValues<Codec> - 1) / kWarpValues<Codec> * 32);
}

// The sign codec's packed byte `byte` once its blocks' means and levels are known (any
// block size): its eight values first (v may alias error), then the bits v >= mean and
// residuals v - level (bit 0 and residual 0 in a block with NaN levels, one holding
// Inf/NaN). `vector`: v and error 16-byte aligned, so a full byte's values move in two
// 16-byte loads / stores. Host and device (tests/cuda_host/sign_encoder.cu).
__host__ __device__ __forceinline__ void sign_pack_byte(const float* v, const float* means, const float* levels,
                                                        int64_t n, int64_t block, bool vector, int64_t byte,
                                                        uint8_t* packed, float* error) {
  const int64_t first = byte * 8;
  const int count = n - first < 8 ? static_cast<int>(n - first) : 8;
  float values[8], residual[8];
  if (vector && count == 8) {
    const float4 low = *reinterpret_cast<const float4*>(v + first);
    const float4 high = *reinterpret_cast<const float4*>(v + first + 4);
    values[0] = low.x, values[1] = low.y, values[2] = low.z, values[3] = low.w;
    values[4] = high.x, values[5] = high.y, values[6] = high.z, values[7] = high.w;
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) values[k] = k < count ? v[first + k] : 0.0f;
  }
  uint32_t bits = 0;
#pragma unroll
  for (int k = 0; k < 8; ++k) {
    if (k >= count) break;
    const int64_t b = (first + k) / block;
    const float low = levels[2 * b], high = levels[2 * b + 1];
    const bool kept = !isnan(low), above = values[k] >= means[b];
    bits |= static_cast<uint32_t>(kept && above) << k;
    residual[k] = kept ? sub_rn(values[k], above ? high : low) : 0.0f;
  }
  packed[byte] = static_cast<uint8_t>(bits);
  if (vector && count == 8) {
    *reinterpret_cast<float4*>(error + first) = make_float4(residual[0], residual[1], residual[2], residual[3]);
    *reinterpret_cast<float4*>(error + first + 4) = make_float4(residual[4], residual[5], residual[6], residual[7]);
  } else {
#pragma unroll
    for (int k = 0; k < 8; ++k) {
      if (k < count) error[first + k] = residual[k];
    }
  }
}

// One thread per packed byte (sign_pack_byte).
__global__ void sign_pack_kernel(const float* v, const float* means, const float* levels, int64_t n, int64_t block,
                                 bool vector, uint8_t* packed, float* error) {
  const int64_t bytes = (n + 7) / 8;
  for (int64_t byte = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; byte < bytes;
       byte += int64_t(gridDim.x) * blockDim.x) {
    sign_pack_byte(v, means, levels, n, block, vector, byte, packed, error);
  }
}

}  // namespace

cudaError_t ef_compress_int8(DType dtype, const void* x, float* error, int64_t n, int64_t block, int8_t* q,
                             float* scales, cudaStream_t stream) {
  const int64_t blocks = (n + block - 1) / block;
  if (blocks == 0) return cudaSuccess;
  const bool vector = block % 4 == 0 && aligned(x, 16) && aligned(error, 16) && aligned(q, 4);
  const int64_t grid = (blocks + kWarps - 1) / kWarps;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    ef_int8_kernel<T><<<static_cast<int>(grid < 65535 * 32 ? grid : 65535 * 32), kThreads, 0, stream>>>(
        static_cast<const T*>(x), error, n, block, blocks, vector, q, scales);
  });
}

cudaError_t ef_compress_sign(DType dtype, const void* x, float* error, int64_t n, int64_t block, double cap,
                             uint8_t* packed, float* levels, cudaStream_t stream) {
  const int64_t blocks = (n + block - 1) / block;
  if (blocks == 0) return cudaSuccess;
  const bool vector = aligned(x, 16) && aligned(error, 16);
  const int64_t grid = (blocks + kWarps - 1) / kWarps;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    ef_sign_kernel<T><<<static_cast<int>(grid < 65535 * 32 ? grid : 65535 * 32), kThreads, 0, stream>>>(
        static_cast<const T*>(x), error, n, block, blocks, cap, vector, packed, levels);
  });
}

cudaError_t decompress_sum_int8(const int8_t* q, const float* scales, int64_t rows, int64_t n, int64_t block,
                                float* total, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vector = n % kGroupValues == 0 && block % kGroupValues == 0 && aligned(q, 4) && aligned(total, 16);
  decompress_kernel<Int8Codes><<<decode_blocks<Int8Codes>(n), kThreads, 0, stream>>>(
      DecodeArgs{q, scales, rows, n, block, (n + block - 1) / block, vector, total});
  return cudaGetLastError();
}

cudaError_t sign_pack_update(const float* v, const float* means, const float* levels, int64_t n, int64_t block,
                             uint8_t* packed, float* error, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vector = aligned(v, 16) && aligned(error, 16);
  sign_pack_kernel<<<blocks_for((n + 7) / 8), kThreads, 0, stream>>>(v, means, levels, n, block, vector, packed,
                                                                      error);
  return cudaGetLastError();
}

cudaError_t decompress_sum_sign(const uint8_t* packed, const float* levels, int64_t rows, int64_t n, int64_t block,
                                float* total, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  const bool vector = block % kGroupValues == 0 && aligned(total, 16);
  decompress_kernel<SignBits><<<decode_blocks<SignBits>(n), kThreads, 0, stream>>>(
      DecodeArgs{packed, levels, rows, n, block, (n + block - 1) / block, vector, total});
  return cudaGetLastError();
}

}  // namespace effgen::cuda
