// AVX2 binary kernels: each weight byte is expanded to an 8-lane mask (and + compare with
// the lane's bit), popcounts use the 4-bit lookup table of vpshufb, and the lookup-table
// product looks up groups of 3 weights in 8-entry tables, one vpermps each (with per-group
// alphas 4 weights in 16-entry tables, two vpermps and a blend).
#include <immintrin.h>

#include <cstring>
#include <utility>
#include <vector>

#include "binary_gemm.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace effgen::cpu {
namespace avx2_binary {
namespace {

#include "simd_avx2.h"

constexpr int kMaskedM = 2, kMaskedN = 4;  // 8 accumulators + 2 x + 4 masks of 16 ymm
constexpr int kPopM = 2, kPopN = 4;
constexpr int64_t kPopPrefetchBytes = 2048;  // see binary_gemm_avx512.cpp

inline __m256 lanes_of_byte(uint8_t byte) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_castsi256_ps(_mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(byte), bit), bit));
}

template <typename T, int MR, int NR>
void masked_tile(const MaskedArgs<T>& p, int64_t i0, int64_t j0) {
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t k0 = g * p.group, k1 = k0 + p.group < p.k ? k0 + p.group : p.k;
    __m256 acc[MR][NR];
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_ps();
    }
    for (int64_t kk = k0; kk < k1; kk += 8) {
      __m256 xv[MR];
      for (int i = 0; i < MR; ++i) {
        const T* row = p.x + (i0 + i) * p.ldx + kk;
        if (k1 - kk >= 8) {
          xv[i] = S::load(row);
        } else {  // the row's last elements: zero-padded, and their bits are 0 anyway
          T buf[8] = {};
          std::memcpy(buf, row, static_cast<size_t>(k1 - kk) * sizeof(T));
          xv[i] = S::load(buf);
        }
      }
      for (int j = 0; j < NR; ++j) {
        const __m256 mask = lanes_of_byte(p.bits[(j0 + j) * p.ldb + kk / 8]);
        for (int i = 0; i < MR; ++i) acc[i][j] = _mm256_add_ps(acc[i][j], _mm256_and_ps(mask, xv[i]));
      }
    }
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) p.sums[(i0 + i) * p.lds + (j0 + j) * p.groups + g] = S::hsum(acc[i][j]);
    }
  }
}

inline __m256i popcount_bytes(__m256i v) {
  const __m256i table = _mm256_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4, 0, 1, 1, 2, 1, 2, 2, 3, 1, 2,
                                         2, 3, 2, 3, 3, 4);
  const __m256i low = _mm256_set1_epi8(0x0F);
  const __m256i lo = _mm256_shuffle_epi8(table, _mm256_and_si256(v, low));
  const __m256i hi = _mm256_shuffle_epi8(table, _mm256_and_si256(_mm256_srli_epi16(v, 4), low));
  return _mm256_sad_epu8(_mm256_add_epi8(lo, hi), _mm256_setzero_si256());  // 4 x u64 sums
}

template <int MR, int NR>
void popcount_tile(const PopcountArgs& p, int64_t i0, int64_t j0) {
  __m256i acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
  }
  auto step = [&](const uint8_t* const* a, const uint8_t* const* b) {
    __m256i bv[NR];
    for (int j = 0; j < NR; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(b[j]) + kPopPrefetchBytes, _MM_HINT_T0);
      bv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[j]));
    }
    for (int i = 0; i < MR; ++i) {
      const __m256i av = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(a[i]));
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_add_epi64(acc[i][j], popcount_bytes(_mm256_xor_si256(av, bv[j])));
    }
  };
  int64_t byte = 0;
  const uint8_t* a[MR];
  const uint8_t* b[NR];
  for (; byte + 32 <= p.nbytes; byte += 32) {
    for (int i = 0; i < MR; ++i) a[i] = p.a + (i0 + i) * p.lda + byte;
    for (int j = 0; j < NR; ++j) b[j] = p.b + (j0 + j) * p.ldb + byte;
    step(a, b);
  }
  if (byte < p.nbytes) {  // zero padding xors to zero
    uint8_t a_tail[MR][32] = {}, b_tail[NR][32] = {};
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
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      alignas(32) uint64_t lanes[4];
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), acc[i][j]);
      p.c[(i0 + i) * p.ldc + j0 + j] = static_cast<int32_t>(lanes[0] + lanes[1] + lanes[2] + lanes[3]);
    }
  }
}

void expand_row(const uint8_t* bits, const uint8_t* negative, int64_t k, float* out) {
  const __m256 one = _mm256_set1_ps(1.0f), minus_one = _mm256_set1_ps(-1.0f), zero = _mm256_setzero_ps();
  for (int64_t i = 0; i < k; i += 8) {
    const __m256 plus = lanes_of_byte(bits[i / 8]);
    const __m256 v = negative == nullptr ? _mm256_blendv_ps(minus_one, one, plus)
                                         : _mm256_blendv_ps(_mm256_blendv_ps(zero, minus_one, lanes_of_byte(negative[i / 8])),
                                                            one, plus);
    if (k - i >= 8) {
      _mm256_storeu_ps(out + i, v);
    } else {
      float tail[8];
      _mm256_storeu_ps(tail, v);
      std::memcpy(out + i, tail, static_cast<size_t>(k - i) * sizeof(float));
    }
  }
}

// Groups of 3 weights (8-entry tables): for fewer activation rows than lanes pay for
// (lanes_pay, below), one vpermps looks up 3 weights of 8 weight rows for one activation
// row: a shift, a permute and an add, where 16-entry tables (4 weights) took two shifts, two
// permutes, a blend and an add (1.5-1.75x faster at one or two rows, the decode case). At 3-4
// rows the permutes (one a cycle) bound it: 15-30% slower than 16-entry tables looked up as
// their lower half plus a blend (4 weights a permute). From there lanes hold activation rows
// (below).
constexpr LutLayout kLutLayout = kLutTriples;
constexpr int kLutSlots = static_cast<int>(kLutLayout.slots_per_lane());
constexpr int kLutEntries = static_cast<int>(kLutLayout.entries());

// Tables are 32 bytes per group of 3 inputs and row, so the tables of a whole row (K = 4096:
// 44 KB) do not stay in L1 while the tiles sweep them: chunks of words whose tables take
// about half of L1 go over every tile before the next chunk (1.1x measured at M = 8,
// K = 4096 with 16-entry tables; nothing at M = 1, where the lookups' arithmetic bounds it).
constexpr int64_t kLutChunkTableBytes = 16 * 1024;

// A table loaded for vpermps, kept out of its memory operand: GCC folds the load into the
// permute, and on Zen 3 (the AVX2 VM) that form costs 2.4-3 cycles a lookup in a loop of
// independent lookups against 1.1-1.6 for a load and a register permute (64-byte aligned
// tables or not). 4096 x 4096 on one thread, medians of 5 interleaved runs: binary 1.9x
// faster at M = 1, 1.8x at M = 2, 1.3x at M = 4, level at M = 3; ternary level at M = 1-2
// (there the shift and permute pairs, about 1.5 cycles each, bound it) and 1.3x at M = 4.
inline __m256 table_in_register(const float* table) {
  __m256 v = _mm256_loadu_ps(table);
  __asm__("" : "+x"(v));  // an opaque use: the compiler must materialize v in a register
  return v;
}

// The tile's 16 rows are two halves of 8 uint32 lanes (bytes 0-31 and 32-63 of each word);
// kHalves of them from `first` on go through one pass, with M x kHalves accumulators. Per
// word: one load per half; slot j's indices are the word shifted right by 3j (vpermps reads
// only bits 0-2). Slots go in pairs, summed before they join the accumulator (ternary: the
// positive minus the negative slot), which halves the accumulator's dependency chain with
// one accumulator per row and half.
template <int M, int kPlanes, int kHalves>
void lut_tiles_half(const float* tables, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, int first,
                    float* sums, int64_t lds) {
  constexpr int64_t kTableBytesPerWord = kLutSlots / kPlanes * kLutEntries * sizeof(float) * M;
  constexpr int64_t kChunkWords = kLutChunkTableBytes / kTableBytesPerWord;
  static_assert(kChunkWords > 0, "a chunk must hold one word's tables (kLutMaxM rows)");
  static_assert(kLutSlots % 2 == 0, "slots go in pairs");
  const int64_t words = kLutLayout.words(k, kPlanes), table_stride = kLutLayout.table_floats(k);
  const int64_t tile_bytes = words * kLutWordBytes;
  for (int64_t w0 = 0; w0 < words; w0 += kChunkWords) {
    const int64_t w1 = words - w0 < kChunkWords ? words : w0 + kChunkWords;
    for (int64_t t = t0; t < t1; ++t) {
      const uint8_t* tile = tiles + t * tile_bytes;
      float* tile_sums = sums + t * kLutTileRows + first * 8;
      __m256 acc[M][kHalves];
      for (int i = 0; i < M; ++i) {
        for (int h = 0; h < kHalves; ++h) {
          acc[i][h] = w0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(tile_sums + i * lds + h * 8);
        }
      }
      for (int64_t w = w0; w < w1; ++w) {
        const uint8_t* word = tile + w * kLutWordBytes;
        // The next tile's chunk, a stride away: the hardware prefetcher's stream ends with the chunk.
        _mm_prefetch(reinterpret_cast<const char*>(word) + tile_bytes, _MM_HINT_T0);
        __m256i fields[kHalves];
        for (int h = 0; h < kHalves; ++h) {
          fields[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(word + (first + h) * 32));
        }
        const float* word_tables = tables + LutLayout::slot_table(kLutSlots * w, kPlanes) * kLutEntries;
#pragma GCC unroll 5
        for (int j = 0; j < kLutSlots; j += 2) {
          const float* even_table = word_tables + j / kPlanes * kLutEntries;
          const float* odd_table = word_tables + (j + 1) / kPlanes * kLutEntries;
          __m256 even_tables[M], odd_tables[M];  // ternary: one table, its positive and negative slot
          for (int i = 0; i < M; ++i) {
            even_tables[i] = table_in_register(even_table + i * table_stride);
            odd_tables[i] = kPlanes == 2 ? even_tables[i] : table_in_register(odd_table + i * table_stride);
          }
          for (int h = 0; h < kHalves; ++h) {
            const __m256i even_idx = _mm256_srli_epi32(fields[h], 3 * j);
            const __m256i odd_idx = _mm256_srli_epi32(fields[h], 3 * j + 3);
            for (int i = 0; i < M; ++i) {
              const __m256 even = _mm256_permutevar8x32_ps(even_tables[i], even_idx);
              const __m256 odd = _mm256_permutevar8x32_ps(odd_tables[i], odd_idx);
              acc[i][h] = _mm256_add_ps(acc[i][h], kPlanes == 2 ? _mm256_sub_ps(even, odd) : _mm256_add_ps(even, odd));
            }
          }
        }
      }
      for (int i = 0; i < M; ++i) {
        for (int h = 0; h < kHalves; ++h) _mm256_storeu_ps(tile_sums + i * lds + h * 8, acc[i][h]);
      }
    }
  }
}

// Per-group alphas (binary weights) read 16-entry tables (kLutNibbles): a lane of triples
// holds 30 inputs, so a group of 32k inputs would end inside one, where a lane of nibbles
// holds 32 and a group is whole words. A lookup is the table's two halves permuted by the
// field's bits 0-2 and blended by its bit 3 (two vpermps where triples take one for 3
// inputs). At a group's last word the 8 rows' sums of a half become alpha * (2 * sums - the
// group's total of x) and add to the rows' results in `out` (stored by the first group).
constexpr LutLayout kLutAlphaLayout = kLutNibbles;

template <int M>
void lut_alpha_half(const float* tables, int64_t k, const uint8_t* tile, int64_t row0, int half,
                    const LutAlphaGroups& a, float* out, int64_t lds) {
  constexpr LutLayout kLayout = kLutAlphaLayout;
  constexpr int kSlots = static_cast<int>(kLayout.slots_per_lane());
  const int64_t words = kLayout.words(k, 1), table_stride = kLayout.table_floats(k);
  const int64_t group_words = a.group / kLayout.lane_inputs(1);
  row0 += half * 8;
  // The 8 rows' alphas of a group, gathered (rows past n: 0, and never read).
  const __m256i row_offsets = _mm256_mullo_epi32(_mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
                                                 _mm256_set1_epi32(static_cast<int>(a.groups)));
  const __m256 rows_in_n = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
      _mm256_set1_epi32(static_cast<int>(a.n - row0)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7)));
  const __m256 two = _mm256_set1_ps(2.0f);
  __m256 acc[M];
  for (int i = 0; i < M; ++i) acc[i] = _mm256_setzero_ps();
  int64_t group = 0, group_words_left = group_words;  // a countdown, not a division a word
  for (int64_t w = 0; w < words; ++w) {
    const uint8_t* word = tile + w * kLutWordBytes;
    _mm_prefetch(reinterpret_cast<const char*>(word) + 4 * kLutWordBytes, _MM_HINT_T0);  // past the end: no fault
    const __m256i fields = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(word + half * 32));
    const float* word_tables = tables + LutLayout::slot_table(kSlots * w, 1) * 16;
#pragma GCC unroll 8
    for (int j = 0; j < kSlots; ++j) {
      const __m256i idx = _mm256_srli_epi32(fields, 4 * j);                          // vpermps reads bits 0-2
      const __m256 upper = _mm256_castsi256_ps(_mm256_slli_epi32(fields, 28 - 4 * j));  // bit 3 to the sign
      for (int i = 0; i < M; ++i) {
        const float* table = word_tables + i * table_stride + j * 16;
        const __m256 low = _mm256_permutevar8x32_ps(table_in_register(table), idx);
        const __m256 high = _mm256_permutevar8x32_ps(table_in_register(table + 8), idx);
        acc[i] = _mm256_add_ps(acc[i], _mm256_blendv_ps(low, high, upper));
      }
    }
    if (--group_words_left == 0 || w + 1 == words) {
      const __m256 alpha = _mm256_mask_i32gather_ps(_mm256_setzero_ps(), a.alpha + row0 * a.groups + group,
                                                    row_offsets, rows_in_n, 4);
      for (int i = 0; i < M; ++i) {
        const __m256 signed_sum = _mm256_fmsub_ps(acc[i], two, _mm256_set1_ps(a.totals[i * a.groups + group]));
        float* rows_out = out + i * lds + row0;
        _mm256_storeu_ps(rows_out, group == 0 ? _mm256_mul_ps(alpha, signed_sum)
                                              : _mm256_fmadd_ps(alpha, signed_sum, _mm256_loadu_ps(rows_out)));
        acc[i] = _mm256_setzero_ps();
      }
      ++group;
      group_words_left = group_words;
    }
  }
}

template <int M>
void lut_alpha_tiles(const float* tables, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, float* out,
                     int64_t lds, const LutAlphaGroups& a) {
  const int64_t tile_bytes = kLutAlphaLayout.tile_bytes(k, 1);
  for (int64_t t = t0; t < t1; ++t) {
    for (int half = 0; half < 2; ++half) {
      lut_alpha_half<M>(tables, k, tiles + t * tile_bytes, t * kLutTileRows, half, a, out, lds);
    }
  }
}

// Up to 2 rows take both halves in one pass (each table load serves 16 weight rows); more
// rows take a pass per half, so that their accumulators fit the registers. Per-group alphas
// (binary weights only) take lut_alpha_tiles.
template <int M, int kPlanes>
void lut_tiles(const float* tables, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, float* sums,
               int64_t lds, const LutAlphaGroups* alphas = nullptr) {
  if constexpr (kPlanes == 1) {
    if (alphas != nullptr) return lut_alpha_tiles<M>(tables, k, tiles, t0, t1, sums, lds, *alphas);
  }
  if constexpr (M <= 2) {
    lut_tiles_half<M, kPlanes, 2>(tables, k, tiles, t0, t1, 0, sums, lds);
  } else {
    for (int half = 0; half < 2; ++half) lut_tiles_half<M, kPlanes, 1>(tables, k, tiles, t0, t1, half, sums, lds);
  }
}

// Rows in lanes: with 5-8 activation rows (as lanes_pay takes them, below), a lane per
// activation row. Tables are interleaved as by_entry[g][b][8] (entry b of group g for each
// row, zero past m), so a weight row's 3-bit field b selects 32 contiguous bytes: one load
// and one add look up 3 weights of one weight row for all 8 activation rows. The fields are
// taken out of the lanes with scalar shifts, which run beside the vector adds. At 8 rows,
// one thread, K = N = 4096: 2-2.5x faster than the permutes above, 1.6-1.9x faster than
// 16-entry tables'.
constexpr int64_t kLanesRows = 8;
constexpr int64_t kEntryBytes = kLanesRows * sizeof(float);  // one entry for every row

// v[i][b] -> v[b][i] for 8 vectors of 8 floats.
inline void transpose_8x8(__m256 (&v)[8]) {
  __m256 pairs[8], quads[8];
  for (int i = 0; i < 8; i += 2) {
    pairs[i] = _mm256_unpacklo_ps(v[i], v[i + 1]);  // per 128-bit half: v_i[0] v_i+1[0] v_i[1] v_i+1[1]
    pairs[i + 1] = _mm256_unpackhi_ps(v[i], v[i + 1]);
  }
  for (int i = 0; i < 8; i += 4) {
    for (int j = 0; j < 2; ++j) {
      quads[i + 2 * j] = _mm256_shuffle_ps(pairs[i + j], pairs[i + j + 2], _MM_SHUFFLE(1, 0, 1, 0));
      quads[i + 2 * j + 1] = _mm256_shuffle_ps(pairs[i + j], pairs[i + j + 2], _MM_SHUFFLE(3, 2, 3, 2));
    }
  }
  // quads[q] (q < 4) holds entries q and q + 4 of rows 0-3 in its halves, quads[q + 4] of rows 4-7.
  for (int q = 0; q < 4; ++q) {
    v[q] = _mm256_permute2f128_ps(quads[q], quads[q + 4], 0x20);
    v[q + 4] = _mm256_permute2f128_ps(quads[q], quads[q + 4], 0x31);
  }
}

// `values` [m][count] as by_entry [count][8], zero past m: 8 entries at a time by a
// transpose of the rows' vectors. A store an entry took a quarter of a lanes call over 12
// tiles (lut_sums_bench, 192 x 576, 8 rows: 13.0 us, now 9.5; K = 4096: 84 -> 60 us).
void interleave_rows(const float* values, int64_t m, int64_t count, float* by_entry) {
  const int64_t whole = count / 8 * 8;
  for (int64_t e = 0; e < whole; e += 8) {
    __m256 block[8];
    for (int i = 0; i < 8; ++i) block[i] = i < m ? _mm256_loadu_ps(values + i * count + e) : _mm256_setzero_ps();
    transpose_8x8(block);
    for (int b = 0; b < 8; ++b) _mm256_storeu_ps(by_entry + (e + b) * kLanesRows, block[b]);
  }
  for (int64_t e = whole; e < count; ++e) {
    for (int64_t i = 0; i < kLanesRows; ++i) by_entry[e * kLanesRows + i] = i < m ? values[i * count + e] : 0.0f;
  }
}

// Byte offset of field j's entry in its group's by_entry block (fields of kWidth bits): the
// field times kEntryBytes.
template <int kWidth>
inline uint32_t entry_offset(uint32_t lane, int j) {
  static_assert(kEntryBytes == 32, "the shifts below multiply by 32");
  constexpr uint32_t kField = (1u << kWidth) - 1;
  return (kWidth * j >= 5 ? lane >> (kWidth * j - 5) : lane << (5 - kWidth * j)) & (kField << 5);
}

// One tile word's lookups for 8 weight rows (`lanes`: their fields, kWidth bits each) into
// acc[r], whose lanes are the activation rows; word_tables: the word's by_entry groups.
// Slot by slot, each over the 8 rows, as a fold over compile-time slots: written as two
// unrolled loops, GCC emitted each row's adds as one dependency chain after another
// (1.16-1.19x slower binary, 1.03x ternary, measured on triples).
template <int kWidth, int kPlanes>
inline void look_up_word_in_lanes(const char* word_tables, const uint32_t* lanes, __m256 (&acc)[8]) {
  constexpr LutLayout kLayout{kWidth};
  [&]<int... j>(std::integer_sequence<int, j...>) {
    auto slot = [&]<int kJ>() {
      const char* group = word_tables + kJ / kPlanes * kLayout.entries() * kEntryBytes;
#pragma GCC unroll 8
      for (int r = 0; r < 8; ++r) {
        const __m256 v = _mm256_loadu_ps(reinterpret_cast<const float*>(group + entry_offset<kWidth>(lanes[r], kJ)));
        acc[r] = kPlanes == 2 && kJ % 2 == 1 ? _mm256_sub_ps(acc[r], v) : _mm256_add_ps(acc[r], v);
      }
    };
    (slot.template operator()<j>(), ...);
  }(std::make_integer_sequence<int, static_cast<int>(kLayout.slots_per_lane())>{});
}

// Thread-local scratch of at least `floats`, grown only: the lanes kernels' interleaved
// tables (K = 4096: 350-512 KB) would otherwise be mapped afresh by malloc, page faults
// and all, on every call.
float* lanes_scratch(std::vector<float>& scratch, int64_t floats) {
  if (scratch.size() < static_cast<size_t>(floats)) scratch.resize(static_cast<size_t>(floats));
  return scratch.data();
}

// row_sums[(t - t0) * 16 + r][i] for the weight rows r of tiles [t0, t1). Words go in chunks
// whose tables fit half of L1 (the interleaved tables at K = 4096 are 350 KB: swept from L2
// for every tile they cost 1.5x), the tiles' sums carried in row_sums between chunks.
template <int kPlanes>
void lut_rows_in_lanes(const float* by_entry, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                       float* row_sums) {
  constexpr int64_t kWordTableBytes = kLutSlots / kPlanes * kLutEntries * kEntryBytes;
  constexpr int64_t kChunkWords = kLutChunkTableBytes / kWordTableBytes;
  const int64_t words = kLutLayout.words(k, kPlanes), tile_bytes = words * kLutWordBytes;
  const auto* tables = reinterpret_cast<const char*>(by_entry);
  for (int64_t w0 = 0; w0 < words; w0 += kChunkWords) {
    const int64_t w1 = words - w0 < kChunkWords ? words : w0 + kChunkWords;
    for (int64_t t = t0; t < t1; ++t) {
      const uint8_t* tile = tiles + t * tile_bytes;
      for (int half = 0; half < 2; ++half) {
        float* out = row_sums + ((t - t0) * kLutTileRows + half * 8) * kLanesRows;
        __m256 acc[8];
        for (int r = 0; r < 8; ++r) acc[r] = w0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(out + r * kLanesRows);
        for (int64_t w = w0; w < w1; ++w) {
          const uint8_t* word = tile + w * kLutWordBytes;
          _mm_prefetch(reinterpret_cast<const char*>(word) + tile_bytes, _MM_HINT_T0);
          const auto* lanes = reinterpret_cast<const uint32_t*>(word + half * 32);
          look_up_word_in_lanes<kLutLayout.width, kPlanes>(tables + w * kWordTableBytes, lanes, acc);
        }
        for (int r = 0; r < 8; ++r) _mm256_storeu_ps(out + r * kLanesRows, acc[r]);
      }
    }
  }
}

void lut_sums_rows_in_lanes(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0,
                            int64_t t1, int planes, float* sums, int64_t lds) {
  thread_local std::vector<float> by_entry_scratch, row_sums_scratch;
  const int64_t rows = (t1 - t0) * kLutTileRows;
  float* by_entry = lanes_scratch(by_entry_scratch, kLutLayout.table_floats(k) * kLanesRows);
  float* row_sums = lanes_scratch(row_sums_scratch, rows * kLanesRows);
  interleave_rows(tables, m, kLutLayout.table_floats(k), by_entry);
  if (planes == 2) {
    lut_rows_in_lanes<2>(by_entry, k, tiles, t0, t1, row_sums);
  } else {
    lut_rows_in_lanes<1>(by_entry, k, tiles, t0, t1, row_sums);
  }
  for (int64_t row = 0; row < rows; ++row) {
    for (int64_t i = 0; i < m; ++i) sums[i * lds + t0 * kLutTileRows + row] = row_sums[row * kLanesRows + i];
  }
}

// Per-group alphas with rows in lanes: the kernel above on the 16-entry tables of
// kLutAlphaLayout (whose lanes end at group ends), a field's entry for the 8 rows one load,
// and at a group's last word each weight row's 8 sums folded with its alpha:
// y += alpha * (2 * sums - the group's totals of x). `carried` keeps each weight row's sums
// and results between chunks of words: [row][sums 8, results 8].
void lut_alpha_rows_in_lanes(const float* by_entry, const float* totals_by_group, int64_t k, const uint8_t* tiles,
                             int64_t t0, int64_t t1, const LutAlphaGroups& a, float* carried) {
  constexpr LutLayout kLayout = kLutAlphaLayout;
  constexpr int kSlots = static_cast<int>(kLayout.slots_per_lane());
  constexpr int64_t kWordTableBytes = kSlots * kLayout.entries() * kEntryBytes;
  constexpr int64_t kChunkWords = kLutChunkTableBytes / kWordTableBytes;
  const int64_t words = kLayout.words(k, 1), tile_bytes = words * kLutWordBytes;
  const int64_t group_words = a.group / kLayout.lane_inputs(1);
  const auto* tables = reinterpret_cast<const char*>(by_entry);
  const __m256 two = _mm256_set1_ps(2.0f);
  for (int64_t w0 = 0; w0 < words; w0 += kChunkWords) {
    const int64_t w1 = words - w0 < kChunkWords ? words : w0 + kChunkWords;
    for (int64_t t = t0; t < t1; ++t) {
      const uint8_t* tile = tiles + t * tile_bytes;
      for (int half = 0; half < 2; ++half) {
        const int64_t row0 = t * kLutTileRows + half * 8;
        float* state = carried + (row0 - t0 * kLutTileRows) * 2 * kLanesRows;
        __m256 acc[8], y[8];
        for (int r = 0; r < 8; ++r) {
          acc[r] = w0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(state + r * 2 * kLanesRows);
          y[r] = w0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(state + r * 2 * kLanesRows + kLanesRows);
        }
        for (int64_t w = w0; w < w1; ++w) {
          const uint8_t* word = tile + w * kLutWordBytes;
          _mm_prefetch(reinterpret_cast<const char*>(word) + tile_bytes, _MM_HINT_T0);
          const auto* lanes = reinterpret_cast<const uint32_t*>(word + half * 32);
          look_up_word_in_lanes<kLayout.width, 1>(tables + w * kWordTableBytes, lanes, acc);
          if ((w + 1) % group_words == 0 || w + 1 == words) {
            const int64_t g = w / group_words;
            const __m256 totals = _mm256_loadu_ps(totals_by_group + g * kLanesRows);
            for (int r = 0; r < 8; ++r) {
              const float alpha = row0 + r < a.n ? a.alpha[(row0 + r) * a.groups + g] : 0.0f;
              y[r] = _mm256_fmadd_ps(_mm256_set1_ps(alpha), _mm256_fmsub_ps(acc[r], two, totals), y[r]);
              acc[r] = _mm256_setzero_ps();
            }
          }
        }
        for (int r = 0; r < 8; ++r) {
          _mm256_storeu_ps(state + r * 2 * kLanesRows, acc[r]);
          _mm256_storeu_ps(state + r * 2 * kLanesRows + kLanesRows, y[r]);
        }
      }
    }
  }
}

void lut_alpha_sums_rows_in_lanes(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0,
                                  int64_t t1, const LutAlphaGroups& a, float* out, int64_t lds) {
  thread_local std::vector<float> by_entry_scratch, totals_scratch, carried_scratch;
  const int64_t rows = (t1 - t0) * kLutTileRows;
  float* by_entry = lanes_scratch(by_entry_scratch, kLutAlphaLayout.table_floats(k) * kLanesRows);
  float* totals_by_group = lanes_scratch(totals_scratch, a.groups * kLanesRows);
  float* carried = lanes_scratch(carried_scratch, rows * 2 * kLanesRows);
  interleave_rows(tables, m, kLutAlphaLayout.table_floats(k), by_entry);
  interleave_rows(a.totals, m, a.groups, totals_by_group);
  lut_alpha_rows_in_lanes(by_entry, totals_by_group, k, tiles, t0, t1, a, carried);
  for (int64_t row = 0; row < rows; ++row) {
    const float* y = carried + row * 2 * kLanesRows + kLanesRows;
    const bool in_n = t0 * kLutTileRows + row < a.n;
    for (int64_t i = 0; i < m; ++i) out[i * lds + t0 * kLutTileRows + row] = in_n ? y[i] : 0.0f;
  }
}

#include "binary_lut_tables.h"

// Eight table entries a vector, with build_lut_tables' adds: entry b of the eight is
// ((start + xs[2] or +0) + xs[1] or +0) + xs[0] or +0 by bits 2, 1, 0 of b. Adding +0 for
// a clear bit changes nothing, as no partial sum is -0 (they start at +0, or at 0 + xs[3]).
inline __m256 eight_entries(__m256 start, const float* xs) {
  const __m256 zero = _mm256_setzero_ps();
  const __m256 high = _mm256_add_ps(start, _mm256_blend_ps(zero, _mm256_set1_ps(xs[2]), 0xF0));
  const __m256 with_bit1 = _mm256_add_ps(high, _mm256_blend_ps(zero, _mm256_set1_ps(xs[1]), 0xCC));
  return _mm256_add_ps(with_bit1, _mm256_blend_ps(zero, _mm256_set1_ps(xs[0]), 0xAA));
}

// Triples: a table a vector; the same tables bit for bit as build_lut_tables.
void build_tables(const float* x, int64_t m, int64_t k, float* tables) {
  for_each_lut_group(kLutLayout, x, m, k, tables, [](const float* xs, float* table) {
    _mm256_storeu_ps(table, eight_entries(_mm256_setzero_ps(), xs));
  });
}

// Nibbles (per-group alphas): entries 8-15 start from 0 + xs[3], added first as bit 3 is
// the highest.
void build_alpha_tables(const float* x, int64_t m, int64_t k, float* tables) {
  for_each_lut_group(kLutAlphaLayout, x, m, k, tables, [](const float* xs, float* table) {
    const __m256 zero = _mm256_setzero_ps();
    _mm256_storeu_ps(table, eight_entries(zero, xs));
    _mm256_storeu_ps(table + 8, eight_entries(_mm256_add_ps(zero, _mm256_set1_ps(xs[3])), xs));
  });
}

#include "binary_lut_dispatch.h"

// Calls over kLutLanesMinTiles tiles take their rows to lanes from kLanesMinRowsTernary rows
// (ternary) or kLanesMinRowsBinary (binary, per channel or per group), and from one fewer
// over kWideLanesMinTiles tiles; rows short of 8 leave lanes idle, and the permutes look up a
// row at a time. Lanes / permutes time on Zen 4, lut_sums_bench (one thread, K 576-4096):
// 8 rows 0.42-0.98x from 4 tiles, 0.70-0.89x at 2; 7 rows binary 0.44-0.84x, ternary
// 0.76-1.13x from 4 tiles, 0.79-1.21x at 2; at 4-12 tiles binary 6 rows 0.67-1.12x, 5 rows
// 0.83-1.14x, ternary 6 rows 0.96-1.42x; from 64 tiles binary 5 rows 0.79-1.04x, ternary
// 6 rows 0.92-0.94x, 5 rows 1.09-1.15x. BinaryLinear / TernaryLinear, 2 threads: 7-8 rows
// at 4-8 tiles a thread 0.56-0.97x (per-group alphas, group 128, too); binary 6 rows at 4-32
// tiles 0.76-0.95x; per-group 6 rows 0.67-1.01x at 4-128 tiles, 5 rows 1.07-1.11x at 4-6
// tiles, 0.80-0.94x from 18.
constexpr int64_t kLanesMinRowsTernary = 7, kLanesMinRowsBinary = 6, kWideLanesMinTiles = 64;

bool lanes_pay(int64_t m, int64_t call_tiles, int planes) {
  if (call_tiles < kLutLanesMinTiles) return false;
  const int64_t min_rows = planes == 2 ? kLanesMinRowsTernary : kLanesMinRowsBinary;
  return m >= (call_tiles >= kWideLanesMinTiles ? min_rows - 1 : min_rows);
}

void lut_sums(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, int planes,
              float* sums, int64_t lds) {
  if (lanes_pay(m, t1 - t0, planes)) {
    return lut_sums_rows_in_lanes(tables, m, k, tiles, t0, t1, planes, sums, lds);
  }
  lut_dispatch(tables, m, k, tiles, t0, t1, planes, sums, lds);
}

void lut_alpha_sums(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                    const LutAlphaGroups& alphas, float* out, int64_t lds) {
  if (lanes_pay(m, t1 - t0, 1)) {
    return lut_alpha_sums_rows_in_lanes(tables, m, k, tiles, t0, t1, alphas, out, lds);
  }
  lut_dispatch(tables, m, k, tiles, t0, t1, 1, out, lds, &alphas);
}

constexpr std::nullptr_t lut_tiles_to_int8 = nullptr;  // batches stay on the lookup tables here

#include "binary_gemm_impl.h"
}  // namespace
}  // namespace avx2_binary

const BinaryGemmKernels& binary_gemm_kernels_avx2() { return avx2_binary::kBinaryTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
