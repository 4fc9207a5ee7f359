// Torch-free element types and their scalar conversions. bf16 and fp16 are stored as raw
// 16-bit patterns with the same layout as at::BFloat16 / at::Half, so the glue layer can
// reinterpret tensor data pointers.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace effgen::cpu {

enum class DType { kF32, kBF16, kF16 };

constexpr int64_t dtype_size(DType t) { return t == DType::kF32 ? 4 : 2; }

struct bf16 {
  uint16_t bits;
};
struct fp16 {
  uint16_t bits;
};

inline uint32_t f32_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, sizeof u);
  return u;
}

// Largest |x| bits a finite float can have; absmax bits above it mean Inf or NaN was seen.
constexpr uint32_t kMaxFiniteBits = 0x7F7FFFFFu;

inline float f32_from_bits(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

inline float to_f32(float x) { return x; }
inline float to_f32(bf16 x) { return f32_from_bits(static_cast<uint32_t>(x.bits) << 16); }

inline float to_f32(fp16 x) {
  const uint32_t sign = static_cast<uint32_t>(x.bits & 0x8000u) << 16;
  const uint32_t exponent = (x.bits >> 10) & 0x1Fu;
  const uint32_t mantissa = x.bits & 0x3FFu;
  if (exponent == 0x1F) return f32_from_bits(sign | 0x7F800000u | (mantissa << 13));
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in fp32
    const float magnitude = static_cast<float>(mantissa) * 5.9604644775390625e-8f;
    return sign ? -magnitude : magnitude;
  }
  return f32_from_bits(sign | ((exponent + 112u) << 23) | (mantissa << 13));
}

template <typename T>
T from_f32(float f);

template <>
inline float from_f32<float>(float f) {
  return f;
}

// Round to nearest even; NaN becomes the canonical quiet NaN 0x7FC0, as c10::BFloat16 does.
template <>
inline bf16 from_f32<bf16>(float f) {
  const uint32_t u = f32_bits(f);
  if ((u & 0x7FFFFFFFu) > 0x7F800000u) return bf16{0x7FC0};
  return bf16{static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16)};
}

// Round to nearest even, overflow to Inf, subnormals kept; NaN becomes a quiet NaN.
template <>
inline fp16 from_f32<fp16>(float f) {
  const uint32_t u = f32_bits(f);
  const uint16_t sign = static_cast<uint16_t>((u >> 16) & 0x8000u);
  const uint32_t magnitude = u & 0x7FFFFFFFu;
  if (magnitude > 0x7F800000u) return fp16{static_cast<uint16_t>(sign | 0x7E00u)};
  if (magnitude >= 0x477FF000u) return fp16{static_cast<uint16_t>(sign | 0x7C00u)};  // >= 65520 rounds to Inf
  if (magnitude < 0x38800000u) {  // below 2^-14: a subnormal half counts units of 2^-24
    const float units = std::nearbyint(f32_from_bits(magnitude) * 16777216.0f);
    return fp16{static_cast<uint16_t>(sign | static_cast<uint16_t>(units))};
  }
  const uint32_t rebiased = magnitude - (112u << 23);  // exponent bias 127 -> 15
  return fp16{static_cast<uint16_t>(sign | ((rebiased + 0xFFFu + ((rebiased >> 13) & 1u)) >> 13))};
}

#if defined(__aarch64__)
// One rounding from double, as c10::Half does on aarch64 (through the native float16_t).
inline fp16 fp16_from_f64(double d) {
  const __fp16 h = static_cast<__fp16>(d);  // arm_neon.h's float16_t
  uint16_t bits;
  std::memcpy(&bits, &h, sizeof bits);
  return fp16{bits};
}
#endif

}  // namespace effgen::cpu
