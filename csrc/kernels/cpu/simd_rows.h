// Row helpers shared by the kernel templates (quant_impl.h, int8_gemm_impl.h), written once
// over the SIMD abstraction `S`. Included inside an ISA namespace after that ISA's `S`
// (no include guard on purpose: each ISA translation unit includes it once).

#include "simd_tail.h"

// max |x| over a run, as float bits: ordered like the values for finite ones, and above
// kMaxFiniteBits once an Inf or NaN was seen.
template <typename T>
uint32_t absmax_bits_t(const T* x, int64_t n) {
  // Four independent maxima: one chain would wait on each max's latency.
  typename S::I acc[4] = {S::zero_bits(), S::zero_bits(), S::zero_bits(), S::zero_bits()};
  int64_t i = 0;
  for (; i + 4 * S::kWidth <= n; i += 4 * S::kWidth) {
    for (int j = 0; j < 4; ++j) acc[j] = S::max_bits(acc[j], S::abs_bits(S::load(x + i + j * S::kWidth)));
  }
  for (; i + S::kWidth <= n; i += S::kWidth) acc[0] = S::max_bits(acc[0], S::abs_bits(S::load(x + i)));
  if (i < n) acc[0] = S::max_bits(acc[0], S::abs_bits(S::load(pad_tail(x + i, n - i).v)));
  return S::hmax_bits(S::max_bits(S::max_bits(acc[0], acc[1]), S::max_bits(acc[2], acc[3])));
}

// x * inv_scale rounded half to even, then saturated to [-limit, limit] (integral), so the
// int conversion that follows is exact.
inline typename S::F round_to_limit(typename S::F x, typename S::F inv_scale, typename S::F limit) {
  return S::min(S::max(S::round_even(S::mul(x, inv_scale)), S::sub(S::set1(0.0f), limit)), limit);
}
