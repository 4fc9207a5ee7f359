// The int8 gradient codec written once over the SIMD abstraction `S` (see quant_impl.h for
// the conventions): included by compress_{scalar,avx2,avx512}.cpp inside an ISA namespace.
// Arithmetic order equals reference.ef_compress_int8 / decompress_sum_int8 lane by lane
// (fp32 add, then multiply and subtract as separate roundings: -ffp-contract=off).

#include "simd_tail.h"

// v = x + error over one block; returns max |v| as IEEE bits (see kMaxFiniteBits).
template <typename T>
uint32_t block_absmax_bits(const T* x, const float* error, int64_t len) {
  typename S::I acc = S::zero_bits();
  int64_t i = 0;
  for (; i + S::kWidth <= len; i += S::kWidth) {
    acc = S::max_bits(acc, S::abs_bits(S::add(S::load(x + i), S::load(error + i))));
  }
  if (i < len) {
    acc = S::max_bits(acc, S::abs_bits(S::add(S::load(pad_tail(x + i, len - i).v),
                                              S::load(pad_tail(error + i, len - i).v))));
  }
  return S::hmax_bits(acc);
}

// q = clamp(round_half_even(v / scale)), error = v - q * scale for one vector of lanes. The
// code gets + 0 because an int8 code has no negative zero: -0 * scale would turn v = -0
// into error +0 where the reference keeps -0.
inline void encode_lanes(typename S::F v, typename S::F inv, typename S::F scale, int8_t* q, float* error) {
  const typename S::F limit = S::set1(127.0f), zero = S::set1(0.0f);
  const typename S::F code = S::add(S::min(S::max(S::round_even(S::mul(v, inv)), S::sub(zero, limit)), limit), zero);
  S::store(q, code);
  S::store(error, S::sub(v, S::mul(code, scale)));
}

template <typename T>
void ef_int8_blocks_t(const T* x, float* error, int64_t n, int64_t block, int64_t b0, int64_t b1, int8_t* q,
                      float* scales) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * block, len = std::min(block, n - start);
    const uint32_t absmax = block_absmax_bits(x + start, error + start, len);
    if (absmax > kMaxFiniteBits) {  // Inf/NaN: a NaN scale reaches the result, the residual stays clean
      scales[b] = std::nanf("");
      std::memset(q + start, 0, static_cast<size_t>(len));
      std::memset(error + start, 0, static_cast<size_t>(len) * sizeof(float));
      continue;
    }
    float absmax_f;
    std::memcpy(&absmax_f, &absmax, sizeof(absmax_f));
    const float scale = absmax_f / 127.0f, inv = symmetric_inverse_scale(scale);
    scales[b] = scale;
    const typename S::F inv_v = S::set1(inv), scale_v = S::set1(scale);
    const T* xb = x + start;
    float* eb = error + start;
    int8_t* qb = q + start;
    int64_t i = 0;
    for (; i + S::kWidth <= len; i += S::kWidth) {
      encode_lanes(S::add(S::load(xb + i), S::load(eb + i)), inv_v, scale_v, qb + i, eb + i);
    }
    if (i < len) {
      Lanes<int8_t> q_tail{};
      Lanes<float> e_tail{};
      encode_lanes(S::add(S::load(pad_tail(xb + i, len - i).v), S::load(pad_tail(eb + i, len - i).v)), inv_v, scale_v,
                   q_tail.v, e_tail.v);
      std::memcpy(qb + i, q_tail.v, static_cast<size_t>(len - i));
      std::memcpy(eb + i, e_tail.v, static_cast<size_t>(len - i) * sizeof(float));
    }
  }
}

void ef_compress_int8_blocks(DType dtype, const void* x, float* error, int64_t n, int64_t block, int64_t b0,
                             int64_t b1, int8_t* q, float* scales) {
  switch (dtype) {
    case DType::kBF16: return ef_int8_blocks_t(static_cast<const bf16*>(x), error, n, block, b0, b1, q, scales);
    case DType::kF16: return ef_int8_blocks_t(static_cast<const fp16*>(x), error, n, block, b0, b1, q, scales);
    case DType::kF32: return ef_int8_blocks_t(static_cast<const float*>(x), error, n, block, b0, b1, q, scales);
  }
}

// total[i] for i in [i0, i1): the rows' q * scale added in row order, one vector of
// positions at a time inside each block (so the scale is one broadcast per row).
void decompress_sum_int8(ChunkRows<int8_t> q, int64_t block, int64_t i0, int64_t i1, float* total) {
  for (int64_t start = i0; start < i1;) {
    const int64_t b = start / block, end = std::min(i1, (b + 1) * block);
    for (int64_t i = start; i < end; i += S::kWidth) {
      const int64_t len = std::min<int64_t>(S::kWidth, end - i);
      typename S::F acc = S::set1(0.0f);
      for (int64_t r = 0; r < q.rows; ++r) {
        const int8_t* row = q.data + r * q.data_stride + i;
        const typename S::F values = len == S::kWidth ? S::load(row) : S::load(pad_tail(row, len).v);
        acc = S::add(acc, S::mul(values, S::set1(q.scales[r * q.scale_stride + b])));
      }
      if (len == S::kWidth) {
        S::store(total + i, acc);
      } else {
        Lanes<float> out{};
        S::store(out.v, acc);
        std::memcpy(total + i, out.v, static_cast<size_t>(len) * sizeof(float));
      }
    }
    start = end;
  }
}

