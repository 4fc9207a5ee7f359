// AVX-512 binary kernels: 16 weight bits are a lane mask as they stand, so a masked add of
// the activations sums exactly the +1 weights; popcounts use the 4-bit lookup table of
// vpshufb (AVX512BW: every AVX-512 CPU we dispatch to). Where the CPU has VPOPCNTDQ the
// table's XNOR entry is binary_gemm_vpopcntdq.cpp's instead.
#include <immintrin.h>

#include <cstring>

#include "binary_gemm.h"
#include "int8_gemm.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")
// GCC 12's temporary-expression replacement moved the lookup kernel's permutes ahead of
// their adds, and with 8-16 accumulators it spilled them all to the stack: 128 stores and
// loads a word (lut_pass<4, 1, 4>); without it nothing in the loop is spilled.
#pragma GCC optimize("no-tree-ter")

namespace effgen::cpu {
namespace avx512_binary {
namespace {

#include "simd_avx512.h"

constexpr int kMaskedM = 4, kMaskedN = 4;  // 16 accumulators + 4 activation vectors

inline __m512 load_masked(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
inline __m512 load_masked(const bf16* p, __mmask16 m) {
  const __m512i wide = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(wide, 16));
}
inline __m512 load_masked(const fp16* p, __mmask16 m) { return _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, p)); }

// The 16 weight bits at element kk (a multiple of 16); at the row end only the bytes
// that exist are read.
inline __mmask16 weight_bits(const uint8_t* row, int64_t kk, int64_t rest) {
  uint16_t bits = row[kk / 8];
  if (rest > 8) bits = static_cast<uint16_t>(bits | (row[kk / 8 + 1] << 8));
  return static_cast<__mmask16>(bits);
}

template <typename T, int MR, int NR>
void masked_tile(const MaskedArgs<T>& p, int64_t i0, int64_t j0) {
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t k0 = g * p.group, k1 = k0 + p.group < p.k ? k0 + p.group : p.k;
    __m512 acc[MR][NR];
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_ps();
    }
    for (int64_t kk = k0; kk < k1; kk += 16) {
      const int64_t rest = k1 - kk;
      const __mmask16 valid = rest >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << rest) - 1);
      __m512 xv[MR];
      for (int i = 0; i < MR; ++i) xv[i] = load_masked(p.x + (i0 + i) * p.ldx + kk, valid);
      for (int j = 0; j < NR; ++j) {
        const __mmask16 plus = weight_bits(p.bits + (j0 + j) * p.ldb, kk, rest);
        for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_mask_add_ps(acc[i][j], plus, acc[i][j], xv[i]);
      }
    }
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) p.sums[(i0 + i) * p.lds + (j0 + j) * p.groups + g] = S::hsum(acc[i][j]);
    }
  }
}

// The bits set in each 64-bit lane of v (what VPOPCNTDQ's vpopcntq gives), by a 4-bit
// lookup table per byte and a sum of each lane's bytes.
inline __m512i popcount_qwords(__m512i v) {
  const __m512i table = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i lo = _mm512_shuffle_epi8(table, _mm512_and_si512(v, low));
  const __m512i hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
  return _mm512_sad_epu8(_mm512_add_epi8(lo, hi), _mm512_setzero_si512());  // 8 x u64 sums
}

#include "binary_popcount_avx512.h"

void expand_row(const uint8_t* bits, const uint8_t* negative, int64_t k, float* out) {
  const __m512 one = _mm512_set1_ps(1.0f), minus_one = _mm512_set1_ps(-1.0f);
  for (int64_t i = 0; i < k; i += 16) {
    const int64_t rest = k - i;
    const __mmask16 valid = rest >= 16 ? __mmask16(0xFFFF) : static_cast<__mmask16>((1u << rest) - 1);
    const __mmask16 plus = weight_bits(bits, i, rest);
    const __m512 v = negative == nullptr ? _mm512_mask_blend_ps(plus, minus_one, one)
                                         : _mm512_mask_blend_ps(plus, _mm512_maskz_mov_ps(weight_bits(negative, i, rest),
                                                                                          minus_one), one);
    _mm512_mask_storeu_ps(out + i, valid, v);
  }
}

constexpr int64_t kLutPrefetchBytes = 2048;
constexpr LutLayout kLutLayout = kLutNibbles;  // one 16-entry vpermps per lookup
constexpr LutLayout kLutAlphaLayout = kLutLayout;

// Tiles of one pass: each table vector loaded serves that many tiles' lookups. Loaded for
// one lookup, the binary tables (64 KB per row at K = 4096, beyond L1) came from L2 at a
// 64-byte line per vpermps, and that bounded the kernel: Zen 5, one thread, 0.7-0.85
// lookups a cycle against 1.25 for vpermps + vaddps from registers. A ternary table
// serves its two planes already; more tiles paid only at one row (the index shifts bind
// there). Measured on 4096 x 4096 (benchmarks/kernels/lut_sums_bench.cpp, RESULTS.md
// "Session 22"). One ternary row takes 4 tiles since its indices come from byte-offset
// loads (below). Xeon, against 2 tiles with shifts: 4 tiles with the loads 21-23% faster
// on 4096 x 4096 from memory and level on SmolLM2's layers; 2 tiles with the loads were
// 7-14% faster on the first and 5-7% slower on the second.
template <int M, int kPlanes>
constexpr int kPassTiles = kPlanes == 1 ? (M <= 4 ? 4 : 2) : (M == 1 ? 4 : 1);

// r[i] lane j -> r[j] lane i, in registers: pairs of rows interleaved (ps, then pd) give
// each 128-bit block a 4 x 4 transpose, then the blocks change places (shuffle_f32x4).
inline void transpose16(__m512 (&r)[16]) {
  __m512 t[16];
  for (int i = 0; i < 16; i += 2) {
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  // u[4q + c], block L: rows 4q .. 4q + 3 of column 4L + c.
  __m512 u[16];
  for (int q = 0; q < 4; ++q) {
    const __m512d a = _mm512_castps_pd(t[4 * q]), b = _mm512_castps_pd(t[4 * q + 1]);
    const __m512d c = _mm512_castps_pd(t[4 * q + 2]), d = _mm512_castps_pd(t[4 * q + 3]);
    u[4 * q] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    u[4 * q + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    u[4 * q + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    u[4 * q + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  // Column 4L + c takes block L of u[c], u[4 + c], u[8 + c], u[12 + c], in that order.
  for (int c = 0; c < 4; ++c) {
    const __m512 v0 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_f32x4(u[c], u[4 + c], 0xEE);
    const __m512 v2 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0x44);
    const __m512 v3 = _mm512_shuffle_f32x4(u[8 + c], u[12 + c], 0xEE);
    r[c] = _mm512_shuffle_f32x4(v0, v2, 0x88);
    r[4 + c] = _mm512_shuffle_f32x4(v0, v2, 0xDD);
    r[8 + c] = _mm512_shuffle_f32x4(v1, v3, 0x88);
    r[12 + c] = _mm512_shuffle_f32x4(v1, v3, 0xDD);
  }
}

// The alphas of kTiles tiles from t for groups g0 .. g0 + 15, a vector a group and tile:
// block[u][g - g0][lane] = alpha[(t + u) * 16 + lane][g], 0 past n and past the last group.
// Sixteen rows loaded and transposed in registers: a gather a group and tile (16 scattered
// floats) had taken a third of the pass at 1 x 11008 -> 4096 (perf, Zen 4).
template <int kTiles>
void load_alpha_block(const LutAlphaGroups& a, int64_t g0, int64_t t, float (&block)[kTiles][16][16]) {
  const int64_t count = a.groups - g0;
  const auto groups = static_cast<__mmask16>(count >= 16 ? 0xFFFF : (1u << count) - 1);
  for (int u = 0; u < kTiles; ++u) {
    const int64_t row0 = (t + u) * kLutTileRows;
    __m512 rows[16];
    for (int l = 0; l < 16; ++l) {
      rows[l] = row0 + l < a.n ? _mm512_maskz_loadu_ps(groups, a.alpha + (row0 + l) * a.groups + g0)
                               : _mm512_setzero_ps();
    }
    transpose16(rows);
    for (int g = 0; g < 16; ++g) _mm512_store_ps(block[u][g], rows[g]);
  }
}

// Per-group alphas (binary weights): at the last word of group g, each row's sums over the
// group's +1 weights become alpha * (2 * sums - the group's total of x), which lands in (the
// first group) or adds to sums, the rows' results; the accumulators start over. `block`:
// load_alpha_block's, holding group g.
template <int M, int kTiles, int kChains>
[[gnu::always_inline]] inline void fold_group(const LutAlphaGroups& a, int64_t g, int64_t t,
                                              const float (&block)[kTiles][16][16], __m512 (&acc)[M][kTiles][kChains],
                                              float* sums, int64_t lds) {
  const __m512 two = _mm512_set1_ps(2.0f);
  for (int u = 0; u < kTiles; ++u) {
    const int64_t row0 = (t + u) * kLutTileRows;
    const __m512 alpha = _mm512_load_ps(block[u][g % 16]);
    for (int i = 0; i < M; ++i) {
      __m512 plus = acc[i][u][0];
      for (int c = 1; c < kChains; ++c) plus = _mm512_add_ps(plus, acc[i][u][c]);
      for (int c = 0; c < kChains; ++c) acc[i][u][c] = _mm512_setzero_ps();
      const __m512 signed_sum = _mm512_fmsub_ps(plus, two, _mm512_set1_ps(a.totals[i * a.groups + g]));
      float* out = sums + i * lds + row0;
      _mm512_storeu_ps(out, g == 0 ? _mm512_mul_ps(alpha, signed_sum)
                                   : _mm512_fmadd_ps(alpha, signed_sum, _mm512_loadu_ps(out)));
    }
  }
}

// kTiles tiles from t, a word of each at a time; slot j's indices are field j of every
// lane, and vpermps reads only index bits 0-3, so nothing needs masking. Per row and tile,
// kChains accumulators take the slots in turn so that a pass of few rows still keeps
// enough adds in flight; ternary slots alternate positive (even j, added) and negative
// (odd j, subtracted) planes.
//
// Getting field j to bits 0-3: a shift right by 4j of the word (seven shifts a word), or,
// for one row (kFromBytes), loads: byte b of a lane holds fields 2b (bits 0-3) and 2b + 1
// (bits 4-7), so the word loaded from byte b on has field 2b in place and field 2b + 1 one
// shift of 4 away (four loads, three split across lines, and four shifts). With one row
// nothing shares a shift, and on the Xeon the shifts (port 0) and the permutes (port 5)
// bound the pass while loads use other ports. Old and new kernels alternating, one row, 2
// threads: binary 4096 x 4096 from memory 20-23% faster, 4096 -> 11008 14%, SmolLM2's
// 576 -> 1536 / 1536 -> 576 / 576 -> 192 in cache 3-12% (a contrived 4099 -> 50, four
// tiles in all, 11-19% slower); ternary see kPassTiles. More rows measured level or slower
// with the loads: they keep the shifts. With per-group alphas (kAlphas) each group's sums go
// through fold_group and sums gets the rows' results: an instantiation of its own with the
// fold inlined (called, the fold took the accumulators by reference, so the pass kept them
// on the stack).
template <int M, int kPlanes, int kTiles, bool kAlphas>
void lut_pass(const float* tables, int64_t k, const uint8_t* tiles, int64_t t, float* sums, int64_t lds,
              const LutAlphaGroups* alphas) {
  constexpr int kChains = M * kTiles >= 8 ? 1 : 2;
  constexpr bool kFromBytes = M == 1;
  const int64_t words = kLutLayout.words(k, kPlanes), table_stride = kLutLayout.table_floats(k);
  const uint8_t* first = tiles + t * words * kLutWordBytes;
  __m512 acc[M][kTiles][kChains];
  for (int i = 0; i < M; ++i) {
    for (int u = 0; u < kTiles; ++u) {
      for (int c = 0; c < kChains; ++c) acc[i][u][c] = _mm512_setzero_ps();
    }
  }
  // Loading from byte b reads up to 3 bytes past a word: each tile's last word is read from
  // a copy with room after it (what lies there lands in index bits vpermps ignores), made
  // before the loop so that its loads do not wait on the copy's stores.
  alignas(64) uint8_t last_words[kFromBytes ? kTiles : 1][2 * kLutWordBytes] = {};
  if constexpr (kFromBytes) {
    for (int u = 0; u < kTiles; ++u) {
      std::memcpy(last_words[u], first + ((u + 1) * words - 1) * kLutWordBytes, kLutWordBytes);
    }
  }
  const int64_t group_words = kAlphas ? alphas->group / kLutLayout.lane_inputs(kPlanes) : words;
  int64_t group = 0, group_words_left = group_words;  // a countdown, not a division a word
  // Loaded before the loop and after a fold that ends a block, where the accumulators are
  // all zero: inside the loop, with them live, the transpose spilled them (8 rows of 576 ->
  // 1536 ran 1.35x slower).
  alignas(64) float alpha_block[kAlphas ? kTiles : 1][16][16];
  if constexpr (kAlphas) load_alpha_block(*alphas, 0, t, alpha_block);
  for (int64_t w = 0; w < words; ++w) {
    const uint8_t* word[kTiles];
    __m512i nibbles[kTiles];
    for (int u = 0; u < kTiles; ++u) {
      word[u] = first + (u * words + w) * kLutWordBytes;
      // The hardware prefetcher alone left the stream at half the bandwidth (measured).
      _mm_prefetch(reinterpret_cast<const char*>(word[u]) + kLutPrefetchBytes, _MM_HINT_T0);
      if (kFromBytes && w + 1 == words) word[u] = last_words[u];
      if (!kFromBytes) nibbles[u] = _mm512_loadu_si512(word[u]);
    }
    const float* word_tables = tables + LutLayout::slot_table(8 * w, kPlanes) * 16;
#pragma GCC unroll 8
    for (int j = 0; j < 8; ++j) {
      __m512i idx[kTiles];
      for (int u = 0; u < kTiles; ++u) {
        if (!kFromBytes) {
          idx[u] = _mm512_srli_epi32(nibbles[u], 4 * j);
        } else if (j % 2 == 0) {
          nibbles[u] = _mm512_loadu_si512(word[u] + j / 2);
          idx[u] = nibbles[u];
        } else {
          idx[u] = _mm512_srli_epi32(nibbles[u], 4);
        }
      }
      const float* table = word_tables + j / kPlanes * 16;
      for (int i = 0; i < M; ++i) {
        const __m512 row_table = _mm512_loadu_ps(table + i * table_stride);
        for (int u = 0; u < kTiles; ++u) {
          const __m512 v = _mm512_permutexvar_ps(idx[u], row_table);
          if (kPlanes == 2 && j % 2 == 1) {
            acc[i][u][j % kChains] = _mm512_sub_ps(acc[i][u][j % kChains], v);
          } else {
            acc[i][u][j % kChains] = _mm512_add_ps(acc[i][u][j % kChains], v);
          }
        }
      }
    }
    if constexpr (kAlphas) {
      if (--group_words_left == 0 || w + 1 == words) {
        fold_group<M, kTiles, kChains>(*alphas, group, t, alpha_block, acc, sums, lds);
        if (++group % 16 == 0 && group < alphas->groups) load_alpha_block(*alphas, group, t, alpha_block);
        group_words_left = group_words;
      }
    }
  }
  if constexpr (kAlphas) return;
  for (int i = 0; i < M; ++i) {
    for (int u = 0; u < kTiles; ++u) {
      __m512 total = acc[i][u][0];
      for (int c = 1; c < kChains; ++c) total = _mm512_add_ps(total, acc[i][u][c]);
      _mm512_storeu_ps(sums + i * lds + (t + u) * kLutTileRows, total);
    }
  }
}

template <int M, int kPlanes, bool kAlphas>
void lut_tile_range(const float* tables, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, float* sums,
                    int64_t lds, const LutAlphaGroups* alphas) {
  int64_t t = t0;
  constexpr int kTiles = kPassTiles<M, kPlanes>;
  for (; t + kTiles <= t1; t += kTiles) lut_pass<M, kPlanes, kTiles, kAlphas>(tables, k, tiles, t, sums, lds, alphas);
  for (; t < t1; ++t) lut_pass<M, kPlanes, 1, kAlphas>(tables, k, tiles, t, sums, lds, alphas);
}

// Per-group alphas come with binary weights only (lut_alpha_sums).
template <int M, int kPlanes>
void lut_tiles(const float* tables, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, float* sums,
               int64_t lds, const LutAlphaGroups* alphas = nullptr) {
  if constexpr (kPlanes == 1) {
    if (alphas != nullptr) return lut_tile_range<M, 1, true>(tables, k, tiles, t0, t1, sums, lds, alphas);
  }
  lut_tile_range<M, kPlanes, false>(tables, k, tiles, t0, t1, sums, lds, nullptr);
}

// Packed block q (values 4q .. 4q + 3 of K) takes from each lane the field(s) of quad q: the
// lane's byte holding them is copied to all four of its bytes (vpshufb), and a test of bit
// r (of the low or high nibble) in byte r gives the mask of the weights that are set. A
// binary word holds quads 8w .. 8w + 7 (quad q in nibble q % 2 of byte (q % 8) / 2); a
// ternary one holds quads 4w .. 4w + 3, quad q's positive bits in the low nibble of byte
// q % 4 and its negative bits in the high one. The column sums of a K group are stored
// once its last quad is in (a countdown, not a division per quad).
template <int kPlanes>
void lut_tile_to_int8(const uint8_t* tile, int64_t k, int8_t* blocks, int32_t* col_sums, int64_t group_quads,
                      int64_t sums_stride) {
  constexpr int kQuadsPerWord = static_cast<int>(kLutLayout.slots_per_lane()) / kPlanes;
  const int64_t quads = (k + kPackDepth - 1) / kPackDepth;
  const __m512i one = _mm512_set1_epi8(1), minus_one = _mm512_set1_epi8(-1), ones16 = _mm512_set1_epi16(1);
  const __m512i low_bits = _mm512_set1_epi32(0x08040201), high_bits = _mm512_set1_epi32(static_cast<int>(0x80402010u));
  // pick[b]: vpshufb indices that copy byte b of each lane to all four of its bytes.
  const __m512i lane_starts = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 0, 0, 0, 4, 4, 4, 4, 8, 8, 8, 8, 12, 12, 12, 12));
  __m512i pick[4];
  for (int b = 0; b < 4; ++b) pick[b] = _mm512_add_epi8(lane_starts, _mm512_set1_epi8(static_cast<char>(b)));
  // Binary bits past K are 0 like -1 weights: the last quad keeps only its first k % 4 bytes.
  const int tail = static_cast<int>(k % kPackDepth);
  const __mmask64 tail_valid = tail == 0 ? ~__mmask64{0} : ((__mmask64{1} << tail) - 1) * 0x1111111111111111ull;
  __m512i sums = _mm512_setzero_si512();
  int64_t group_left = group_quads;
  for (int64_t q0 = 0; q0 < quads; q0 += kQuadsPerWord) {
    const __m512i word = _mm512_loadu_si512(tile + q0 / kQuadsPerWord * kLutWordBytes);
#pragma GCC unroll 8
    for (int j = 0; j < kQuadsPerWord; ++j) {
      const int64_t q = q0 + j;
      if (q == quads) break;
      const __m512i fields = _mm512_shuffle_epi8(word, pick[kPlanes == 1 ? j / 2 : j]);
      __m512i values;
      if constexpr (kPlanes == 1) {
        const __mmask64 valid = q + 1 == quads ? tail_valid : ~__mmask64{0};
        const __mmask64 plus = _mm512_test_epi8_mask(fields, j % 2 == 0 ? low_bits : high_bits);
        values = _mm512_mask_mov_epi8(_mm512_maskz_mov_epi8(valid, minus_one), plus, one);
      } else {
        const __mmask64 plus = _mm512_test_epi8_mask(fields, low_bits), minus = _mm512_test_epi8_mask(fields, high_bits);
        values = _mm512_mask_mov_epi8(_mm512_maskz_mov_epi8(plus, one), minus, minus_one);
      }
      _mm512_storeu_si512(blocks + q * kPackBlock, values);
      // Each lane's four bytes summed: unsigned 1 x signed value, pairs, then pairs of pairs.
      sums = _mm512_add_epi32(sums, _mm512_madd_epi16(_mm512_maddubs_epi16(one, values), ones16));
      if (--group_left == 0 || q + 1 == quads) {
        _mm512_storeu_si512(col_sums, sums);
        col_sums += sums_stride;
        sums = _mm512_setzero_si512();
        group_left = group_quads;
      }
    }
  }
}

void lut_tiles_to_int8(const uint8_t* tiles, int64_t k, int planes, int64_t t0, int64_t t1, const Int8Panel& panel) {
  const int64_t tile_bytes = kLutLayout.tile_bytes(k, planes), group_quads = panel.group / kPackDepth;
  for (int64_t t = t0; t < t1; ++t) {
    int8_t* blocks = panel.blocks + (t - t0) * panel.group_stride;
    int32_t* sums = panel.sums + (t - t0) * kLutTileRows;
    if (planes == 1) {
      lut_tile_to_int8<1>(tiles + t * tile_bytes, k, blocks, sums, group_quads, panel.sums_stride);
    } else {
      lut_tile_to_int8<2>(tiles + t * tile_bytes, k, blocks, sums, group_quads, panel.sums_stride);
    }
  }
}

#include "binary_lut_tables.h"

// A table a vector: entry b adds xs[3], xs[2], xs[1], xs[0] where bit t of b is set, in that
// order, to +0: build_lut_tables' adds (its +0 adds for clear low bits change nothing), so
// the same tables bit for bit, at one store a group instead of 16.
void build_tables(const float* x, int64_t m, int64_t k, float* tables) {
  for_each_lut_group(kLutLayout, x, m, k, tables, [](const float* xs, float* table) {
    __m512 t = _mm512_maskz_add_ps(0xFF00, _mm512_setzero_ps(), _mm512_set1_ps(xs[3]));
    t = _mm512_mask_add_ps(t, 0xF0F0, t, _mm512_set1_ps(xs[2]));
    t = _mm512_mask_add_ps(t, 0xCCCC, t, _mm512_set1_ps(xs[1]));
    _mm512_storeu_ps(table, _mm512_mask_add_ps(t, 0xAAAA, t, _mm512_set1_ps(xs[0])));
  });
}

constexpr auto build_alpha_tables = build_tables;  // kLutAlphaLayout is kLutLayout

#include "binary_lut_dispatch.h"

void lut_sums(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, int planes,
              float* sums, int64_t lds) {
  lut_dispatch(tables, m, k, tiles, t0, t1, planes, sums, lds);
}

void lut_alpha_sums(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                    const LutAlphaGroups& alphas, float* out, int64_t lds) {
  lut_dispatch(tables, m, k, tiles, t0, t1, 1, out, lds, &alphas);
}

#include "binary_gemm_impl.h"

}  // namespace
}  // namespace avx512_binary

const BinaryGemmKernels& binary_gemm_kernels_avx512_lookup() { return avx512_binary::kBinaryTable; }

const BinaryGemmKernels& binary_gemm_kernels_avx512() {
  static const BinaryGemmKernels table = [] {
    BinaryGemmKernels t = avx512_binary::kBinaryTable;
    if (cpu_has_avx512_vpopcntdq()) t.xor_popcount = xor_popcount_avx512_vpopcntdq;
    return t;
  }();
  return table;
}

}  // namespace effgen::cpu

#pragma GCC pop_options
