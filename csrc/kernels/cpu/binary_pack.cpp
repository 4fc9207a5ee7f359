#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "binary_gemm.h"
#include "int8_gemm.h"

namespace effgen::cpu {
namespace {

// Bits come a byte at a time (8 weights, or the row's last 1-8), each byte written once:
// bit j of byte b is weight 8 b + j. The fixed 8-step loops of whole bytes compile to
// compares and shifts without a branch per weight.
template <typename Bit>
uint8_t byte_of(int64_t count, const Bit& bit_of) {
  uint8_t byte = 0;
  for (int64_t j = 0; j < count; ++j) byte = static_cast<uint8_t>(byte | (bit_of(j) ? 1u << j : 0u));
  return byte;
}

// f(b, count) for the bytes of a k-weight row: whole ones with count 8, then the short tail.
template <typename F>
void for_each_byte(int64_t k, const F& f) {
  const int64_t whole = k / 8;
  for (int64_t b = 0; b < whole; ++b) f(b, std::integral_constant<int64_t, 8>{});
  if (k % 8) f(whole, k % 8);
}

template <typename T>
void pack_signs_t(const T* x, int64_t rows, int64_t k, uint8_t* out) {
  const int64_t row_bytes = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = x + r * k;
    for_each_byte(k, [&](int64_t b, auto count) {
      out[r * row_bytes + b] = byte_of(count, [&](int64_t j) { return to_f32(row[8 * b + j]) >= 0.0f; });
    });
  }
}

// f(x as const T*) for the element type T that dtype names.
template <typename F>
auto with_element_type(DType dtype, const void* x, const F& f) {
  switch (dtype) {
    case DType::kBF16: return f(static_cast<const bf16*>(x));
    case DType::kF16: return f(static_cast<const fp16*>(x));
    case DType::kF32: break;
  }
  return f(static_cast<const float*>(x));
}

// Four double accumulators: independent adds, and a sum of at most 2^31 floats' magnitudes
// that is exact to far below fp32's resolution (the reference sums in double too).
template <typename T>
double abs_sum_t(const T* x, int64_t n) {
  double acc[4] = {0.0, 0.0, 0.0, 0.0};
  int64_t i = 0;
  for (; i + 4 <= n; i += 4) {
    for (int j = 0; j < 4; ++j) acc[j] += std::fabs(static_cast<double>(to_f32(x[i + j])));
  }
  for (; i < n; ++i) acc[0] += std::fabs(static_cast<double>(to_f32(x[i])));
  return (acc[0] + acc[1]) + (acc[2] + acc[3]);
}

// round(clamp(v, -1, 1)) rounds half to even, so +-0.5 go to 0: q = +1 above 0.5, -1 below
// -0.5. v = w / s is divided (not multiplied by 1 / s) to be the reference's quotient.
template <typename T>
void ternarize_rows_t(const T* w, int64_t rows, int64_t k, const float* scale, int64_t scale_stride, uint8_t* out) {
  const int64_t plane = packed_row_bytes(k);
  if (plane == 0) return;  // K = 0: nothing to write (and `out` may be null)
  for (int64_t r = 0; r < rows; ++r) {
    const T* row = w + r * k;
    uint8_t* positive = out + r * 2 * plane;
    const float s = scale[r * scale_stride];
    if (!(s > 0.0f)) {  // an all-zero row (or one whose mean rounds to 0): q = 0
      std::memset(positive, 0, static_cast<size_t>(2 * plane));
      continue;
    }
    for_each_byte(k, [&](int64_t b, auto count) {
      float v[8];
      for (int64_t j = 0; j < count; ++j) v[j] = to_f32(row[8 * b + j]) / s;
      positive[b] = byte_of(count, [&](int64_t j) { return v[j] > 0.5f; });
      positive[plane + b] = byte_of(count, [&](int64_t j) { return v[j] < -0.5f; });
    });
  }
}

// Bits [first, first + count) of a packed row of row_bytes bytes, bit `first` lowest
// (count <= 32: a window of at most 39 bits, one 8-byte little-endian load but at the end).
uint32_t bit_run(const uint8_t* row, int64_t row_bytes, int64_t first, int64_t count) {
  const int64_t byte = first / 8;
  uint64_t window = 0;
  if (byte + 8 <= row_bytes) {
    std::memcpy(&window, row + byte, 8);
  } else {
    for (int64_t b = byte; b < row_bytes; ++b) window |= uint64_t{row[b]} << (8 * (b - byte));
  }
  return static_cast<uint32_t>((window >> (first % 8)) & ((uint64_t{1} << count) - 1));
}

// A ternary lane: field 2i is the positive plane's group i, field 2i + 1 the negative one's
// (width a template argument: the loop unrolls into shifts and masks).
template <int kWidth>
uint32_t interleave_fields(uint32_t positive, uint32_t negative) {
  constexpr uint32_t kMask = (1u << kWidth) - 1;
  uint32_t lane = 0;
  for (int i = 0; 2 * (i + 1) * kWidth <= 32; ++i) {
    lane |= ((positive >> (kWidth * i)) & kMask) << (2 * i * kWidth);
    lane |= ((negative >> (kWidth * i)) & kMask) << ((2 * i + 1) * kWidth);
  }
  return lane;
}

uint32_t interleave_fields(uint32_t positive, uint32_t negative, int width) {
  return width == 3 ? interleave_fields<3>(positive, negative) : interleave_fields<4>(positive, negative);
}

uint32_t load_lane(const uint8_t* tile, int64_t lane) {
  uint32_t v;
  std::memcpy(&v, tile + lane * 4, 4);
  return v;
}

}  // namespace

void pack_signs(DType dtype, const void* x, int64_t rows, int64_t k, uint8_t* out) {
  with_element_type(dtype, x, [&](const auto* values) { pack_signs_t(values, rows, k, out); });
}

double abs_sum(DType dtype, const void* x, int64_t n) {
  return with_element_type(dtype, x, [&](const auto* values) { return abs_sum_t(values, n); });
}

void ternarize_rows(DType dtype, const void* w, int64_t rows, int64_t k, const float* scale, int64_t scale_stride,
                    uint8_t* out) {
  with_element_type(dtype, w, [&](const auto* values) { ternarize_rows_t(values, rows, k, scale, scale_stride, out); });
}

bool pack_ternary_rows(const int8_t* q, int64_t rows, int64_t k, uint8_t* out) {
  const int64_t plane = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    const int8_t* row = q + r * k;
    uint8_t* positive = out + r * 2 * plane;
    bool valid = true;
    for_each_byte(k, [&](int64_t b, auto count) {
      const int8_t* v = row + 8 * b;
      valid &= byte_of(count, [&](int64_t j) { return v[j] < -1 || v[j] > 1; }) == 0;
      positive[b] = byte_of(count, [&](int64_t j) { return v[j] == 1; });
      positive[plane + b] = byte_of(count, [&](int64_t j) { return v[j] == -1; });
    });
    if (!valid) return false;
  }
  return true;
}

void unpack_binary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out) {
  const int64_t row_bytes = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    for_each_byte(k, [&](int64_t b, auto count) {
      const unsigned byte = packed[r * row_bytes + b];
      for (int64_t j = 0; j < count; ++j) out[r * k + 8 * b + j] = static_cast<int8_t>(2 * ((byte >> j) & 1u) - 1);
    });
  }
}

void unpack_ternary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out) {
  const int64_t plane = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* positive = packed + r * 2 * plane;
    for_each_byte(k, [&](int64_t b, auto count) {
      const unsigned pos = positive[b], neg = positive[plane + b];
      for (int64_t j = 0; j < count; ++j) {
        out[r * k + 8 * b + j] = static_cast<int8_t>(int((pos >> j) & 1u) - int((neg >> j) & 1u));
      }
    });
  }
}

// Each lane is assembled in a register and stored once. Lane w of a row holds the row's
// inputs [w * lane_inputs, (w + 1) * lane_inputs): a binary lane is those bits as they come
// (one bit_run), a ternary lane alternates the two planes' fields (two bit_runs,
// interleaved). The rows past n in the last tile are zeros.
void tile_for_lut(LutLayout layout, const uint8_t* packed, int64_t n, int64_t k, int planes, uint8_t* tiles) {
  const int64_t plane = packed_row_bytes(k), words = layout.words(k, planes), tile_bytes = layout.tile_bytes(k, planes);
  const int64_t lane_inputs = layout.slots_per_lane() / planes * layout.width;  // <= 32
  const int64_t padded_rows = (n + kLutTileRows - 1) / kLutTileRows * kLutTileRows;
  if (tile_bytes == 0) return;  // K = 0: empty tiles (and `tiles` may be null)
  for (int64_t row = 0; row < padded_rows; ++row) {
    uint8_t* tile = tiles + row / kLutTileRows * tile_bytes;
    const uint8_t* bits = packed + row * planes * plane;
    for (int64_t w = 0; w < words; ++w) {
      uint32_t lane = 0;
      if (row < n) {
        const int64_t first = w * lane_inputs, count = std::min(lane_inputs, k - first);
        const uint32_t positive = bit_run(bits, plane, first, count);
        lane = planes == 1 ? positive
                           : interleave_fields(positive, bit_run(bits + plane, plane, first, count), layout.width);
      }
      std::memcpy(tile + (w * kLutTileRows + row % kLutTileRows) * 4, &lane, 4);
    }
  }
}

namespace {

// One activation row's lookups for weight row r of a tile over slots [s0, s1) (ternary: the
// negative plane's subtracted).
float lut_slot_run(LutLayout layout, const float* row_tables, const uint8_t* tile, int64_t r, int64_t s0, int64_t s1,
                   int planes) {
  const uint32_t field_mask = static_cast<uint32_t>(layout.entries() - 1);
  float acc = 0.0f;
  for (int64_t s = s0; s < s1; ++s) {
    const float* table = row_tables + LutLayout::slot_table(s, planes) * layout.entries();
    const float v = table[(load_lane(tile, layout.slot_lane(s, r)) >> layout.slot_shift(s)) & field_mask];
    acc += planes == 2 && s % 2 == 1 ? -v : v;
  }
  return acc;
}

}  // namespace

// One table lookup per weight field, plain C++.
void lut_sums_portable(LutLayout layout, const float* tables, int64_t m, int64_t k, const uint8_t* tiles,
                       int64_t t0, int64_t t1, int planes, float* sums, int64_t lds) {
  const int64_t slots = layout.slots_per_lane() * layout.words(k, planes), table_floats = layout.table_floats(k);
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = tiles + t * layout.tile_bytes(k, planes);
    for (int64_t i = 0; i < m; ++i) {
      const float* row_tables = tables + i * table_floats;
      for (int64_t r = 0; r < kLutTileRows; ++r) {
        sums[i * lds + t * kLutTileRows + r] = lut_slot_run(layout, row_tables, tile, r, 0, slots, planes);
      }
    }
  }
}

void lut_alpha_sums_portable(LutLayout layout, const float* tables, int64_t m, int64_t k, const uint8_t* tiles,
                             int64_t t0, int64_t t1, const LutAlphaGroups& a, float* out, int64_t lds) {
  const int64_t slots = layout.slots_per_lane() * layout.words(k, 1), table_floats = layout.table_floats(k);
  const int64_t group_slots = a.group / layout.width;
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = tiles + t * layout.tile_bytes(k, 1);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0, row = t * kLutTileRows; r < kLutTileRows; ++r, ++row) {
        float y = 0.0f;
        for (int64_t g = 0; row < a.n && g < a.groups; ++g) {
          const float plus = lut_slot_run(layout, tables + i * table_floats, tile, r, g * group_slots,
                                          std::min(slots, (g + 1) * group_slots), 1);
          y += a.alpha[row * a.groups + g] * (2.0f * plus - a.totals[i * a.groups + g]);
        }
        out[i * lds + row] = y;
      }
    }
  }
}

namespace {

#include "binary_lut_tables.h"

// Entry b of a group's table is the sum of xs[t] over the set bits t of b, added from the
// highest bit down starting at +0: each entry one add past the entry without its lowest
// bit, as the tables have always been built. Bits 0-1 go in last, so the table is its high
// bits' sums (one scalar chain) plus, over each run of 4 entries, the same two vectors of
// xs[1] / xs[0] or 0: adding +0 for a clear bit changes nothing, as no partial sum is -0
// (it starts at +0). The ISAs with vector permutes build the same tables a vector at a time
// (BinaryGemmKernels::build_tables).
template <int kWidth>
void build_group_table(const float* xs, float* table) {
  constexpr int kHigh = 1 << (kWidth - 2);
  float high[kHigh];
  high[0] = 0.0f;
  for (int q = 1; q < kHigh; ++q) high[q] = high[q & (q - 1)] + xs[2 + __builtin_ctz(static_cast<unsigned>(q))];
  const float bit1[4] = {0.0f, 0.0f, xs[1], xs[1]}, bit0[4] = {0.0f, xs[0], 0.0f, xs[0]};
  for (int q = 0; q < kHigh; ++q) {
    for (int r = 0; r < 4; ++r) table[4 * q + r] = (high[q] + bit1[r]) + bit0[r];
  }
}

}  // namespace

void build_lut_tables(LutLayout layout, const float* x, int64_t m, int64_t k, float* tables) {
  if (layout.width == kLutTriples.width) {
    return for_each_lut_group(layout, x, m, k, tables, [](const float* xs, float* t) { build_group_table<3>(xs, t); });
  }
  for_each_lut_group(layout, x, m, k, tables, [](const float* xs, float* t) { build_group_table<4>(xs, t); });
}

}  // namespace effgen::cpu
