// AVX-512 VNNI int8 GEMM. vpdpbusd multiplies unsigned by signed bytes, so activations are
// shifted to unsigned (a + 128, an XOR of the sign bit) and the excess 128 * sum(b) is
// accumulated alongside with the same instruction and subtracted at the end.
#include <immintrin.h>

#include <cstring>
#include <type_traits>

#include "int8_gemm.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")

namespace effgen::cpu {
namespace avx512_gemm {
namespace {

#include "simd_avx512.h"
#include "int8_gemm_quads.h"

constexpr int kTileM = 4;  // 16 accumulators + 4 weight sums + 4 weight vectors + 2: 26 of 32 zmm
constexpr int kTileN = 4;
constexpr int kDecodeN = 8;
constexpr int64_t kStep = 64;  // bytes of K per vector
// The shifted products reach 255 * 128 each, so int32 lanes are reduced every 2^16 values of K.
constexpr int64_t kChunk = int64_t{1} << 16;

// 128 * sum(b[j][k0:k1]) per weight row of the tile, with vpdpbusd like the products.
template <int NR>
void shift_excess(const int8_t* b, int64_t ldb, int64_t k0, int64_t k1, int32_t* excess) {
  const __m512i sign_bit = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i sum[NR];
  #pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) sum[j] = _mm512_setzero_si512();
  for (int64_t kk = k0; kk < k1; kk += kStep) {
    const __mmask64 mask = k1 - kk >= kStep ? ~__mmask64{0} : (__mmask64{1} << (k1 - kk)) - 1;
    #pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) sum[j] = _mm512_dpbusd_epi32(sum[j], sign_bit, _mm512_maskz_loadu_epi8(mask, b + j * ldb + kk));
  }
  #pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) excess[j] = _mm512_reduce_add_epi32(sum[j]);
}

// Per panel, for K within one chunk: the excess of every weight row, computed once for all
// the row tiles. Longer K keeps the in-loop path (the excess is needed per chunk).
const int32_t* prepare_panel(const int8_t* b, int64_t ldb, int64_t nr, int64_t k, int32_t* scratch) {
  if (k > kChunk) return nullptr;
  for (int64_t j = 0; j < nr; ++j) shift_excess<1>(b + j * ldb, ldb, 0, k, scratch + j);
  return scratch;
}

// excess == nullptr: accumulate 128 * sum(b) alongside, reduced per chunk of K; else K fits
// one chunk and excess[j] holds it already.
template <int MR, int NR, bool kExcessInLoop>
void tile_impl(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k, const int32_t* excess,
               int32_t* c, int64_t ldc) {
  const __m512i sign_bit = _mm512_set1_epi8(static_cast<char>(0x80));
  int32_t total[MR][NR] = {};
  for (int64_t k0 = 0; k0 < k; k0 += kChunk) {
    const int64_t k1 = k - k0 < kChunk ? k : k0 + kChunk;
    __m512i acc[MR][NR], weight_sum[NR];
    for (int j = 0; j < NR; ++j) {
      weight_sum[j] = _mm512_setzero_si512();
      for (int i = 0; i < MR; ++i) acc[i][j] = _mm512_setzero_si512();
    }
    for (int64_t kk = k0; kk < k1; kk += kStep) {
      // Masked-off bytes load as 0 in both operands, so they add nothing.
      const __mmask64 mask = k1 - kk >= kStep ? ~__mmask64{0} : (__mmask64{1} << (k1 - kk)) - 1;
      __m512i bv[NR];
      for (int j = 0; j < NR; ++j) {
        bv[j] = _mm512_maskz_loadu_epi8(mask, b + j * ldb + kk);
        if constexpr (kExcessInLoop) weight_sum[j] = _mm512_dpbusd_epi32(weight_sum[j], sign_bit, bv[j]);
      }
      for (int i = 0; i < MR; ++i) {
        const __m512i av = _mm512_xor_si512(_mm512_maskz_loadu_epi8(mask, a + i * lda + kk), sign_bit);
        for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], av, bv[j]);
      }
    }
    for (int j = 0; j < NR; ++j) {
      const int32_t ex = kExcessInLoop ? _mm512_reduce_add_epi32(weight_sum[j]) : excess[j];
      for (int i = 0; i < MR; ++i) total[i][j] += _mm512_reduce_add_epi32(acc[i][j]) - ex;
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = total[i][j];
  }
}

template <int MR, int NR>
void tile(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k, const int32_t* panel_info,
          int32_t* c, int64_t ldc) {
  if (panel_info != nullptr) return tile_impl<MR, NR, false>(a, lda, b, ldb, k, panel_info, c, ldc);
  tile_impl<MR, NR, true>(a, lda, b, ldb, k, nullptr, c, ldc);
}

// acc += u8(a) . s8(b) in each int32 lane. Inline asm because GCC 12 routes the
// accumulator of the _mm512_dpbusd_epi32 intrinsic through a copy and a stack slot, which
// halves the speed of a register tile.
inline void dpbusd(__m512i& acc, __m512i a, __m512i b) { __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b)); }

// Packed weights: 6 rows x 4 column groups = 24 accumulators + 4 weight vectors + 1
// activation quad. Each activation quad (4 bytes of K, sign bit flipped: a + 128) is
// broadcast to all 16 lanes; the excess 128 * col_sums is taken off at the end (exact
// modulo 2^32, and the true result fits int32).
constexpr int kPackedTileM = 6;
constexpr int kPackedTileGroups = 4;

template <int MR, int NG>
__attribute__((always_inline)) inline void zero(__m512i (&acc)[MR][NG]) {
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    #pragma GCC unroll 8
    for (int g = 0; g < NG; ++g) acc[i][g] = _mm512_setzero_si512();
  }
}

// acc[i][g] += row i's quad (quad(i): its 4 activation bytes as one int32, shifted to
// unsigned here) times column group g's block kq (groups group_stride apart).
template <int MR, int NG, typename Quad>
__attribute__((always_inline)) inline void accumulate_quad(__m512i (&acc)[MR][NG], const int8_t* b,
                                                           int64_t group_stride, int64_t kq, Quad quad) {
  const __m512i sign_bit = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i bv[NG];
  #pragma GCC unroll 8
  for (int g = 0; g < NG; ++g) bv[g] = _mm512_loadu_si512(b + g * group_stride + kq * kPackBlock);
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    const __m512i av = _mm512_xor_si512(_mm512_set1_epi32(quad(i)), sign_bit);
    #pragma GCC unroll 8
    for (int g = 0; g < NG; ++g) dpbusd(acc[i][g], av, bv[g]);
  }
}

// acc[i][g] += the products of row i's quads over k values (from a) with column group g's
// blocks (from b, groups group_stride apart); prefetch(s) at step s of them.
template <int MR, int NG, typename Prefetch = NoPrefetch>
__attribute__((always_inline)) inline void accumulate_quads(__m512i (&acc)[MR][NG], const int8_t* a, int64_t lda,
                                                            int64_t k, const int8_t* b, int64_t group_stride,
                                                            const Prefetch& prefetch = Prefetch()) {
  for_each_quad(a, lda, k, [&](int64_t kq, auto quad) __attribute__((always_inline)) {
    prefetch(kq);
    accumulate_quad(acc, b, group_stride, kq, quad);
  });
}

// accumulate_quads for one row (decode, a pure weight stream), with 2 NG streams in flight
// instead of NG: the two halves of K at once. Reading 16 MB on 2 threads of the Xeon, 8
// streams ran at 28.2-28.8 GB/s against 4 streams' 26.8-27.6. Long halves also read each
// group's blocks kAheadQuads blocks (2 KB) ahead: 1 x 4096^2 from memory 2% faster, but
// 10% slower at K = 576, where such a prefetch lands mostly on what the other streams read.
constexpr int64_t kAheadQuads = 32;
constexpr int64_t kAheadMinHalf = 8 * kAheadQuads;  // K >= 2048

template <int NG, typename Prefetch>
__attribute__((always_inline)) inline void accumulate_quads_in_halves(__m512i (&acc)[1][NG], const int8_t* a,
                                                                      int64_t k, const int8_t* b,
                                                                      int64_t group_stride, const Prefetch& prefetch) {
  const int64_t half = k / kPackDepth / 2;  // quads of each half; the upper one starts at quad `half`
  __m512i upper[1][NG];
  zero(upper);
  auto quad_at = [a](int64_t kq) {
    int32_t q;
    std::memcpy(&q, a + kq * kPackDepth, sizeof(q));
    return [q](int /*row*/) { return q; };
  };
  auto halves = [&](auto read_ahead) __attribute__((always_inline)) {
    for (int64_t kq = 0; kq < half; ++kq) {
      prefetch(kq);
      prefetch(half + kq);
      if constexpr (read_ahead) {
        #pragma GCC unroll 8
        for (int g = 0; g < NG; ++g) {
          const int8_t* group = b + g * group_stride;
          _mm_prefetch(reinterpret_cast<const char*>(group + (kq + kAheadQuads) * kPackBlock), _MM_HINT_T0);
          _mm_prefetch(reinterpret_cast<const char*>(group + (half + kq + kAheadQuads) * kPackBlock), _MM_HINT_T0);
        }
      }
      accumulate_quad(acc, b, group_stride, kq, quad_at(kq));
      accumulate_quad(upper, b, group_stride, half + kq, quad_at(half + kq));
    }
  };
  if (half >= kAheadMinHalf) {
    halves(std::true_type{});
  } else {
    halves(std::false_type{});
  }
  // What the halves leave: an odd quad and K's partial one, from quad 2 half on.
  const int64_t done = 2 * half;
  accumulate_quads(acc, a + done * kPackDepth, 0, k - done * kPackDepth, b + done * kPackBlock, group_stride,
                   [&](int64_t step) __attribute__((always_inline)) { prefetch(done + step); });
  #pragma GCC unroll 8
  for (int g = 0; g < NG; ++g) acc[0][g] = _mm512_add_epi32(acc[0][g], upper[0][g]);  // modulo 2^32, as every sum
}

// The valid columns of column group g of a tile with n_valid columns.
inline __mmask16 group_mask(int64_t n_valid, int g) {
  const int64_t cols = n_valid - g * kPackCols;
  return cols >= kPackCols ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
}

// 128 * col_sums of column group g: the excess of the unsigned shift.
inline __m512i column_excess(const int32_t* col_sums, __mmask16 valid, int g) {
  return _mm512_slli_epi32(_mm512_maskz_loadu_epi32(valid, col_sums + g * kPackCols), 7);
}

// packed_tile's products as int32, at c (rows ldc apart).
struct Int32Tile {
  static constexpr int kLimbs = 1;  // rows a token: every row stands alone
  int32_t* c;
  int64_t ldc;

  struct Column {
    int32_t* c;
    int64_t ldc;
    __mmask16 valid;
    void store(int i, const __m512i (&sums)[1], __m512i excess) const {
      _mm512_mask_storeu_epi32(c + i * ldc, valid, _mm512_sub_epi32(sums[0], excess));
    }
  };
  Column column(int g, __mmask16 valid) const { return {c + g * kPackCols, ldc, valid}; }
};

// The MR x NG register tile over packed weights, MR a multiple of Sink::kLimbs: its rows
// are tokens of kLimbs rows each, and sink.column(g, valid).store(t, sums, excess) takes
// token t's sums with column group g (sums[d] its row d's; the sign shift's excess still in
// them) as they leave the registers.
template <int MR, int NG, typename Sink>
__attribute__((always_inline)) inline void packed_tile_into(const int8_t* a, int64_t lda, int64_t k, const int8_t* b,
                                                            int64_t group_stride, const int32_t* col_sums,
                                                            int64_t n_valid, const Sink& sink,
                                                            PrefetchRange prefetch) {
  constexpr int kLimbs = Sink::kLimbs;
  static_assert(MR % kLimbs == 0, "a tile holds whole tokens");
  __m512i acc[MR][NG];
  zero(acc);
  const int64_t steps = (k + kPackDepth - 1) / kPackDepth;
  with_prefetcher(prefetch, steps, [&](const auto& prefetcher) __attribute__((always_inline)) {
    if constexpr (MR == 1) {
      accumulate_quads_in_halves(acc, a, k, b, group_stride, prefetcher);
    } else {
      accumulate_quads(acc, a, lda, k, b, group_stride, prefetcher);
    }
  });
  #pragma GCC unroll 8
  for (int g = 0; g < NG; ++g) {
    const __mmask16 valid = group_mask(n_valid, g);
    const __m512i excess = column_excess(col_sums, valid, g);
    const auto column = sink.column(g, valid);
    #pragma GCC unroll 8
    for (int t = 0; t < MR / kLimbs; ++t) {
      __m512i sums[kLimbs];
      #pragma GCC unroll 8
      for (int d = 0; d < kLimbs; ++d) sums[d] = acc[kLimbs * t + d][g];
      column.store(t, sums, excess);
    }
  }
}

template <int MR, int NG>
void packed_tile(const int8_t* a, int64_t lda, int64_t k, const int8_t* b, int64_t group_stride,
                 const int32_t* col_sums, int64_t n_valid, int32_t* c, int64_t ldc, PrefetchRange prefetch) {
  packed_tile_into<MR, NG>(a, lda, k, b, group_stride, col_sums, n_valid, Int32Tile{c, ldc}, prefetch);
}

// W8A16 register tile: 2 x 4 totals + 2 x 4 group partials + 4 weight vectors.
constexpr int kW16M = 2;
constexpr int kW16N = 4;
constexpr int kW16ChannelM = 4;  // per-channel tile: 4 x 4 accumulators

constexpr GemmPacked kGemmPacked = nullptr;  // int8_gemm_impl.h's gemm_packed
bool gemm_packed_scaled(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b, int64_t group_stride,
                        const int32_t* col_sums, int64_t n, const ScaledOutput& out, PrefetchRange next);
constexpr GemmPackedScaled kGemmPackedScaled = gemm_packed_scaled;

// 16-bit activations run as 2 digit rows on gemm_packed: two VNNI int8 dot products per 64
// weights and token, no more than int16 dot products (vpdpwssd) plus the widening would take.
constexpr GemmPackedI16 kGemmPackedI16 = nullptr;
constexpr W8A16GroupedI16 kW8A16PackedGroupedI16 = nullptr;

#include "int8_gemm_impl.h"

// The digits' sums combined exactly in double, 8 lanes at a time, and rounded once to float.
template <int LIMBS>
__attribute__((always_inline)) inline __m512 combine_digit_lanes_exactly(const __m512i (&digit)[LIMBS],
                                                                         __m512i excess) {
  __m256 halves[2];
  for (int h = 0; h < 2; ++h) {
    auto lanes = [&](int d) {
      const __m512i sums = _mm512_sub_epi32(digit[d], excess);
      return _mm512_cvtepi32_pd(h == 0 ? _mm512_castsi512_si256(sums) : _mm512_extracti64x4_epi64(sums, 1));
    };
    __m512d exact = lanes(0);
    for (int d = 1; d < LIMBS; ++d) exact = _mm512_add_pd(_mm512_mul_pd(exact, _mm512_set1_pd(256.0)), lanes(d));
    halves[h] = _mm512_cvtpd_ps(exact);
  }
  return _mm512_castpd_ps(
      _mm512_insertf64x4(_mm512_castps_pd(_mm512_castps256_ps512(halves[0])), _mm256_castps_pd(halves[1]), 1));
}

// One token's product with 16 columns over a group (or all of K), from its LIMBS digit
// rows' int32 sums (digit[d], excess included), combined and rounded once to float the way
// digits_group_accumulate and combine_digits do it: in float where both of 2 digits' sums
// are exact floats (float_sums), else exactly in double, 8 lanes at a time. One "digit"
// (an int8 row, W8A8) is its sum, rounded to float.
template <int LIMBS>
__attribute__((always_inline)) inline __m512 combine_digit_lanes(const __m512i (&digit)[LIMBS], __m512i excess,
                                                                 bool float_sums) {
  if constexpr (LIMBS == 1) {
    return _mm512_cvtepi32_ps(_mm512_sub_epi32(digit[0], excess));
  } else {
    if (LIMBS == 2 && float_sums) {
      const __m512 high = _mm512_cvtepi32_ps(_mm512_sub_epi32(digit[0], excess));
      const __m512 low = _mm512_cvtepi32_ps(_mm512_sub_epi32(digit[1], excess));
      return _mm512_add_ps(_mm512_mul_ps(high, _mm512_set1_ps(256.0f)), low);
    }
    return combine_digit_lanes_exactly(digit, excess);
  }
}

// packed_tile's products through the epilogue of ScaledOutput in registers: the same float
// operations in the same order as epilogue_row (LIMBS = 1) or digits_epilogue_row, so the
// same bits. The tile's first token and column are t0 and j0 of `out`.
template <typename Out, int LIMBS>
struct ScaledTile {
  static constexpr int kLimbs = LIMBS;
  const ScaledOutput& out;
  int64_t t0, j0;
  bool float_sums;  // combine_digit_lanes' choice: K <= kFloatDigitsMaxDepth

  struct Column {
    const float* a_scale;
    int64_t a_stride;
    __m512 b_scale, bias;
    bool has_bias, float_sums;
    Out* row0;
    int64_t ldo, count;
    void store(int t, const __m512i (&sums)[LIMBS], __m512i excess) const {
      const __m512 dot = combine_digit_lanes(sums, excess, float_sums);
      const __m512 scaled = S::mul(S::mul(dot, S::set1(a_scale[t * a_stride])), b_scale);
      store_lanes(row0 + t * ldo, has_bias ? S::add(scaled, bias) : scaled, count);
    }
  };
  Column column(int g, __mmask16 valid) const {
    const int64_t j = j0 + g * kPackCols;
    const __m512 b_scale = out.b_stride == 0 ? S::set1(out.b_scale[0]) : _mm512_maskz_loadu_ps(valid, out.b_scale + j);
    const __m512 bias = out.bias == nullptr ? _mm512_setzero_ps() : _mm512_maskz_loadu_ps(valid, out.bias + j);
    return {out.a_scale + t0 * out.a_stride, out.a_stride, b_scale, bias, out.bias != nullptr, float_sums,
            static_cast<Out*>(out.out) + t0 * out.ldo + j, out.ldo, __builtin_popcount(valid)};
  }
};

// Tiles of kPackedTileM / LIMBS tokens (the whole rows of each token in one tile).
template <typename Out, int LIMBS>
void gemm_packed_scaled_as(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b, int64_t group_stride,
                           const int32_t* col_sums, int64_t n, const ScaledOutput& out, PrefetchRange next) {
  for_each_packed_tile<kPackedTileM / LIMBS>(
      m / LIMBS, n, next, [&]<int TOKENS, int NG>(int64_t t, int64_t j, int64_t nc, PrefetchRange prefetch) {
        packed_tile_into<TOKENS * LIMBS, NG>(a + t * LIMBS * lda, lda, k, b + j / kPackCols * group_stride,
                                             group_stride, col_sums + j, nc,
                                             ScaledTile<Out, LIMBS>{out, t, j, k <= kFloatDigitsMaxDepth}, prefetch);
      });
}

template <typename Out>
bool gemm_packed_scaled_limbs(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b,
                              int64_t group_stride, const int32_t* col_sums, int64_t n, const ScaledOutput& out,
                              PrefetchRange next) {
  switch (out.limbs) {
    case 1: gemm_packed_scaled_as<Out, 1>(a, lda, m, k, b, group_stride, col_sums, n, out, next); return true;
    case 2: gemm_packed_scaled_as<Out, 2>(a, lda, m, k, b, group_stride, col_sums, n, out, next); return true;
    case 3: gemm_packed_scaled_as<Out, 3>(a, lda, m, k, b, group_stride, col_sums, n, out, next); return true;
    default: return false;
  }
}

bool gemm_packed_scaled(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b, int64_t group_stride,
                        const int32_t* col_sums, int64_t n, const ScaledOutput& out, PrefetchRange next) {
  switch (out.dtype) {
    case DType::kBF16: return gemm_packed_scaled_limbs<bf16>(a, lda, m, k, b, group_stride, col_sums, n, out, next);
    case DType::kF16: return gemm_packed_scaled_limbs<fp16>(a, lda, m, k, b, group_stride, col_sums, n, out, next);
    case DType::kF32: return gemm_packed_scaled_limbs<float>(a, lda, m, k, b, group_stride, col_sums, n, out, next);
  }
  return false;
}

// Per-group W8A16: TOKENS tokens (LIMBS x TOKENS digit rows) by NG column groups of
// accumulators run through K a group at a time, and at each group's end fold into the
// totals in L1 (digits combined as in digits_group_accumulate, the same float operations),
// so no int32 tile is stored and reloaded, and no call is made, per group. `prefetch` is
// spread over the groups.
template <int LIMBS, int TOKENS, int NG>
void grouped_tile(const W8A16GroupedArgs& p, int64_t t0, int64_t j0, PrefetchRange prefetch) {
  constexpr int kRows = LIMBS * TOKENS;
  const int8_t* a = p.a + t0 * LIMBS * p.k;
  const int8_t* b = p.b + j0 / kPackCols * p.group_stride;
  const int64_t n_valid = p.n - j0;
  float* totals = p.totals + t0 * p.ldt + j0;
  #pragma GCC unroll 8
  for (int t = 0; t < TOKENS; ++t) {
    #pragma GCC unroll 8
    for (int g = 0; g < NG; ++g) {
      _mm512_mask_storeu_ps(totals + t * p.ldt + g * kPackCols, group_mask(n_valid, g), _mm512_setzero_ps());
    }
  }
  const int64_t k_groups = (p.k + p.group_size - 1) / p.group_size;
  for (int64_t k0 = 0, q = 0; k0 < p.k; k0 += p.group_size, ++q) {
    const int64_t depth = p.k - k0 < p.group_size ? p.k - k0 : p.group_size;
    // The next group's column sums are a row of N apart: no hardware prefetcher follows
    // that, and the fold below waited on memory for them every group.
    if (q + 1 < k_groups) {
      #pragma GCC unroll 8
      for (int g = 0; g < NG; ++g) {
        _mm_prefetch(reinterpret_cast<const char*>(p.col_sums + (q + 1) * p.sums_stride + j0 + g * kPackCols),
                     _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(p.scale + (q + 1) * p.scale_stride + j0 + g * kPackCols),
                     _MM_HINT_T0);
      }
    }
    __m512i acc[kRows][NG];
    zero(acc);
    accumulate_quads(acc, a + k0, p.k, depth, b + k0 / kPackDepth * kPackBlock, p.group_stride,
                     LinePrefetcher(prefetch.part(q, k_groups), (depth + kPackDepth - 1) / kPackDepth));
    #pragma GCC unroll 8
    for (int g = 0; g < NG; ++g) {
      const __mmask16 valid = group_mask(n_valid, g);
      const __m512i excess = column_excess(p.col_sums + q * p.sums_stride + j0, valid, g);
      const __m512 scale = _mm512_maskz_loadu_ps(valid, p.scale + q * p.scale_stride + j0 + g * kPackCols);
      #pragma GCC unroll 8
      for (int t = 0; t < TOKENS; ++t) {
        __m512i digit[LIMBS];
        #pragma GCC unroll 8
        for (int d = 0; d < LIMBS; ++d) digit[d] = acc[LIMBS * t + d][g];
        const __m512 dot = combine_digit_lanes(digit, excess, depth <= kFloatDigitsMaxDepth);
        float* row = totals + t * p.ldt + g * kPackCols;
        _mm512_mask_storeu_ps(row, valid, _mm512_add_ps(_mm512_maskz_loadu_ps(valid, row), _mm512_mul_ps(dot, scale)));
      }
    }
  }
}

// LIMBS x TOKENS <= 6 rows by 4 column groups: 24 accumulators, as in the packed tile.
template <int LIMBS>
void grouped_tiles(const W8A16GroupedArgs& p) {
  constexpr int kTokens = kPackedTileM / LIMBS;
  for_each_packed_tile<kTokens>(p.tokens, p.n, p.next,
                                [&]<int TOKENS, int NG>(int64_t t, int64_t j, int64_t /*nc*/, PrefetchRange prefetch) {
                                  grouped_tile<LIMBS, TOKENS, NG>(p, t, j, prefetch);
                                });
}

bool w8a16_grouped_tiles(const W8A16GroupedArgs& p) {
  if (p.limbs == 2) {
    grouped_tiles<2>(p);
  } else if (p.limbs == 3) {
    grouped_tiles<3>(p);
  } else {
    return false;
  }
  return true;
}

}  // namespace
}  // namespace avx512_gemm

const Int8GemmKernels& int8_gemm_kernels_avx512() { return avx512_gemm::kGemmTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
