// The sign gradient codec, included by compress_{scalar,avx2,avx512}.cpp inside an ISA
// namespace after compress_impl.h: bits and residual over the SIMD layer `S`, the rest in
// plain C++ whose lane loops the compiler vectorizes for each copy's target (the arithmetic
// is the same in every copy: fp32 adds, double sums, no contraction). Its payload is 1 bit
// per value (v >= its block's mean) and two fp32 levels per block.

// The S::kWidth bits of values [i, i + S::kWidth) of a packed row (LSB first; i % 8 == 0
// when a vector spans whole bytes).
inline uint32_t vector_bits(const uint8_t* row, int64_t i) {
  if constexpr (S::kWidth >= 8) {
    uint32_t bits = 0;
    std::memcpy(&bits, row + (i >> 3), S::kWidth / 8);  // little-endian: byte 0 -> bits 0-7
    return bits;
  } else {
    return static_cast<uint32_t>(row[i >> 3]) >> (i & 7);
  }
}

// Walks one block at a time and finds bits by shifts (a division per value made it about
// 30x slower than the int8 codec); a vector of values is summed over the rows in registers,
// each row's bits a lane mask picking its block's high or low level, and written once (one
// pass per row over the output moved three times the bytes). Rows are added in order to
// 0.0f, as in the reference; with `accumulate` that sum is then added to total.
void decompress_sum_sign(ChunkRows<uint8_t> packed, int64_t block, int64_t i0, int64_t i1, float* total,
                         bool accumulate) {
  const auto row = [&](int64_t r) { return packed.data + r * packed.data_stride; };
  const auto levels = [&](int64_t r, int64_t b) { return packed.scales + r * packed.scale_stride + 2 * b; };
  const auto one_value = [&](int64_t i, int64_t b) {
    float acc = 0.0f;
    for (int64_t r = 0; r < packed.rows; ++r) acc += levels(r, b)[(row(r)[i >> 3] >> (i & 7)) & 1u];
    total[i] = accumulate ? total[i] + acc : acc;
  };
  for (int64_t start = i0; start < i1;) {
    const int64_t b = start / block, end = std::min(i1, (b + 1) * block);
    int64_t i = start;
    for (; i < end && (i & 7) && S::kWidth > 1; ++i) one_value(i, b);  // to a byte boundary
    for (; i + S::kWidth <= end; i += S::kWidth) {
      typename S::F acc = S::set1(0.0f);
      for (int64_t r = 0; r < packed.rows; ++r) {
        const float* pair = levels(r, b);
        const typename S::B high = S::mask_from_bits(vector_bits(row(r), i));
        acc = S::add(acc, S::select(high, S::set1(pair[1]), S::set1(pair[0])));
      }
      store_sum(acc, total + i, S::kWidth, accumulate);
    }
    for (; i < end; ++i) one_value(i, b);
    start = end;
  }
}

// Pass 1 over a block: error[i] = x[i] + error[i] over [0, count); returns the sum of those
// values in double (8 lanes; exact whenever they span fewer than 53 - 24 - log2(count)
// binades, so its order does not matter), not finite iff the block holds Inf or NaN.
template <typename T>
double add_and_sum(const T* x, float* error, int64_t count) {
  constexpr int kLanes = 8;
  double lane_sum[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    float v[kLanes];
    for (int k = 0; k < kLanes; ++k) v[k] = error[i + k] + to_f32(x[i + k]);
    std::memcpy(error + i, v, sizeof(v));
#pragma omp simd  // independent lanes: GCC left these double adds scalar without it
    for (int k = 0; k < kLanes; ++k) lane_sum[k] += v[k];
  }
  double sum = 0.0;
  for (; i < count; ++i) {
    error[i] += to_f32(x[i]);
    sum += error[i];
  }
  for (int k = 0; k < kLanes; ++k) sum += lane_sum[k];
  return sum;
}

// Pass 2, in cache: the spread min(rms(d), kSignScaleCap * mean |d|) of d = v - mean (fp32
// differences, double sums; the squares' sum is rounded, so another order, the reference's,
// can differ in its last bit, which changes the float spread only on a rounding boundary).
float spread_about(const float* v, int64_t count, float mean) {
  constexpr int kLanes = 8;
  double magnitude[kLanes] = {}, square[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
#pragma omp simd
    for (int k = 0; k < kLanes; ++k) {
      const double d = v[i + k] - mean;
      magnitude[k] += std::fabs(d);
      square[k] += d * d;
    }
  }
  double magnitudes = 0.0, squares = 0.0;
  for (; i < count; ++i) {
    const double d = v[i] - mean;
    magnitudes += std::fabs(d);
    squares += d * d;
  }
  for (int k = 0; k < kLanes; ++k) {
    magnitudes += magnitude[k];
    squares += square[k];
  }
  const double n = static_cast<double>(count), rms = std::sqrt(squares / n), capped = kSignScaleCap * (magnitudes / n);
  return static_cast<float>(rms < capped ? rms : capped);
}

// Pass 3: the bits and residuals of values [start, end) of one block, in place (on entry
// error holds v = x + error): bit = v >= mean, error = v - (bit ? high : low), kEstimate:
// then minus x (x read again, from cache). Bits are ORed into bytes zeroed by the caller
// (with block % 8 != 0 a byte holds two blocks' bits).
template <bool kEstimate, typename T>
void sign_pack_block(const T* x, float mean, const float* levels, int64_t start, int64_t end, uint8_t* packed,
                     float* error) {
  const float low = levels[0], high = levels[1];
  int64_t i = start;
  if (start % 8 == 0) {  // whole vectors from a byte boundary, their bits stored at once
    const typename S::F mean_v = S::set1(mean), low_v = S::set1(low), high_v = S::set1(high);
    for (; i + S::kWidth <= end; i += S::kWidth) {
      const typename S::F v = S::load(error + i);
      const typename S::B above = S::ge(v, mean_v);
      const typename S::F residual = S::sub(v, S::select(above, high_v, low_v));
      S::store(error + i, kEstimate ? S::sub(residual, S::load(x + i)) : residual);
      const uint32_t bits = S::mask_bits(above);
      if constexpr (S::kWidth >= 8) {
        std::memcpy(packed + (i >> 3), &bits, S::kWidth / 8);  // little-endian: lane 0 -> bit 0 of byte 0
      } else {
        packed[i >> 3] = static_cast<uint8_t>(packed[i >> 3] | (bits << (i & 7)));
      }
    }
  }
  for (; i < end; ++i) {
    const bool above = error[i] >= mean;
    packed[i >> 3] = static_cast<uint8_t>(packed[i >> 3] | (static_cast<uint32_t>(above) << (i & 7)));
    error[i] -= above ? high : low;
    if constexpr (kEstimate) error[i] -= to_f32(x[i]);
  }
}

// One block, three passes (the second and third in cache): levels (low, high) = (mean -
// spread, mean + spread) in fp32 (see compress.h); a block holding Inf/NaN gets NaN levels,
// bits 0 (already zero) and a residual of 0 (kEstimate: -x).
template <bool kEstimate, typename T>
void ef_compress_sign_block(const T* x, float* error, int64_t start, int64_t end, uint8_t* packed, float* levels) {
  const int64_t count = end - start;
  const double sum = add_and_sum(x + start, error + start, count);
  if (!std::isfinite(sum)) {  // finite floats cannot overflow a double sum
    levels[0] = levels[1] = std::nanf("");
    clear_non_finite_block<kEstimate>(x + start, error + start, count);
    return;
  }
  const float mean = static_cast<float>(sum / static_cast<double>(count));
  const float spread = spread_about(error + start, count, mean);
  levels[0] = mean - spread;
  levels[1] = mean + spread;
  sign_pack_block<kEstimate>(x, mean, levels, start, end, packed, error);
}

template <bool kEstimate, typename T>
void ef_compress_sign_t(const T* x, float* error, int64_t n, int64_t block, int64_t b0, int64_t b1, uint8_t* packed,
                        float* levels) {
  const int64_t v0 = b0 * block, v1 = std::min(n, b1 * block);
  std::memset(packed + v0 / 8, 0, static_cast<size_t>((v1 + 7) / 8 - v0 / 8));
  for (int64_t b = b0; b < b1; ++b) {
    ef_compress_sign_block<kEstimate>(x, error, b * block, std::min(n, (b + 1) * block), packed, levels + 2 * b);
  }
}

void ef_compress_sign_blocks(DType dtype, const void* x, float* error, int64_t n, int64_t block, int64_t b0,
                             int64_t b1, uint8_t* packed, float* levels, bool estimate) {
  with_codec_types(dtype, x, estimate, [&](auto typed_x, auto kEstimate) {
    ef_compress_sign_t<decltype(kEstimate)::value>(typed_x, error, n, block, b0, b1, packed, levels);
  });
}

const CompressKernels kTable{ef_compress_int8_blocks, decompress_sum_int8, ef_compress_sign_blocks, decompress_sum_sign};
