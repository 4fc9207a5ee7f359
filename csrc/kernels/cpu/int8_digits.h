// W8A16's digit rows (split_fixed_point_rows in int8_gemm.h) combined into float dot
// products: shared by int8_gemm_impl.h and the AMX kernel. Include it inside an ISA
// namespace, after that ISA's target pragma (no include guard on purpose), so the loops
// vectorise with the ISA's instructions.

// Up to kDigitChunk columns of digit rows' products combined exactly (in double: below
// 2^53) and rounded once to float: dots[j] = sum_d 256^(digits-1-d) c[d * digit_stride + j].
// Digit by digit over the chunk: loops the compiler vectorises.
constexpr int64_t kDigitChunk = 64;
void combine_digits(const int32_t* c, int64_t digit_stride, int digits, int64_t nc, float* dots) {
  double exact[kDigitChunk];
  for (int64_t j = 0; j < nc; ++j) exact[j] = c[j];
  for (int d = 1; d < digits; ++d) {
    const int32_t* digit = c + d * digit_stride;
    for (int64_t j = 0; j < nc; ++j) exact[j] = exact[j] * 256.0 + digit[j];
  }
  for (int64_t j = 0; j < nc; ++j) dots[j] = static_cast<float>(exact[j]);
}

// Products of fewer than 2^10 int8 pairs stay below 2^24 in magnitude, so with 2 digits
// both digit rows' sums are exact floats, times 256 too, and their float sum is the dot
// rounded once; register tiles fold such groups without leaving float.
constexpr int64_t kFloatDigitsMaxDepth = 1023;

// With 3 digits a group's combined dot is a . w, |a| <= split_max(3) < 2^22, so it is exact
// in int64 for any group, and the conversion rounds that integer once, as the double path
// of combine_digits does. With weights of magnitude at most weight_bound, a group of
// depth * weight_bound <= kInt32DotMaxDepthTimesBound keeps it within int32 (1-bit and
// ternary panels, bound 1: groups of up to 512), where uint32 arithmetic wraps to the
// exact sum (only the final value must fit) and twice the lanes run. Against the double
// path, AMX, fp32 x, 64 x 4096^2, group 128 (RESULTS.md, session 32): W8A16 4.80 -> 3.45 ms
// (int64), binary panels 4.3 -> 2.9 ms (int32; int64 about 13% slower); AVX2 and AVX-512
// level or faster.
constexpr int64_t kInt32DotMaxDepthTimesBound = 512;
static_assert(kInt32DotMaxDepthTimesBound * split_max(3) <= INT32_MAX);

// totals[j] += (the 3 digit rows' products combined in Int, as Signed) * scale[j].
template <typename Int, typename Signed>
void three_digits_accumulate(const int32_t* c, int64_t digit_stride, int64_t n, const float* __restrict scale,
                             float* __restrict totals) {
  const int32_t *mid = c + digit_stride, *low = c + 2 * digit_stride;
  for (int64_t j = 0; j < n; ++j) {
    const Int dot = (static_cast<Int>(c[j]) << 16) + (static_cast<Int>(mid[j]) << 8) + static_cast<Int>(low[j]);
    totals[j] += static_cast<float>(static_cast<Signed>(dot)) * scale[j];
  }
}

// totals[j] += (2 digit rows' products, each an exact float) * scale[j].
void two_digits_accumulate(const int32_t* c, int64_t digit_stride, int64_t n, const float* __restrict scale,
                           float* __restrict totals) {
  const int32_t* low = c + digit_stride;
  for (int64_t j = 0; j < n; ++j) {
    totals[j] += (static_cast<float>(c[j]) * 256.0f + static_cast<float>(low[j])) * scale[j];
  }
}

// totals[j] += (up to kDigitChunk columns of the digit rows, combined in double) * scale[j].
void double_digits_accumulate(const int32_t* c, int64_t digit_stride, int digits, int64_t n, const float* scale,
                              float* totals) {
  float dots[kDigitChunk];
  for (int64_t j0 = 0; j0 < n; j0 += kDigitChunk) {
    const int64_t nc = n - j0 < kDigitChunk ? n - j0 : kDigitChunk;
    combine_digits(c + j0, digit_stride, digits, nc, dots);
    for (int64_t j = 0; j < nc; ++j) totals[j0 + j] += dots[j] * scale[j0 + j];
  }
}

// One group of K for `tokens` tokens, token t's digit rows from c + t * digits *
// digit_stride and its totals at totals + t * ldt: totals[t][j] += (the digit rows'
// products over `depth` values of K, combined exactly, rounded once to float) * scale[j];
// the weights at most weight_bound in magnitude. The combination is chosen once for all
// tokens, and each token's loop inlines: called per token (32 columns on AMX), the call
// and the choice took a quarter of the fold's time.
void digits_group_accumulate(const int32_t* c, int64_t digit_stride, int digits, int64_t tokens, int64_t depth,
                             int64_t n, const float* scale, float* totals, int64_t ldt, int weight_bound) {
  const auto for_tokens = [&](const auto& accumulate) {
    for (int64_t t = 0; t < tokens; ++t) accumulate(c + t * digits * digit_stride, totals + t * ldt);
  };
  if (digits == 2 && depth <= kFloatDigitsMaxDepth) {
    return for_tokens([&](const int32_t* rows, float* row) {
      two_digits_accumulate(rows, digit_stride, n, scale, row);
    });
  }
  if (digits == 3 && depth * weight_bound <= kInt32DotMaxDepthTimesBound) {
    return for_tokens([&](const int32_t* rows, float* row) {
      three_digits_accumulate<uint32_t, int32_t>(rows, digit_stride, n, scale, row);
    });
  }
  if (digits == 3) {
    return for_tokens([&](const int32_t* rows, float* row) {
      three_digits_accumulate<int64_t, int64_t>(rows, digit_stride, n, scale, row);
    });
  }
  for_tokens([&](const int32_t* rows, float* row) {
    double_digits_accumulate(rows, digit_stride, digits, n, scale, row);
  });
}
