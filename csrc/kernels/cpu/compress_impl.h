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

// q = clamp(round_half_even(v / scale)), error = v - q * scale (kEstimate: minus x as well)
// for one vector of lanes, v = x + error. The code gets + 0 because an int8 code has no
// negative zero: -0 * scale would turn v = -0 into error +0 where the reference keeps -0.
template <bool kEstimate>
inline void encode_lanes(typename S::F x, typename S::F v, typename S::F inv, typename S::F scale, int8_t* q,
                         float* error) {
  const typename S::F limit = S::set1(127.0f), zero = S::set1(0.0f);
  const typename S::F code = S::add(S::min(S::max(S::round_even(S::mul(v, inv)), S::sub(zero, limit)), limit), zero);
  S::store(q, code);
  const typename S::F residual = S::sub(v, S::mul(code, scale));
  S::store(error, kEstimate ? S::sub(residual, x) : residual);
}

// The residual of a block holding Inf/NaN: 0 (kEstimate: 0 - x).
template <bool kEstimate, typename T>
void clear_non_finite_block(const T* x, float* error, int64_t len) {
  for (int64_t i = 0; i < len; ++i) error[i] = kEstimate ? 0.0f - to_f32(x[i]) : 0.0f;
}

template <bool kEstimate, typename T>
void ef_int8_blocks_t(const T* x, float* error, int64_t n, int64_t block, int64_t b0, int64_t b1, int8_t* q,
                      float* scales) {
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * block, len = std::min(block, n - start);
    const uint32_t absmax = block_absmax_bits(x + start, error + start, len);
    if (absmax > kMaxFiniteBits) {  // Inf/NaN: a NaN scale reaches the result, the residual stays clean
      scales[b] = std::nanf("");
      std::memset(q + start, 0, static_cast<size_t>(len));
      clear_non_finite_block<kEstimate>(x + start, error + start, len);
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
      const typename S::F xv = S::load(xb + i);
      encode_lanes<kEstimate>(xv, S::add(xv, S::load(eb + i)), inv_v, scale_v, qb + i, eb + i);
    }
    if (i < len) {
      Lanes<int8_t> q_tail{};
      Lanes<float> e_tail{};
      const typename S::F xv = S::load(pad_tail(xb + i, len - i).v);
      encode_lanes<kEstimate>(xv, S::add(xv, S::load(pad_tail(eb + i, len - i).v)), inv_v, scale_v, q_tail.v,
                              e_tail.v);
      std::memcpy(qb + i, q_tail.v, static_cast<size_t>(len - i));
      std::memcpy(eb + i, e_tail.v, static_cast<size_t>(len - i) * sizeof(float));
    }
  }
}

// Calls body(typed x, estimate as a constant) for x's dtype and the `estimate` flag.
template <typename Body>
void with_codec_types(DType dtype, const void* x, bool estimate, Body body) {
  const auto with_x = [&](auto typed_x) {
    if (estimate) {
      body(typed_x, std::true_type{});
    } else {
      body(typed_x, std::false_type{});
    }
  };
  switch (dtype) {
    case DType::kBF16: return with_x(static_cast<const bf16*>(x));
    case DType::kF16: return with_x(static_cast<const fp16*>(x));
    case DType::kF32: return with_x(static_cast<const float*>(x));
  }
}

void ef_compress_int8_blocks(DType dtype, const void* x, float* error, int64_t n, int64_t block, int64_t b0,
                             int64_t b1, int8_t* q, float* scales, bool estimate) {
  with_codec_types(dtype, x, estimate, [&](auto typed_x, auto kEstimate) {
    ef_int8_blocks_t<decltype(kEstimate)::value>(typed_x, error, n, block, b0, b1, q, scales);
  });
}

// The decoders' store of one vector of sums (len lanes of it at total): total = acc, or
// total + acc with `accumulate`.
inline void store_sum(typename S::F acc, float* total, int64_t len, bool accumulate) {
  if (len == S::kWidth) {
    S::store(total, accumulate ? S::add(S::load(total), acc) : acc);
    return;
  }
  Lanes<float> out{};
  S::store(out.v, accumulate ? S::add(S::load(pad_tail(total, len).v), acc) : acc);
  std::memcpy(total, out.v, static_cast<size_t>(len) * sizeof(float));
}

// total[i] for i in [i0, i1): the rows' q * scale added in row order, one vector of
// positions at a time inside each block (so the scale is one broadcast per row).
template <bool kAccumulate>
void decompress_sum_int8_range(ChunkRows<int8_t> q, int64_t block, int64_t i0, int64_t i1, float* total) {
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
      store_sum(acc, total + i, len, kAccumulate);
    }
    start = end;
  }
}

void decompress_sum_int8(ChunkRows<int8_t> q, int64_t block, int64_t i0, int64_t i1, float* total, bool accumulate) {
  if (accumulate) {
    decompress_sum_int8_range<true>(q, block, i0, i1, total);
  } else {
    decompress_sum_int8_range<false>(q, block, i0, i1, total);
  }
}

