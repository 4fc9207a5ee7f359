// The sign gradient codec, included by compress_{scalar,avx2,avx512}.cpp inside an ISA
// namespace after compress_impl.h: bits and residual over the SIMD layer `S`, the rest in
// plain C++ whose lane loops the compiler vectorizes for each copy's target (the arithmetic
// is the same in every copy: fp32 adds, double sums, no contraction). Its payload is 1 bit
// per value.

// kSigns.v[byte][k] = bit k of byte ? 1 : -1 (least significant bit first, as packed).
struct SignTable {
  float v[256][8];
  constexpr SignTable() : v() {
    for (int byte = 0; byte < 256; ++byte) {
      for (int k = 0; k < 8; ++k) v[byte][k] = (byte >> k) & 1 ? 1.0f : -1.0f;
    }
  }
};
constexpr SignTable kSigns{};

// Walks one block at a time (the rows' scales are hoisted) and finds bits by shifts (a
// division per value made it about 30x slower than the int8 codec); each output value is
// summed over the rows in registers and written once (one pass per row over the output
// moved three times the bytes). Rows are added in order to 0.0f, as in the reference.
void decompress_sum_sign(ChunkRows<uint8_t> packed, int64_t block, int64_t i0, int64_t i1, float* total) {
  const auto one_value = [&](int64_t i, int64_t b) {
    float acc = 0.0f;
    for (int64_t r = 0; r < packed.rows; ++r) {
      const float scale = packed.scales[r * packed.scale_stride + b];
      acc += (packed.data[r * packed.data_stride + (i >> 3)] >> (i & 7)) & 1u ? scale : -scale;
    }
    total[i] = acc;
  };
  for (int64_t start = i0; start < i1;) {
    const int64_t b = start / block, end = std::min(i1, (b + 1) * block);
    int64_t i = start;
    for (; i < end && (i & 7); ++i) one_value(i, b);
    for (; i + 8 <= end; i += 8) {  // whole bytes: eight signs from the table, exact products
      float acc[8] = {};
      for (int64_t r = 0; r < packed.rows; ++r) {
        const float* signs = kSigns.v[packed.data[r * packed.data_stride + (i >> 3)]];
        const float scale = packed.scales[r * packed.scale_stride + b];
        for (int k = 0; k < 8; ++k) acc[k] += signs[k] * scale;
      }
      std::memcpy(total + i, acc, sizeof(acc));
    }
    for (; i < end; ++i) one_value(i, b);
    start = end;
  }
}

// The bits and residual of values [0, n) once their blocks' scales are known, in place: on
// entry error holds v = x + error. error - (bit ? scale : -scale) equals the reference's
// v - (bit ? 1 : -1) * scale (the product is exact). A block holding Inf/NaN (NaN scale)
// gets bits 0 and a residual of 0.
void sign_pack_update(const float* scales, int64_t n, int64_t block, uint8_t* packed, float* error) {
  std::memset(packed, 0, static_cast<size_t>((n + 7) / 8));
  for (int64_t start = 0; start < n; start += block) {
    const int64_t end = std::min(n, start + block);
    const float scale = scales[start / block];
    if (std::isnan(scale)) {
      std::fill(error + start, error + end, 0.0f);
      continue;
    }
    int64_t i = start;
    if (block % 8 == 0) {  // then i is a multiple of 8: whole vectors, their bits stored at once
      const typename S::F plus_scale = S::set1(scale), minus_scale = S::set1(-scale), zero = S::set1(0.0f);
      for (; i + S::kWidth <= end; i += S::kWidth) {
        const typename S::F v = S::load(error + i);
        const typename S::B plus = S::ge(v, zero);
        S::store(error + i, S::sub(v, S::select(plus, plus_scale, minus_scale)));
        const uint32_t bits = S::mask_bits(plus);
        if constexpr (S::kWidth >= 8) {
          std::memcpy(packed + (i >> 3), &bits, S::kWidth / 8);  // little-endian: lane 0 -> bit 0 of byte 0
        } else {
          packed[i >> 3] = static_cast<uint8_t>(packed[i >> 3] | (bits << (i & 7)));
        }
      }
    }
    for (; i < end; ++i) {
      const bool plus = error[i] >= 0.0f;
      packed[i >> 3] = static_cast<uint8_t>(packed[i >> 3] | (static_cast<uint32_t>(plus) << (i & 7)));
      error[i] -= plus ? scale : -scale;
    }
  }
}

// error[i] = x[i] + error[i] over [0, count); returns the block's scale (see compress.h; NaN
// for a block holding Inf or NaN), with the sums taken in double over 8 lanes. A double
// holds the exact sum of a block's magnitudes whenever they span fewer than 53 - 24 -
// log2(count) binades (21 for blocks of 256), so that sum's order does not matter; the
// squares (48-bit products) are rounded, so another summation order (the reference's:
// torch's) can differ in the last bit of the double, which changes the float scale only
// when it falls on a rounding boundary.
template <typename T>
float add_then_scale(const T* x, float* error, int64_t count) {
  constexpr int kLanes = 8;
  double magnitude[kLanes] = {}, square[kLanes] = {};
  int64_t i = 0;
  for (; i + kLanes <= count; i += kLanes) {
    float v[kLanes];
    for (int k = 0; k < kLanes; ++k) v[k] = error[i + k] + to_f32(x[i + k]);
    std::memcpy(error + i, v, sizeof(v));
#pragma omp simd  // independent lanes: GCC left these double adds scalar without it
    for (int k = 0; k < kLanes; ++k) {
      const double d = v[k];
      magnitude[k] += std::fabs(d);
      square[k] += d * d;
    }
  }
  double magnitudes = 0.0, squares = 0.0;
  for (; i < count; ++i) {
    error[i] += to_f32(x[i]);
    const double v = error[i];
    magnitudes += std::fabs(v);
    squares += v * v;
  }
  for (int k = 0; k < kLanes; ++k) {
    magnitudes += magnitude[k];
    squares += square[k];
  }
  if (!std::isfinite(magnitudes)) return std::nanf("");  // Inf/NaN in v (finite floats cannot overflow it)
  const double n = static_cast<double>(count), rms = std::sqrt(squares / n), capped = kSignScaleCap * (magnitudes / n);
  return static_cast<float>(rms < capped ? rms : capped);
}

template <typename T>
void ef_compress_sign_t(const T* x, float* error, int64_t n, int64_t block, int64_t b0, int64_t b1, uint8_t* packed,
                        float* scales) {
  const int64_t v0 = b0 * block, v1 = std::min(n, b1 * block);
  for (int64_t b = b0; b < b1; ++b) {
    const int64_t start = b * block;
    scales[b] = add_then_scale(x + start, error + start, std::min(block, n - start));
  }
  sign_pack_update(scales + b0, v1 - v0, block, packed + v0 / 8, error + v0);
}

void ef_compress_sign_blocks(DType dtype, const void* x, float* error, int64_t n, int64_t block, int64_t b0,
                             int64_t b1, uint8_t* packed, float* scales) {
  switch (dtype) {
    case DType::kBF16:
      return ef_compress_sign_t(static_cast<const bf16*>(x), error, n, block, b0, b1, packed, scales);
    case DType::kF16:
      return ef_compress_sign_t(static_cast<const fp16*>(x), error, n, block, b0, b1, packed, scales);
    case DType::kF32:
      return ef_compress_sign_t(static_cast<const float*>(x), error, n, block, b0, b1, packed, scales);
  }
}

const CompressKernels kTable{ef_compress_int8_blocks, decompress_sum_int8, ef_compress_sign_blocks, decompress_sum_sign};
