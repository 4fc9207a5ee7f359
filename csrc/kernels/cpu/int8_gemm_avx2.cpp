// AVX2 int8 GEMM. On canonical weights, operands widened to int16 and multiplied with
// vpmaddwd, which is exact for every int8 value; on packed weights, vpmaddubsw with the
// sign trick (packed_tile), which saves the widening shuffles.
#include <immintrin.h>

#include <cstring>

#include "int8_gemm.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace effgen::cpu {
namespace avx2_gemm {
namespace {

#include "simd_avx2.h"
#include "int8_gemm_quads.h"

constexpr int kTileM = 2;  // 2 x 4 accumulators + 4 weight vectors + 1 activation: 13 of 16 ymm
constexpr int kTileN = 4;
constexpr int kDecodeN = 4;
constexpr int64_t kStep = 16;  // int8 values per 256-bit int16 vector

inline __m256i widen(const int8_t* p) {
  return _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}

inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(1, 0, 3, 2)));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, _MM_SHUFFLE(2, 3, 0, 1)));
  return _mm_cvtsi128_si32(s);
}

template <int MR, int NR>
void tile(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k, const int32_t* /*panel_info*/,
          int32_t* c, int64_t ldc) {
  __m256i acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_setzero_si256();
  }
  auto step = [&](const int8_t* const* a_rows, const int8_t* const* b_rows, int64_t kk) {
    __m256i bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = widen(b_rows[j] + kk);
    for (int i = 0; i < MR; ++i) {
      const __m256i av = widen(a_rows[i] + kk);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm256_add_epi32(acc[i][j], _mm256_madd_epi16(av, bv[j]));
    }
  };
  const int8_t* a_rows[MR];
  const int8_t* b_rows[NR];
  for (int i = 0; i < MR; ++i) a_rows[i] = a + i * lda;
  for (int j = 0; j < NR; ++j) b_rows[j] = b + j * ldb;
  int64_t kk = 0;
  for (; kk + kStep <= k; kk += kStep) step(a_rows, b_rows, kk);
  if (kk < k) {  // ragged end of K through zero-padded copies: zeros add nothing
    int8_t a_tail[MR][kStep] = {}, b_tail[NR][kStep] = {};
    const int8_t* a_tail_rows[MR];
    const int8_t* b_tail_rows[NR];
    for (int i = 0; i < MR; ++i) {
      std::memcpy(a_tail[i], a_rows[i] + kk, static_cast<size_t>(k - kk));
      a_tail_rows[i] = a_tail[i];
    }
    for (int j = 0; j < NR; ++j) {
      std::memcpy(b_tail[j], b_rows[j] + kk, static_cast<size_t>(k - kk));
      b_tail_rows[j] = b_tail[j];
    }
    step(a_tail_rows, b_tail_rows, 0);
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = hsum(acc[i][j]);
  }
}

// Stores the first `cols` columns of one row of a 16-column group.
inline void store_group_row(__m256i cols_0_7, __m256i cols_8_15, int64_t cols, int32_t* c) {
  alignas(32) int32_t row[kPackCols];
  _mm256_store_si256(reinterpret_cast<__m256i*>(row), cols_0_7);
  _mm256_store_si256(reinterpret_cast<__m256i*>(row + 8), cols_8_15);
  std::memcpy(c, row, static_cast<size_t>(cols) * sizeof(int32_t));
}

// Columns 0-7 of a group from the pair sums of quarters 0 and 1 (or 8-15 from 2 and 3):
// hadd gives c0 c1 c4 c5 | c2 c3 c6 c7 by 128-bit lane; the permute restores the order.
inline __m256i column_sums(__m256i first, __m256i second) {
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(first, second), _MM_SHUFFLE(3, 1, 2, 0));
}

// Packed weights, exact for all operands: a 16-byte quarter of a block (4 columns x 4
// values of K) widens to int16 and meets the row's 4 activations (widened, repeated 4 times)
// in vpmaddwd: int32 lanes hold pair sums (column c, K pair p) in the order c0p0 c0p1 c1p0
// c1p1 | c2p0 c2p1 c3p0 c3p1, added up at the end. The widening shuffles make it slower
// than packed_tile below, so it takes only the tiles packed_tile cannot.
template <int MR>  // 2 rows x 4 quarters = 8 accumulators + 4 weight vectors
void packed_tile_widened(const int8_t* a, int64_t lda, int64_t k, const int8_t* b, int64_t cols, int32_t* c,
                         int64_t ldc) {
  constexpr int kQuarters = 4;
  __m256i acc[MR][kQuarters];
  for (int i = 0; i < MR; ++i) {
    for (int q = 0; q < kQuarters; ++q) acc[i][q] = _mm256_setzero_si256();
  }
  auto step = [&](int64_t kq, auto quad) __attribute__((always_inline)) {
    __m256i bv[kQuarters];
    for (int q = 0; q < kQuarters; ++q) bv[q] = widen(b + kq * kPackBlock + q * 16);
    for (int i = 0; i < MR; ++i) {
      const __m256i av = _mm256_broadcastq_epi64(_mm_cvtepi8_epi16(_mm_cvtsi32_si128(quad(i))));
      for (int q = 0; q < kQuarters; ++q) acc[i][q] = _mm256_add_epi32(acc[i][q], _mm256_madd_epi16(av, bv[q]));
    }
  };
  for_each_quad(a, lda, k, step);
  for (int i = 0; i < MR; ++i) {
    store_group_row(column_sums(acc[i][0], acc[i][1]), column_sums(acc[i][2], acc[i][3]), cols, c + i * ldc);
  }
}

// Packed weights with vpmaddubsw, which multiplies unsigned by signed bytes into saturating
// int16 pair sums. Sign trick: |x| is the unsigned operand and x's sign moves onto the
// weights (vpsignb), so a pair sum is at most 2 * 128 * 127 < 2^15 in magnitude and exact,
// unless a weight is -128 (negating it wraps): such tiles, seen by a running byte minimum of
// the weights, are redone by packed_tile_widened. A 32-byte half of a block is 8 columns x 4
// values of K, so vpmaddwd with ones leaves one int32 lane per column, in order.
constexpr int kPackedTileM = 2;  // measured faster than 3 or 4 rows on Zen 4
constexpr int kPackedTileGroups = 1;

template <int MR, int NG>
void packed_tile(const int8_t* a, int64_t lda, int64_t k, const int8_t* b, int64_t /*group_stride*/,
                 const int32_t* /*col_sums*/, int64_t n_valid, int32_t* c, int64_t ldc) {
  static_assert(NG == 1, "one column group per AVX2 tile");
  constexpr int kHalves = 2;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i acc[MR][kHalves], weight_min = _mm256_setzero_si256();
  for (int i = 0; i < MR; ++i) {
    for (int h = 0; h < kHalves; ++h) acc[i][h] = _mm256_setzero_si256();
  }
  auto step = [&](int64_t kq, auto quad) __attribute__((always_inline)) {
    __m256i bv[kHalves];
    for (int h = 0; h < kHalves; ++h) {
      bv[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kq * kPackBlock + h * 32));
      weight_min = _mm256_min_epi8(weight_min, bv[h]);
    }
    for (int i = 0; i < MR; ++i) {
      const __m256i x = _mm256_set1_epi32(quad(i)), x_abs = _mm256_abs_epi8(x);
      for (int h = 0; h < kHalves; ++h) {
        const __m256i pairs = _mm256_maddubs_epi16(x_abs, _mm256_sign_epi8(bv[h], x));
        acc[i][h] = _mm256_add_epi32(acc[i][h], _mm256_madd_epi16(pairs, ones));
      }
    }
  };
  for_each_quad(a, lda, k, step);
  const int64_t cols = n_valid < kPackCols ? n_valid : kPackCols;
  if (_mm256_movemask_epi8(_mm256_cmpeq_epi8(weight_min, _mm256_set1_epi8(INT8_MIN))) != 0) {
    return packed_tile_widened<MR>(a, lda, k, b, cols, c, ldc);
  }
  for (int i = 0; i < MR; ++i) store_group_row(acc[i][0], acc[i][1], cols, c + i * ldc);
}

// W8A16 register tile: 1 x 4 totals + 1 x 4 group partials + 4 weight vectors.
constexpr int kW16M = 1;
constexpr int kW16N = 4;
constexpr int kW16ChannelM = 2;  // per-channel tile: 2 x 4 accumulators

// Exact products need no per-strip correction.
const int32_t* prepare_panel(const int8_t*, int64_t, int64_t, int64_t, int32_t*) { return nullptr; }

#include "int8_gemm_impl.h"

// No register tile for per-group W8A16: the composition in int8_gemm_impl.h runs it.
bool w8a16_grouped_tiles(const W8A16GroupedArgs&) { return false; }

}  // namespace
}  // namespace avx2_gemm

const Int8GemmKernels& int8_gemm_kernels_avx2() { return avx2_gemm::kGemmTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
