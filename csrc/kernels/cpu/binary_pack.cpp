#include <algorithm>
#include <cstring>

#include "binary_gemm.h"

namespace effgen::cpu {
namespace {

template <typename T>
void pack_signs_t(const T* x, int64_t rows, int64_t k, uint8_t* out) {
  const int64_t row_bytes = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* dst = out + r * row_bytes;
    std::memset(dst, 0, static_cast<size_t>(row_bytes));
    for (int64_t i = 0; i < k; ++i) {
      if (to_f32(x[r * k + i]) >= 0.0f) dst[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    }
  }
}

bool bit(const uint8_t* row, int64_t i) { return (row[i / 8] >> (i % 8)) & 1u; }

// Bits [first, first + count) of a packed row, bit `first` lowest.
uint32_t bit_field(const uint8_t* row, int64_t first, int count) {
  uint32_t field = 0;
  for (int t = 0; t < count; ++t) field |= static_cast<uint32_t>(bit(row, first + t)) << t;
  return field;
}

uint32_t load_lane(const uint8_t* tile, int64_t lane) {
  uint32_t v;
  std::memcpy(&v, tile + lane * 4, 4);
  return v;
}

}  // namespace

void pack_signs(DType dtype, const void* x, int64_t rows, int64_t k, uint8_t* out) {
  switch (dtype) {
    case DType::kBF16: return pack_signs_t(static_cast<const bf16*>(x), rows, k, out);
    case DType::kF16: return pack_signs_t(static_cast<const fp16*>(x), rows, k, out);
    case DType::kF32: return pack_signs_t(static_cast<const float*>(x), rows, k, out);
  }
}

bool pack_ternary_rows(const int8_t* q, int64_t rows, int64_t k, uint8_t* out) {
  const int64_t plane = packed_row_bytes(k);
  std::memset(out, 0, static_cast<size_t>(rows * 2 * plane));
  for (int64_t r = 0; r < rows; ++r) {
    uint8_t* positive = out + r * 2 * plane;
    uint8_t* negative = positive + plane;
    for (int64_t i = 0; i < k; ++i) {
      const int8_t v = q[r * k + i];
      if (v < -1 || v > 1) return false;
      if (v == 0) continue;
      // (A named pointer, not `(v > 0 ? positive : negative)[i / 8] |= ...`: GCC 12 with
      // -fsanitize=shift miscompiled that form into wrong bits and a crash.)
      uint8_t* plane_bits = v > 0 ? positive : negative;
      plane_bits[i / 8] |= static_cast<uint8_t>(1u << (i % 8));
    }
  }
  return true;
}

void unpack_binary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out) {
  const int64_t row_bytes = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t i = 0; i < k; ++i) out[r * k + i] = bit(packed + r * row_bytes, i) ? 1 : -1;
  }
}

void unpack_ternary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out) {
  const int64_t plane = packed_row_bytes(k);
  for (int64_t r = 0; r < rows; ++r) {
    const uint8_t* positive = packed + r * 2 * plane;
    for (int64_t i = 0; i < k; ++i) {
      out[r * k + i] = static_cast<int8_t>(int{bit(positive, i)} - int{bit(positive + plane, i)});
    }
  }
}

void tile_for_lut(LutLayout layout, const uint8_t* packed, int64_t n, int64_t k, int planes, uint8_t* tiles) {
  const int64_t plane = packed_row_bytes(k), groups = layout.groups(k), tile_bytes = layout.tile_bytes(k, planes);
  std::memset(tiles, 0, static_cast<size_t>((n + kLutTileRows - 1) / kLutTileRows * tile_bytes));
  for (int64_t row = 0; row < n; ++row) {
    uint8_t* tile = tiles + row / kLutTileRows * tile_bytes;
    for (int p = 0; p < planes; ++p) {
      const uint8_t* bits = packed + row * planes * plane + p * plane;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t slot = g * planes + p, lane = layout.slot_lane(slot, row % kLutTileRows);
        const int width = static_cast<int>(std::min<int64_t>(layout.width, k - g * layout.width));
        const uint32_t v = load_lane(tile, lane) | bit_field(bits, g * layout.width, width) << layout.slot_shift(slot);
        std::memcpy(tile + lane * 4, &v, 4);
      }
    }
  }
}

// One table lookup per weight field, plain C++.
void lut_sums_portable(LutLayout layout, const float* tables, int64_t m, int64_t k, const uint8_t* tiles,
                       int64_t t0, int64_t t1, int planes, float* sums, int64_t lds) {
  const int64_t slots = layout.slots_per_lane() * layout.words(k, planes), table_floats = layout.table_floats(k);
  const uint32_t field_mask = static_cast<uint32_t>(layout.entries() - 1);
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = tiles + t * layout.tile_bytes(k, planes);
    for (int64_t i = 0; i < m; ++i) {
      for (int64_t r = 0; r < kLutTileRows; ++r) {
        float acc = 0.0f;
        for (int64_t s = 0; s < slots; ++s) {
          const float* table = tables + i * table_floats + LutLayout::slot_table(s, planes) * layout.entries();
          const float v = table[(load_lane(tile, layout.slot_lane(s, r)) >> layout.slot_shift(s)) & field_mask];
          acc += planes == 2 && s % 2 == 1 ? -v : v;
        }
        sums[i * lds + t * kLutTileRows + r] = acc;
      }
    }
  }
}

void build_lut_tables(LutLayout layout, const float* x, int64_t m, int64_t k, float* tables) {
  const int64_t groups = layout.table_groups(k), entries = layout.entries();
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t g = 0; g < groups; ++g) {
      float* table = tables + (i * groups + g) * entries;
      table[0] = 0.0f;
      for (int b = 1; b < entries; ++b) {
        const int low = __builtin_ctz(static_cast<unsigned>(b));  // b = (b with its lowest bit cleared) + that bit
        const int64_t col = layout.width * g + low;
        table[b] = table[b & (b - 1)] + (col < k ? x[i * k + col] : 0.0f);
      }
    }
  }
}

}  // namespace effgen::cpu
