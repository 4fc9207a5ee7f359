// fp32 <-> element conversions shared by the CUDA kernels (round to nearest even).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <cstring>

namespace effgen::cuda {

__host__ __device__ __forceinline__ float to_f32(float v) { return v; }
__host__ __device__ __forceinline__ float to_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__host__ __device__ __forceinline__ float to_f32(__half v) { return __half2float(v); }
__host__ __device__ __forceinline__ float to_f32(int8_t v) { return static_cast<float>(v); }

template <typename T>
__host__ __device__ __forceinline__ T from_f32(float v);
template <>
__host__ __device__ __forceinline__ float from_f32<float>(float v) { return v; }
template <>
__host__ __device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <>
__host__ __device__ __forceinline__ __half from_f32<__half>(float v) { return __float2half_rn(v); }

template <typename T>
__device__ __forceinline__ void store_value(T* p, float v) {
  *p = from_f32<T>(v);
}

// fp32 add / subtract / multiply rounded to nearest even and never fused into an fma (the
// CPU kernels' sequence), also on the host for the host-side checks (built without FMA code).
__host__ __device__ __forceinline__ float add_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}
__host__ __device__ __forceinline__ float sub_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fsub_rn(a, b);
#else
  return a - b;
#endif
}
__host__ __device__ __forceinline__ float mul_rn(float a, float b) {
#ifdef __CUDA_ARCH__
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

// __byte_perm (PRMT), also on the host for the host-side checks: byte j of the result is
// byte (selector >> 4 j) & 7 of b:a.
__host__ __device__ __forceinline__ uint32_t permute_bytes(uint32_t a, uint32_t b, uint32_t selector) {
#ifdef __CUDA_ARCH__
  return __byte_perm(a, b, selector);
#else
  const uint64_t both = uint64_t{b} << 32 | a;
  uint32_t out = 0;
  for (int j = 0; j < 4; ++j) {
    out |= static_cast<uint32_t>(both >> (8 * ((selector >> (4 * j)) & 7)) & 0xFFu) << (8 * j);
  }
  return out;
#endif
}

// Int8 byte t of a word as a float, exactly, given the word with 0x80808080 xor-ed in (each
// byte b as b + 128). I2F runs at a quarter of the FMA rate, too slow to keep up with HBM at
// one row, so b + 128 becomes the low mantissa byte of 2^23 by a byte permute (result
// bytes: byte t, 0x00, 0x00, 0x4B, the exponent of 2^23) and one subtraction of 2^23 + 128
// takes it back to b.
__host__ __device__ __forceinline__ float biased_byte_to_float(uint32_t biased, int t) {
  const uint32_t bits = permute_bytes(biased, 0x4B000000u, 0x7540u | t);
#ifdef __CUDA_ARCH__
  return __fsub_rn(__uint_as_float(bits), 8388736.0f);
#else
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value - 8388736.0f;  // exact: both are integers below 2^24
#endif
}

// The 4 int8 values of a 32-bit word (byte 0 first) as floats, exactly.
__host__ __device__ __forceinline__ void int8x4_to_floats(uint32_t word, float (&out)[4]) {
  const uint32_t biased = word ^ 0x80808080u;
#pragma unroll
  for (int t = 0; t < 4; ++t) out[t] = biased_byte_to_float(biased, t);
}

// The 16 int8 values of a 16-byte piece as floats, exactly.
__host__ __device__ __forceinline__ void int8x16_to_floats(const int4& piece, float (&out)[16]) {
  const int32_t words[4] = {piece.x, piece.y, piece.z, piece.w};
#pragma unroll
  for (int q = 0; q < 4; ++q) {
    float four[4];
    int8x4_to_floats(static_cast<uint32_t>(words[q]), four);
#pragma unroll
    for (int t = 0; t < 4; ++t) out[4 * q + t] = four[t];
  }
}

// N consecutive elements (N a multiple of 8, x 16-byte aligned) as floats, in 16-byte loads.
template <int N, typename T>
__device__ __forceinline__ void load_floats(const T* x, float (&out)[N]) {
  static_assert(N * sizeof(T) % 16 == 0, "whole 16-byte loads");
  constexpr int kLoads = N * sizeof(T) / 16;
  union {
    int4 pieces[kLoads];
    T values[N];
  } buffer;
#pragma unroll
  for (int q = 0; q < kLoads; ++q) buffer.pieces[q] = reinterpret_cast<const int4*>(x)[q];
#pragma unroll
  for (int t = 0; t < N; ++t) out[t] = to_f32(buffer.values[t]);
}

}  // namespace effgen::cuda
