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

// totals[j] += (the digit rows' products over `depth` values of K, combined exactly,
// rounded once to float) * scale[j].
void digits_group_accumulate(const int32_t* c, int64_t digit_stride, int digits, int64_t depth, int64_t n,
                             const float* scale, float* totals) {
  if (digits == 2 && depth <= kFloatDigitsMaxDepth) {
    const int32_t* low = c + digit_stride;
    for (int64_t j = 0; j < n; ++j) {
      totals[j] += (static_cast<float>(c[j]) * 256.0f + static_cast<float>(low[j])) * scale[j];
    }
    return;
  }
  float dots[kDigitChunk];
  for (int64_t j0 = 0; j0 < n; j0 += kDigitChunk) {
    const int64_t nc = n - j0 < kDigitChunk ? n - j0 : kDigitChunk;
    combine_digits(c + j0, digit_stride, digits, nc, dots);
    for (int64_t j = 0; j < nc; ++j) totals[j0 + j] += dots[j] * scale[j0 + j];
  }
}
