// The quant kernels written once over a SIMD abstraction `S`. Each ISA file defines its
// own `S` (simd_scalar.h, simd_avx2.h, simd_avx512.h), sets its target flags, and includes
// this header inside an ISA-specific anonymous namespace, so every instantiation has
// internal linkage and no AVX-512 code can leak into another ISA's table via COMDAT folding.
//
// S provides: kWidth; vector types F (fp32 lanes), I (u32 lanes), B (lane mask);
// load/store of float, bf16, fp16 and int8 lanes; set1, mul, add, sub, min, max,
// round_even, floor; abs_bits, max_bits, hmax_bits, load_bits, store_bits; ge, le, land,
// store_bool.
//
// Tails shorter than a vector go through a zero-filled stack buffer, so the vector body is
// the only arithmetic and the tail rounds exactly like the rest of the run.

#include "simd_rows.h"

template <typename T>
typename S::F param(const T* p, int64_t i, int64_t stride) {
  return stride == 0 ? S::set1(p[0]) : S::load(p + i);
}

template <typename T>
void absmax_bits_accumulate_t(const T* x, int64_t n, uint32_t* acc) {
  int64_t i = 0;
  for (; i + S::kWidth <= n; i += S::kWidth) {
    S::store_bits(acc + i, S::max_bits(S::load_bits(acc + i), S::abs_bits(S::load(x + i))));
  }
  if (i < n) {
    auto acc_tail = pad_tail(acc + i, n - i);
    S::store_bits(acc_tail.v, S::max_bits(S::load_bits(acc_tail.v), S::abs_bits(S::load(pad_tail(x + i, n - i).v))));
    std::memcpy(acc + i, acc_tail.v, static_cast<size_t>(n - i) * sizeof(uint32_t));
  }
}

// One vector of symmetric int8 quantization.
inline typename S::F quantize_lanes(typename S::F x, typename S::F inv_scale) {
  return round_to_limit(x, inv_scale, S::set1(127.0f));
}

// Four vectors at a time round in the int8 store (S::store_rounded) with no clamp: with
// inv_scale from an absmax >= |x| (QuantKernels::quantize_symmetric), |x * inv_scale| is at
// most 127.00003 (checked for every positive finite fp32 absmax: the largest product, one
// ulp above 127, comes at absmax 3.73e-37), so it rounds into [-127, 127] like
// quantize_lanes' clamped values. The clamps were 2 of 5 vector ops a value.
template <typename T>
void quantize_symmetric_t(const T* x, int64_t n, const float* inv_scale, int64_t stride, int8_t* q) {
  int64_t i = 0;
  for (; i + 4 * S::kWidth <= n; i += 4 * S::kWidth) {
    typename S::F scaled[4];
    for (int j = 0; j < 4; ++j) {
      const int64_t at = i + j * S::kWidth;
      scaled[j] = S::mul(S::load(x + at), param(inv_scale, at, stride));
    }
    S::store_rounded(q + i, scaled);
  }
  for (; i + S::kWidth <= n; i += S::kWidth) S::store(q + i, quantize_lanes(S::load(x + i), param(inv_scale, i, stride)));
  if (i < n) {
    const auto inv = stride == 0 ? S::set1(inv_scale[0]) : S::load(pad_tail(inv_scale + i, n - i).v);
    Lanes<int8_t> out{};
    S::store(out.v, quantize_lanes(S::load(pad_tail(x + i, n - i).v), inv));
    std::memcpy(q + i, out.v, static_cast<size_t>(n - i));
  }
}

// out[i] = a[i] * b[i], widened to fp32 lanes and rounded to Out.
template <typename A, typename B, typename Out>
void multiply_t(const A* a, const B* b, int64_t n, Out* out) {
  int64_t i = 0;
  for (; i + S::kWidth <= n; i += S::kWidth) S::store(out + i, S::mul(S::load(a + i), S::load(b + i)));
  if (i < n) {
    Lanes<Out> tail{};
    S::store(tail.v, S::mul(S::load(pad_tail(a + i, n - i).v), S::load(pad_tail(b + i, n - i).v)));
    std::memcpy(out + i, tail.v, static_cast<size_t>(n - i) * sizeof(Out));
  }
}

template <typename Out>
void dequantize_t(const int8_t* q, int64_t n, const float* scale, int64_t stride, Out* y) {
  int64_t i = 0;
  for (; i + S::kWidth <= n; i += S::kWidth) S::store(y + i, S::mul(S::load(q + i), param(scale, i, stride)));
  if (i < n) {
    const auto s = stride == 0 ? S::set1(scale[0]) : S::load(pad_tail(scale + i, n - i).v);
    Lanes<Out> out{};
    S::store(out.v, S::mul(S::load(pad_tail(q + i, n - i).v), s));
    std::memcpy(y + i, out.v, static_cast<size_t>(n - i) * sizeof(Out));
  }
}

struct FakeQuantLanes {
  typename S::F scale, inv_scale, zero_point;
};

// y = a * b (integral a) stored as PyTorch's CPU fake quant stores its double product: c10
// converts a double to fp16 through float on x86 (two roundings, as S::store of the fp32
// product) but straight to float16_t on aarch64 (one rounding, lane by lane here).
template <typename T>
void store_product(T* y, typename S::F a, typename S::F b) {
#if defined(__aarch64__)
  if constexpr (std::is_same_v<T, fp16>) {
    Lanes<float> a_lanes, b_lanes;
    S::store(a_lanes.v, a);
    S::store(b_lanes.v, b);
    for (int l = 0; l < S::kWidth; ++l) {  // exact products: a is an integer below 2^24
      y[l] = fp16_from_f64(static_cast<double>(a_lanes.v[l]) * static_cast<double>(b_lanes.v[l]));
    }
    return;
  }
#endif
  S::store(y, S::mul(a, b));
}

// PyTorch's arithmetic, step by step (fp32, no FMA; y's product see store_product):
//   qval = zero_point + nearbyint(x * inv_scale)
//   y    = (clamp(qval, quant_min, quant_max) - zero_point) * scale
//   mask = quant_min <= qval <= quant_max
template <typename T>
void fake_quantize_lanes(typename S::F x, const FakeQuantLanes& p, typename S::F qmin, typename S::F qmax, T* y,
                         bool* mask) {
  const auto qval = S::add(p.zero_point, S::round_even(S::mul(x, p.inv_scale)));
  const auto clamped = S::min(S::max(qval, qmin), qmax);
  store_product(y, S::sub(clamped, p.zero_point), p.scale);
  S::store_bool(mask, S::land(S::ge(qval, qmin), S::le(qval, qmax)));
}

template <typename T>
uint32_t fake_quantize_t(const T* x, int64_t n, const FakeQuantParams& params, int64_t stride, T* y, bool* mask) {
  const auto qmin = S::set1(params.quant_min), qmax = S::set1(params.quant_max);
  typename S::I seen = S::zero_bits();
  int64_t i = 0;
  for (; i + S::kWidth <= n; i += S::kWidth) {
    const FakeQuantLanes p{param(params.scale, i, stride), param(params.inv_scale, i, stride),
                           param(params.zero_point, i, stride)};
    const auto xv = S::load(x + i);
    seen = S::max_bits(seen, S::abs_bits(xv));
    fake_quantize_lanes(xv, p, qmin, qmax, y + i, mask + i);
  }
  if (i < n) {
    const int64_t rest = n - i;
    auto tail_param = [&](const float* values) {
      return stride == 0 ? S::set1(values[0]) : S::load(pad_tail(values + i, rest).v);
    };
    const FakeQuantLanes p{tail_param(params.scale), tail_param(params.inv_scale), tail_param(params.zero_point)};
    const auto xv = S::load(pad_tail(x + i, rest).v);
    seen = S::max_bits(seen, S::abs_bits(xv));
    Lanes<T> y_tail{};
    Lanes<bool> mask_tail{};
    fake_quantize_lanes(xv, p, qmin, qmax, y_tail.v, mask_tail.v);
    std::memcpy(y + i, y_tail.v, static_cast<size_t>(rest) * sizeof(T));
    std::memcpy(mask + i, mask_tail.v, static_cast<size_t>(rest));
  }
  return S::hmax_bits(seen);
}

// Type-erased entry points for the QuantKernels table.
template <typename Fn>
auto with_dtype(DType dtype, Fn&& fn) {
  switch (dtype) {
    case DType::kBF16: return fn(bf16{});
    case DType::kF16: return fn(fp16{});
    case DType::kF32: break;
  }
  return fn(float{});
}

uint32_t absmax_bits(DType dtype, const void* x, int64_t n) {
  return with_dtype(dtype, [&](auto tag) { return absmax_bits_t(static_cast<const decltype(tag)*>(x), n); });
}

void absmax_bits_accumulate(DType dtype, const void* x, int64_t n, uint32_t* acc) {
  with_dtype(dtype, [&](auto tag) { absmax_bits_accumulate_t(static_cast<const decltype(tag)*>(x), n, acc); });
}

void scale_channels(DType dtype, const void* x, int64_t n, const float* factors, float* y) {
  with_dtype(dtype, [&](auto tag) { multiply_t(static_cast<const decltype(tag)*>(x), factors, n, y); });
}

void quantize_symmetric(DType dtype, const void* x, int64_t n, const float* inv_scale, int64_t stride, int8_t* q) {
  with_dtype(dtype,
             [&](auto tag) { quantize_symmetric_t(static_cast<const decltype(tag)*>(x), n, inv_scale, stride, q); });
}

void dequantize(DType out_dtype, const int8_t* q, int64_t n, const float* scale, int64_t stride, void* y) {
  with_dtype(out_dtype, [&](auto tag) { dequantize_t(q, n, scale, stride, static_cast<decltype(tag)*>(y)); });
}

uint32_t fake_quantize(DType dtype, const void* x, int64_t n, const FakeQuantParams& params, int64_t stride, void* y,
                       bool* mask) {
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    return fake_quantize_t(static_cast<const T*>(x), n, params, stride, static_cast<T*>(y), mask);
  });
}

// bool is one byte holding 0 or 1, so the int8 load widens it to 0.0f / 1.0f.
void mask_grad(DType dtype, const void* grad, const bool* mask, int64_t n, void* dx) {
  with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    multiply_t(static_cast<const T*>(grad), reinterpret_cast<const int8_t*>(mask), n, static_cast<T*>(dx));
  });
}

const QuantKernels kTable{absmax_bits, absmax_bits_accumulate, scale_channels, quantize_symmetric, dequantize,
                          fake_quantize, mask_grad};
