// aarch64 NEON kernels of the binary_gemm family (binary_gemm.h): weight bytes expanded to
// 4-lane masks (vtst) for the masked adds, popcounts on vcnt, and the lookup-table product
// on byte lookups (vqtbl1q_u8) of the 16-entry tables of 4 weights, the layout of AVX-512
// and the portable kernels (kLutNibbles). NEON has no float permute: a table's 16 floats
// are loaded as 4 byte planes (vld4q_u8: plane p holds byte p of every entry), each plane
// is looked up for 16 weight rows at once, and the bytes are zipped back into 4 float
// vectors. Built for aarch64 only and chosen where the CPU has the dot product
// instructions (the NEON level, isa.cpp), like the other families' NEON kernels.
#include <arm_neon.h>

#include <algorithm>
#include <cstring>
#include <iterator>

#include "binary_gemm.h"

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")

namespace effgen::cpu {
namespace neon_binary {
namespace {

#include "simd_neon.h"

constexpr int kMaskedM = 4, kMaskedN = 4;  // 16 accumulators + 8 x + 2 masks of 32 registers
constexpr int kPopM = 2, kPopN = 4;

// Weight bits t of a byte (input t, least significant first) as lane masks: inputs 0-3 in
// `low`, 4-7 in `high`.
struct ByteLanes {
  uint32x4_t low, high;
};

inline ByteLanes lanes_of_byte(uint8_t byte) {
  static constexpr uint32_t kLow[4] = {1, 2, 4, 8}, kHigh[4] = {16, 32, 64, 128};
  const uint32x4_t all = vdupq_n_u32(byte);
  return {vtstq_u32(all, vld1q_u32(kLow)), vtstq_u32(all, vld1q_u32(kHigh))};
}

inline float32x4_t masked(uint32x4_t mask, float32x4_t v) {
  return vreinterpretq_f32_u32(vandq_u32(mask, vreinterpretq_u32_f32(v)));
}

// Inputs [kk, kk + 8) of a row as two fp32 vectors, zeros past `end` (a row's last
// elements: their weight bits are 0 or hold no weight, and nothing past the row is read).
template <typename T>
inline void load_eight(const T* row, int64_t kk, int64_t end, float32x4_t& low, float32x4_t& high) {
  if (end - kk >= 8) {
    low = S::load(row + kk);
    high = S::load(row + kk + 4);
    return;
  }
  T buf[8] = {};
  std::memcpy(buf, row + kk, static_cast<size_t>(end - kk) * sizeof(T));
  low = S::load(buf);
  high = S::load(buf + 4);
}

template <typename T, int MR, int NR>
void masked_tile(const MaskedArgs<T>& p, int64_t i0, int64_t j0) {
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t k0 = g * p.group, k1 = std::min(k0 + p.group, p.k);
    float32x4_t acc[MR][NR];
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) acc[i][j] = vdupq_n_f32(0.0f);
    }
    for (int64_t kk = k0; kk < k1; kk += 8) {  // groups start at multiples of 16: whole bytes
      float32x4_t low[MR], high[MR];
      for (int i = 0; i < MR; ++i) load_eight(p.x + (i0 + i) * p.ldx, kk, k1, low[i], high[i]);
      for (int j = 0; j < NR; ++j) {
        const ByteLanes mask = lanes_of_byte(p.bits[(j0 + j) * p.ldb + kk / 8]);
        for (int i = 0; i < MR; ++i) {
          acc[i][j] = vaddq_f32(acc[i][j], masked(mask.low, low[i]));
          acc[i][j] = vaddq_f32(acc[i][j], masked(mask.high, high[i]));
        }
      }
    }
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) p.sums[(i0 + i) * p.lds + (j0 + j) * p.groups + g] = vaddvq_f32(acc[i][j]);
    }
  }
}

// Popcounts of 16-byte XORs: vcnt gives each byte's count (at most 8), summed per byte for
// up to kCountSteps steps (31 x 8 = 248 fits a byte) before widening into 32-bit lanes.
constexpr int kCountSteps = 31;

template <int MR, int NR>
void popcount_tile(const PopcountArgs& p, int64_t i0, int64_t j0) {
  uint32x4_t total[MR][NR];
  uint8x16_t counts[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) total[i][j] = vdupq_n_u32(0), counts[i][j] = vdupq_n_u8(0);
  }
  auto widen = [&] {
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) {
        total[i][j] = vpadalq_u16(total[i][j], vpaddlq_u8(counts[i][j]));
        counts[i][j] = vdupq_n_u8(0);
      }
    }
  };
  auto step = [&](const uint8_t* const* a, const uint8_t* const* b) {
    uint8x16_t bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = vld1q_u8(b[j]);
    for (int i = 0; i < MR; ++i) {
      const uint8x16_t av = vld1q_u8(a[i]);
      for (int j = 0; j < NR; ++j) counts[i][j] = vaddq_u8(counts[i][j], vcntq_u8(veorq_u8(av, bv[j])));
    }
  };
  const uint8_t* a[MR];
  const uint8_t* b[NR];
  int64_t byte = 0;
  for (int steps = 0; byte + 16 <= p.nbytes; byte += 16) {
    for (int i = 0; i < MR; ++i) a[i] = p.a + (i0 + i) * p.lda + byte;
    for (int j = 0; j < NR; ++j) b[j] = p.b + (j0 + j) * p.ldb + byte;
    step(a, b);
    if (++steps == kCountSteps) widen(), steps = 0;
  }
  if (byte < p.nbytes) {  // zero padding xors to zero
    uint8_t a_tail[MR][16] = {}, b_tail[NR][16] = {};
    for (int i = 0; i < MR; ++i) {
      std::memcpy(a_tail[i], p.a + (i0 + i) * p.lda + byte, static_cast<size_t>(p.nbytes - byte));
      a[i] = a_tail[i];
    }
    for (int j = 0; j < NR; ++j) {
      std::memcpy(b_tail[j], p.b + (j0 + j) * p.ldb + byte, static_cast<size_t>(p.nbytes - byte));
      b[j] = b_tail[j];
    }
    step(a, b);
  }
  widen();
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) p.c[(i0 + i) * p.ldc + j0 + j] = static_cast<int32_t>(vaddvq_u32(total[i][j]));
  }
}

// +1 / -1 (binary) or positive bit - negative bit (ternary), as the scalar kernel writes them.
void expand_row(const uint8_t* bits, const uint8_t* negative, int64_t k, float* out) {
  const float32x4_t one = vdupq_n_f32(1.0f), minus_one = vdupq_n_f32(-1.0f);
  for (int64_t i = 0; i < k; i += 8) {
    const ByteLanes plus = lanes_of_byte(bits[i / 8]);
    float32x4_t v[2];
    if (negative == nullptr) {
      v[0] = vbslq_f32(plus.low, one, minus_one);
      v[1] = vbslq_f32(plus.high, one, minus_one);
    } else {
      const ByteLanes minus = lanes_of_byte(negative[i / 8]);
      v[0] = vsubq_f32(masked(plus.low, one), masked(minus.low, one));
      v[1] = vsubq_f32(masked(plus.high, one), masked(minus.high, one));
    }
    if (k - i >= 8) {
      vst1q_f32(out + i, v[0]);
      vst1q_f32(out + i + 4, v[1]);
    } else {
      float tail[8];
      vst1q_f32(tail, v[0]);
      vst1q_f32(tail + 4, v[1]);
      std::memcpy(out + i, tail, static_cast<size_t>(k - i) * sizeof(float));
    }
  }
}

constexpr LutLayout kLutLayout = kLutNibbles;
constexpr LutLayout kLutAlphaLayout = kLutLayout;
constexpr int64_t kLutEntries = kLutLayout.entries();
// Tiles looked up per pass: each table's planes, loaded once, serve both (8 accumulators,
// 4 planes, 8 index vectors and the lookups' temporaries in 32 registers).
constexpr int kPassTiles = 2;

void build_tables(const float* x, int64_t m, int64_t k, float* tables) {
  build_lut_tables(kLutLayout, x, m, k, tables);
}

constexpr auto build_alpha_tables = build_tables;  // kLutAlphaLayout is kLutLayout

// A group's table as 4 byte planes: plane p holds byte p (little endian) of entries 0-15.
inline uint8x16x4_t table_planes(const float* row_tables, int64_t group) {
  return vld4q_u8(reinterpret_cast<const uint8_t*>(row_tables + group * kLutEntries));
}

// The entries of 16 weight rows, fields[r] the index of row r, as 4 float vectors (rows
// 4q to 4q + 3 in vector q): each plane looked up, then the 4 bytes of each entry zipped
// back together (bytes 0-1 and 2-3 of rows 0-7 / 8-15 first, then those pairs).
inline void look_up(const uint8x16x4_t& planes, uint8x16_t fields, float32x4_t (&out)[4]) {
  const uint8x16_t b0 = vqtbl1q_u8(planes.val[0], fields), b1 = vqtbl1q_u8(planes.val[1], fields);
  const uint8x16_t b2 = vqtbl1q_u8(planes.val[2], fields), b3 = vqtbl1q_u8(planes.val[3], fields);
  const uint16x8_t low01 = vreinterpretq_u16_u8(vzip1q_u8(b0, b1)), high01 = vreinterpretq_u16_u8(vzip2q_u8(b0, b1));
  const uint16x8_t low23 = vreinterpretq_u16_u8(vzip1q_u8(b2, b3)), high23 = vreinterpretq_u16_u8(vzip2q_u8(b2, b3));
  out[0] = vreinterpretq_f32_u16(vzip1q_u16(low01, low23));
  out[1] = vreinterpretq_f32_u16(vzip2q_u16(low01, low23));
  out[2] = vreinterpretq_f32_u16(vzip1q_u16(high01, high23));
  out[3] = vreinterpretq_f32_u16(vzip2q_u16(high01, high23));
}

template <bool kSubtract>
inline void accumulate(const uint8x16x4_t& planes, uint8x16_t fields, float32x4_t (&acc)[4]) {
  float32x4_t entries[4];
  look_up(planes, fields, entries);
  for (int q = 0; q < 4; ++q) acc[q] = kSubtract ? vsubq_f32(acc[q], entries[q]) : vaddq_f32(acc[q], entries[q]);
}

// One activation row's lookups over words [w0, w1) of NT tiles, added to acc[tile]. vld4q_u8
// of a word gives byte b of its 16 lanes, i.e. of the 16 rows, in register b: slot 8w + 2b
// in the low nibbles, 8w + 2b + 1 in the high ones. Binary slots are groups; ternary ones
// are a group's positive (low) and negative (high) fields, so both read one table. Slots go
// in order, as lut_sums_portable adds them.
template <int kPlanes, int NT>
void look_up_words(const float* row_tables, const uint8_t* const (&tiles)[NT], int64_t w0, int64_t w1,
                   float32x4_t (&acc)[NT][4]) {
  const uint8x16_t nibble = vdupq_n_u8(0x0F);
  for (int64_t w = w0; w < w1; ++w) {
    uint8x16x4_t words[NT];
    for (int t = 0; t < NT; ++t) words[t] = vld4q_u8(tiles[t] + w * kLutWordBytes);
    for (int b = 0; b < 4; ++b) {
      if constexpr (kPlanes == 1) {
        const uint8x16x4_t low_table = table_planes(row_tables, 8 * w + 2 * b);
        for (int t = 0; t < NT; ++t) accumulate<false>(low_table, vandq_u8(words[t].val[b], nibble), acc[t]);
        const uint8x16x4_t high_table = table_planes(row_tables, 8 * w + 2 * b + 1);
        for (int t = 0; t < NT; ++t) accumulate<false>(high_table, vshrq_n_u8(words[t].val[b], 4), acc[t]);
      } else {
        const uint8x16x4_t table = table_planes(row_tables, 4 * w + b);
        for (int t = 0; t < NT; ++t) {
          accumulate<false>(table, vandq_u8(words[t].val[b], nibble), acc[t]);
          accumulate<true>(table, vshrq_n_u8(words[t].val[b], 4), acc[t]);
        }
      }
    }
  }
}

// Calls pass(t, const uint8_t* const (&tiles)[NT]) for tiles [t0, t1), kPassTiles at a time
// and the last one alone.
template <typename Pass>
void for_tile_passes(const uint8_t* tiles, int64_t tile_bytes, int64_t t0, int64_t t1, Pass&& pass) {
  int64_t t = t0;
  for (; t + kPassTiles <= t1; t += kPassTiles) {
    const uint8_t* const pair[kPassTiles] = {tiles + t * tile_bytes, tiles + (t + 1) * tile_bytes};
    pass(t, pair);
  }
  if (t < t1) {
    const uint8_t* const one[1] = {tiles + t * tile_bytes};
    pass(t, one);
  }
}

template <int kPlanes>
void lut_sums_t(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, float* sums,
                int64_t lds) {
  const int64_t words = kLutLayout.words(k, kPlanes), table_floats = kLutLayout.table_floats(k);
  for_tile_passes(tiles, kLutLayout.tile_bytes(k, kPlanes), t0, t1, [&]<int NT>(int64_t t, const uint8_t* const (&pass_tiles)[NT]) {
    for (int64_t i = 0; i < m; ++i) {
      float32x4_t acc[NT][4];
      for (auto& tile_acc : acc) std::fill(std::begin(tile_acc), std::end(tile_acc), vdupq_n_f32(0.0f));
      look_up_words<kPlanes>(tables + i * table_floats, pass_tiles, 0, words, acc);
      for (int u = 0; u < NT; ++u) {
        for (int q = 0; q < 4; ++q) vst1q_f32(sums + i * lds + (t + u) * kLutTileRows + 4 * q, acc[u][q]);
      }
    }
  });
}

void lut_sums(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, int planes,
              float* sums, int64_t lds) {
  if (planes == 2) return lut_sums_t<2>(tables, m, k, tiles, t0, t1, sums, lds);
  lut_sums_t<1>(tables, m, k, tiles, t0, t1, sums, lds);
}

// lut_sums of binary weights with each group's sums scaled as the group ends: groups are
// whole words (32 inputs a lane), so y += alpha * (2 * plus - total) once per group and row,
// as lut_alpha_sums_portable computes it. Rows past n get 0.
void lut_alpha_sums(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                    const LutAlphaGroups& a, float* out, int64_t lds) {
  const int64_t words = kLutLayout.words(k, 1), table_floats = kLutLayout.table_floats(k);
  const int64_t group_words = a.group / kLutLayout.lane_inputs(1);
  const float32x4_t two = vdupq_n_f32(2.0f);
  for_tile_passes(tiles, kLutLayout.tile_bytes(k, 1), t0, t1, [&]<int NT>(int64_t t, const uint8_t* const (&pass_tiles)[NT]) {
    for (int64_t i = 0; i < m; ++i) {
      float32x4_t y[NT][4];
      for (auto& tile_y : y) std::fill(std::begin(tile_y), std::end(tile_y), vdupq_n_f32(0.0f));
      for (int64_t g = 0; g < a.groups; ++g) {
        float32x4_t plus[NT][4];
        for (auto& tile_plus : plus) std::fill(std::begin(tile_plus), std::end(tile_plus), vdupq_n_f32(0.0f));
        look_up_words<1>(tables + i * table_floats, pass_tiles, g * group_words, std::min(words, (g + 1) * group_words), plus);
        const float32x4_t total = vdupq_n_f32(a.totals[i * a.groups + g]);
        for (int u = 0; u < NT; ++u) {
          float alpha[kLutTileRows];
          for (int64_t r = 0, row = (t + u) * kLutTileRows; r < kLutTileRows; ++r, ++row) {
            alpha[r] = row < a.n ? a.alpha[row * a.groups + g] : 0.0f;
          }
          for (int q = 0; q < 4; ++q) {
            const float32x4_t centered = vsubq_f32(vmulq_f32(two, plus[u][q]), total);
            y[u][q] = vaddq_f32(y[u][q], vmulq_f32(vld1q_f32(alpha + 4 * q), centered));
          }
        }
      }
      for (int u = 0; u < NT; ++u) {
        float* row_out = out + i * lds + (t + u) * kLutTileRows;
        for (int q = 0; q < 4; ++q) vst1q_f32(row_out + 4 * q, y[u][q]);
        for (int64_t r = std::max<int64_t>(0, a.n - (t + u) * kLutTileRows); r < kLutTileRows; ++r) row_out[r] = 0.0f;
      }
    }
  });
}

constexpr std::nullptr_t lut_tiles_to_int8 = nullptr;  // batches stay on the lookup tables here

#include "binary_gemm_impl.h"

}  // namespace
}  // namespace neon_binary

const BinaryGemmKernels& binary_gemm_kernels_neon() { return neon_binary::kBinaryTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
