// AVX2 int8 GEMM. On canonical weights, operands widened to int16 and multiplied with
// vpmaddwd, which is exact for every int8 value; on packed weights, vpmaddubsw with the
// sign trick (sign_trick_products) for a few rows, and batches widened to int16 once
// (gemm_packed_rows); 16-bit W8A16 activations as int16 rows meet packed weights widened to
// int16 (gemm_packed_i16).
#include <immintrin.h>

#include <cstdlib>
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

// Products of MR activation rows with one 16-column group of packed weights over k values
// of K: cols[i][0] holds row i's columns 0-7, cols[i][1] columns 8-15.
template <int MR>
using GroupColumns = __m256i[MR][2];

// Columns 0-7 of a group from the pair sums of quarters 0 and 1 (or 8-15 from 2 and 3):
// hadd gives c0 c1 c4 c5 | c2 c3 c6 c7 by 128-bit lane; the permute restores the order.
inline __m256i column_sums(__m256i first, __m256i second) {
  return _mm256_permute4x64_epi64(_mm256_hadd_epi32(first, second), _MM_SHUFFLE(3, 1, 2, 0));
}

// Exact for all operands: a 16-byte quarter of a block (4 columns x 4 values of K) widens to
// int16 and meets the row's 4 activations (widened, repeated 4 times) in vpmaddwd: int32
// lanes hold pair sums (column c, K pair p) in the order c0p0 c0p1 c1p0 c1p1 | c2p0 c2p1
// c3p0 c3p1, added up at the end. The widening shuffles share a pipe with the multiplies,
// which makes it slower than sign_trick_products; it takes only what that one cannot.
template <int MR>  // 2 rows x 4 quarters = 8 accumulators + 4 weight vectors
void widened_products(GroupColumns<MR>& cols, const int8_t* a, int64_t lda, int64_t k, const int8_t* b) {
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
    cols[i][0] = column_sums(acc[i][0], acc[i][1]);
    cols[i][1] = column_sums(acc[i][2], acc[i][3]);
  }
}

// vpmaddubsw multiplies unsigned by signed bytes into saturating int16 pair sums. Sign
// trick: |x| is the unsigned operand and x's sign moves onto the weights (vpsignb), so a pair
// sum is at most 2 * 128 * 127 < 2^15 in magnitude and exact, unless a weight is -128
// (negating it wraps): then, seen by a running byte minimum of the weights, it returns false
// and cols are not the products. A 32-byte half of a block is 8 columns x 4 values of K, so
// vpmaddwd with ones leaves one int32 lane per column, in order.
template <int MR, typename Prefetch>
__attribute__((always_inline)) inline bool sign_trick_products(GroupColumns<MR>& cols, const int8_t* a, int64_t lda,
                                                               int64_t k, const int8_t* b, const Prefetch& prefetch) {
  constexpr int kHalves = 2;
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i weight_min = _mm256_setzero_si256();
  for (int i = 0; i < MR; ++i) {
    for (int h = 0; h < kHalves; ++h) cols[i][h] = _mm256_setzero_si256();
  }
  auto step = [&](int64_t kq, auto quad) __attribute__((always_inline)) {
    prefetch(kq);
    __m256i bv[kHalves];
    for (int h = 0; h < kHalves; ++h) {
      bv[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b + kq * kPackBlock + h * 32));
      weight_min = _mm256_min_epi8(weight_min, bv[h]);
    }
    for (int i = 0; i < MR; ++i) {
      const __m256i x = _mm256_set1_epi32(quad(i)), x_abs = _mm256_abs_epi8(x);
      for (int h = 0; h < kHalves; ++h) {
        const __m256i pairs = _mm256_maddubs_epi16(x_abs, _mm256_sign_epi8(bv[h], x));
        cols[i][h] = _mm256_add_epi32(cols[i][h], _mm256_madd_epi16(pairs, ones));
      }
    }
  };
  for_each_quad(a, lda, k, step);
  return _mm256_movemask_epi8(_mm256_cmpeq_epi8(weight_min, _mm256_set1_epi8(INT8_MIN))) == 0;
}

template <int MR, typename Prefetch = NoPrefetch>
__attribute__((always_inline)) inline void group_products(GroupColumns<MR>& cols, const int8_t* a, int64_t lda,
                                                          int64_t k, const int8_t* b,
                                                          const Prefetch& prefetch = Prefetch()) {
  if (!sign_trick_products<MR>(cols, a, lda, k, b, prefetch)) widened_products<MR>(cols, a, lda, k, b);
}

constexpr int kPackedTileM = 2;  // measured faster than 3 or 4 rows on Zen 4
constexpr int kPackedTileGroups = 1;

// The first n_valid (maybe more than 16) of a group's columns, row i at c + i * ldc.
template <int MR>
void store_columns(const GroupColumns<MR>& cols, int64_t n_valid, int32_t* c, int64_t ldc) {
  const int64_t valid = n_valid < kPackCols ? n_valid : kPackCols;
  for (int i = 0; i < MR; ++i) {
    alignas(32) int32_t row[kPackCols];
    _mm256_store_si256(reinterpret_cast<__m256i*>(row), cols[i][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(row + 8), cols[i][1]);
    std::memcpy(c + i * ldc, row, static_cast<size_t>(valid) * sizeof(int32_t));
  }
}

template <int MR, int NG>
void packed_tile(const int8_t* a, int64_t lda, int64_t k, const int8_t* b, int64_t /*group_stride*/,
                 const int32_t* /*col_sums*/, int64_t n_valid, int32_t* c, int64_t ldc,
                 PrefetchRange prefetch) {
  static_assert(NG == 1, "one column group per AVX2 tile");
  GroupColumns<MR> cols;
  const int64_t steps = (k + kPackDepth - 1) / kPackDepth;
  with_prefetcher(prefetch, steps, [&](const auto& prefetcher) __attribute__((always_inline)) {
    group_products<MR>(cols, a, lda, k, b, prefetcher);
  });
  store_columns<MR>(cols, n_valid, c, ldc);
}

// W8A16 register tile: 1 x 4 totals + 1 x 4 group partials + 4 weight vectors.
constexpr int kW16M = 1;
constexpr int kW16N = 4;
constexpr int kW16ChannelM = 2;  // per-channel tile: 2 x 4 accumulators

// Exact products need no per-strip correction.
const int32_t* prepare_panel(const int8_t*, int64_t, int64_t, int64_t, int32_t*) { return nullptr; }

void gemm_packed_rows(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b, int64_t group_stride,
                      const int32_t* col_sums, int64_t n, int32_t* c, int64_t ldc, PrefetchRange next);
constexpr GemmPacked kGemmPacked = gemm_packed_rows;
constexpr GemmPackedScaled kGemmPackedScaled = nullptr;  // the op's epilogue_row after gemm_packed
void gemm_packed_i16(const int16_t* a, int64_t lda, int64_t m, int64_t k, int limbs, const int8_t* b,
                     int64_t group_stride, int64_t n, float* c, int64_t ldc);
constexpr GemmPackedI16 kGemmPackedI16 = gemm_packed_i16;
void w8a16_packed_grouped_i16(const int16_t* a, int64_t lda, int limbs, const W8A16GroupedArgs& p);
constexpr W8A16GroupedI16 kW8A16PackedGroupedI16 = w8a16_packed_grouped_i16;

#include "int8_gemm_impl.h"

// ---- W8A8 batches on int16 (gemm_packed_rows) -------------------------------------------
// The sign trick spends 3 multiply-pipe ops on 32 products (vpsignb, vpmaddubsw, vpmaddwd),
// and a vpabsb per row and quad: on Zen 4 all four share 2 of the 4 vector pipes (measured:
// 2 a cycle together, while vpaddd / vpxor / vpminsb go beside them), which holds
// packed_tile to about 7 cycles per 128 products; the multiplies alone would take 4.
// Batches of kWidenedMinRows rows or more widen the block's activation rows once, and each
// column group's packed weights once per block, to int16 (a thread's scratch), and run on
// vpmaddwd alone: 16 products a multiply, nothing else on those pipes. The widened weights
// are laid out by K pair: pair p's 16 columns as two vectors of 8 columns x (k = 2p, 2p + 1),
// so a row's pair broadcast to every int32 lane meets them in one vpmaddwd each and lane j
// sums column j itself, with no reduction across lanes at the end. Exact for every int8
// value, -128 included (a pair sum is at most 2 * 128^2), so no fallback is needed; lanes
// wrap modulo 2^32 like any int32 sum and hold the exact result wherever it fits.
// Zen 4, one thread, 96 x 4096 x K (benchmarks/kernels/int8_gemm_bench.cpp): 150-160 against
// the sign trick's 120-125 GOP/s, about 5.8 cycles per 128 products, where each vpmaddwd's
// vpaddd takes a multiply pipe's turn often enough (a vpmaddwd + vpaddd pair runs at 0.75
// cycles, measured) that 4, 5 or 6 rows, or 3 rows x 16 columns of the block layout, all ran
// alike; vpmaddubsw's 7-bit form (fbgemm's) is not exact for int8 activations.
constexpr int kWidenedTileM = 4;  // 4 x 2 accumulators + 2 weight vectors + a row's pair + a product
// The weights' widening is paid per column group and block of rows: against the sign trick
// (K = 1024, measured) 0.74x at 4 rows, 0.95x at 8 and 10, 1.04x at 12, 1.1x at 16, 1.16x at 24.
constexpr int64_t kWidenedMinRows = 12;

// acc + v into acc's register. As an intrinsic, GCC adds into a fresh register and copies it
// back: a move per accumulator per step, which the front end pays for. (By value: through a
// reference, GCC kept the accumulators on the stack.)
__attribute__((always_inline)) inline __m256i add_in_place(__m256i acc, __m256i v) {
  __asm__("vpaddd %1, %0, %0" : "+x"(acc) : "x"(v));
  return acc;
}

// cols = rows of MR activations (int16, `pairs` K pairs, lda apart) times one column
// group's widened weights b (pair-major, above), int32 lane j of cols[i][h] column 8 h + j;
// prefetch(s) at step s.
template <int MR, typename Prefetch = NoPrefetch>
__attribute__((always_inline)) inline void pair_products(GroupColumns<MR>& cols, const int16_t* a, int64_t lda,
                                                         const int16_t* b, int64_t pairs,
                                                         const Prefetch& prefetch = Prefetch()) {
  constexpr int kHalves = 2;
  for (int i = 0; i < MR; ++i) {
    for (int h = 0; h < kHalves; ++h) cols[i][h] = _mm256_setzero_si256();
  }
  for (int64_t p = 0; p < pairs; ++p) {
    prefetch(p);
    __m256i w[kHalves];
    for (int h = 0; h < kHalves; ++h) {
      w[h] = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + p * 2 * kPackCols + 16 * h));
    }
    for (int i = 0; i < MR; ++i) {
      int32_t pair;
      std::memcpy(&pair, a + i * lda + 2 * p, sizeof(pair));
      const __m256i x = _mm256_set1_epi32(pair);
      for (int h = 0; h < kHalves; ++h) cols[i][h] = add_in_place(cols[i][h], _mm256_madd_epi16(w[h], x));
    }
  }
}

template <int MR, typename Prefetch>
void widened_tile(const int16_t* a, int64_t lda, const int16_t* b, int64_t pairs, int64_t n_valid, int32_t* c,
                  int64_t ldc, const Prefetch& prefetch) {
  GroupColumns<MR> cols;
  pair_products<MR>(cols, a, lda, b, pairs, prefetch);
  store_columns<MR>(cols, n_valid, c, ldc);
}

// One column group's packed blocks (quads of them) as int16 pairs (above) at `pairs`: a
// quarter of a block (4 columns x 4 values of K) widens to int32 lanes (c, pair) for c < 4,
// which the permute splits into the quad's first pair and its second.
void widen_group(const int8_t* blocks, int64_t quads, int16_t* pairs) {
  const __m256i by_pair = _mm256_setr_epi32(0, 2, 4, 6, 1, 3, 5, 7);
  for (int64_t kq = 0; kq < quads; ++kq) {
    int16_t* first = pairs + kq * 4 * kPackCols;  // pair 2 kq; pair 2 kq + 1 follows
    for (int q = 0; q < 4; ++q) {
      const __m256i split = _mm256_permutevar8x32_epi32(widen(blocks + kq * kPackBlock + 16 * q), by_pair);
      _mm_store_si128(reinterpret_cast<__m128i*>(first + 8 * q), _mm256_castsi256_si128(split));
      _mm_store_si128(reinterpret_cast<__m128i*>(first + 2 * kPackCols + 8 * q), _mm256_extracti128_si256(split, 1));
    }
  }
}

// count int8 values (a multiple of 16) as int16.
void widen_values(const int8_t* from, int64_t count, int16_t* to) {
  for (int64_t i = 0; i < count; i += 16) _mm256_storeu_si256(reinterpret_cast<__m256i*>(to + i), widen(from + i));
}

// m rows of k int8 values (lda apart) as int16 rows of `depth` (>= k) values, zero past k.
void widen_rows(const int8_t* a, int64_t lda, int64_t m, int64_t k, int64_t depth, int16_t* rows) {
  const int64_t vector_part = k / 16 * 16;
  for (int64_t i = 0; i < m; ++i) {
    int16_t* row = rows + i * depth;
    widen_values(a + i * lda, vector_part, row);
    for (int64_t j = vector_part; j < depth; ++j) row[j] = j < k ? a[i * lda + j] : 0;
  }
}

// A thread's int16 scratch for gemm_packed_rows: kept between calls up to kKeptScratchBytes
// (96 rows at K = 11008 take 2.5 MB), larger ones freed after their call. malloc, not
// std::vector: no std:: templates in ISA code (an instantiation compiled for AVX2 could be
// the one the linker keeps for every caller).
constexpr int64_t kKeptScratchBytes = int64_t{16} << 20;

class WidenedScratch {
 public:
  WidenedScratch() = default;
  WidenedScratch(const WidenedScratch&) = delete;
  WidenedScratch& operator=(const WidenedScratch&) = delete;
  ~WidenedScratch() { std::free(data_); }

  // At least `count` values, 64-byte aligned (a 32-byte load across two cache lines costs
  // two), or nullptr where memory ran out.
  int16_t* at_least(int64_t count) {
    if (count > capacity_) {
      std::free(data_);
      const int64_t bytes = (count * static_cast<int64_t>(sizeof(int16_t)) + 63) / 64 * 64;
      data_ = static_cast<int16_t*>(std::aligned_alloc(64, static_cast<size_t>(bytes)));
      capacity_ = data_ != nullptr ? count : 0;
    }
    return data_;
  }

  void trim() {
    if (capacity_ * static_cast<int64_t>(sizeof(int16_t)) > kKeptScratchBytes) {
      std::free(data_);
      data_ = nullptr;
      capacity_ = 0;
    }
  }

 private:
  int16_t* data_ = nullptr;
  int64_t capacity_ = 0;
};

// The AVX2 table's gemm_packed (kGemmPacked): batches on int16 (above); fewer rows, or no
// memory for the scratch, on the sign trick (int8_gemm_impl.h's gemm_packed).
void gemm_packed_rows(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b, int64_t group_stride,
                      const int32_t* col_sums, int64_t n, int32_t* c, int64_t ldc, PrefetchRange next) {
  const int64_t quads = (k + kPackDepth - 1) / kPackDepth, depth = quads * kPackDepth;
  thread_local WidenedScratch scratch;
  // One column group's blocks (kPackCols x depth values: a multiple of 64 bytes), then the rows.
  int16_t* weights = m >= kWidenedMinRows ? scratch.at_least((kPackCols + m) * depth) : nullptr;
  if (weights == nullptr) return gemm_packed(a, lda, m, k, b, group_stride, col_sums, n, c, ldc, next);
  int16_t* rows = weights + kPackCols * depth;
  widen_rows(a, lda, m, k, depth, rows);
  const int64_t row_tiles = (m + kWidenedTileM - 1) / kWidenedTileM;
  const int64_t tiles = row_tiles * ((n + kPackCols - 1) / kPackCols);
  for (int64_t j = 0, tile = 0; j < n; j += kPackCols) {
    widen_group(b + j / kPackCols * group_stride, quads, weights);
    for (int64_t i = 0; i < m; i += kWidenedTileM, ++tile) {
      const int64_t mr = m - i < kWidenedTileM ? m - i : kWidenedTileM;
      with_prefetcher(next.part(tile, tiles), depth / 2, [&](const auto& prefetcher) __attribute__((always_inline)) {
        for_tile_edge<kWidenedTileM, 1>(mr, 1, [&]<int MR, int>() {
          widened_tile<MR>(rows + i * depth, depth, weights, depth / 2, n - j, c + i * ldc + j, ldc, prefetcher);
        });
      });
    }
  }
  scratch.trim();
}

// ---- W8A16 activations as int16 rows (gemm_packed_i16) ---------------------------------
// As int8 digit rows, a token costs a sign-trick product per digit (3 multiply-pipe ops per
// 32 weights; 2 digits for 16-bit activations, 3 for fp32). As int16 rows (1 a token, or 2
// for fp32: the leading limb, then the next, base 2^15) it costs a vpmaddwd per 16 products
// and row. Per channel (gemm_packed_i16) the rows meet the weights widened by K pair
// (widen_group, pair_products) a chunk of kI16ChunkPairs pairs at a time: the chunk's
// weights (16 KB) stay in L1 for every row tile, and the int32 lanes (a pair sum is at most
// 2 * split_max(2) * 128 in magnitude: int16 rows hold at most split_max(2)) go to int64
// column sums before they could overflow. Per group (w8a16_packed_grouped_i16, below) a
// quarter of a packed block (4 columns x 4 values of K) widens to int16 lanes 4c + r in the
// loop and meets the row's 4 activations repeated, so int32 lane 2c + p holds column c's
// pair p (i16_products).
constexpr int kI16TileM = 2;  // per group: 2 x 4 accumulators + 2 activations + a widened weight vector
constexpr int64_t kI16ChunkPairs = 256;
static_assert(kI16ChunkPairs * 2 * split_max(2) * 128 <= INT32_MAX, "a chunk's int32 lanes must not overflow");
constexpr int64_t kI16BlockRows = 48;  // rows whose int64 sums a block keeps (a multiple of 2 limbs)

// sums[i][c] += int32 column c of cols[i].
template <int MR>
void add_columns(const GroupColumns<MR>& cols, int64_t (*sums)[kPackCols]) {
  for (int i = 0; i < MR; ++i) {
    alignas(32) int32_t lanes[kPackCols];
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), cols[i][0]);
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes + 8), cols[i][1]);
    for (int64_t col = 0; col < kPackCols; ++col) sums[i][col] += lanes[col];
  }
}

// `rows` int16 rows (a multiple of limbs, at most kI16BlockRows) times one column group's
// packed blocks: a token's limbs combine in int64, exactly, before the one rounding to float.
void i16_row_block(const int16_t* a, int64_t lda, int64_t rows, int64_t k, int limbs, const int8_t* group,
                   int64_t n_valid, float* c, int64_t ldc) {
  const int64_t quads = (k + kPackDepth - 1) / kPackDepth, chunk_quads = kI16ChunkPairs / 2;
  alignas(64) int16_t weights[kI16ChunkPairs * 2 * kPackCols];
  int64_t sums[kI16BlockRows][kPackCols] = {};
  for (int64_t q0 = 0; q0 < quads; q0 += chunk_quads) {
    const int64_t chunk = quads - q0 < chunk_quads ? quads - q0 : chunk_quads;
    widen_group(group + q0 * kPackBlock, chunk, weights);
    for (int64_t i = 0; i < rows; i += kWidenedTileM) {
      const int64_t mr = rows - i < kWidenedTileM ? rows - i : kWidenedTileM;
      for_tile_edge<kWidenedTileM, 1>(mr, 1, [&]<int MR, int>() {
        GroupColumns<MR> cols;
        pair_products<MR>(cols, a + i * lda + q0 * kPackDepth, lda, weights, 2 * chunk);
        add_columns<MR>(cols, sums + i);
      });
    }
  }
  const int64_t valid = n_valid < kPackCols ? n_valid : kPackCols;
  for (int64_t t = 0; t < rows / limbs; ++t) {
    for (int64_t j = 0; j < valid; ++j) {
      int64_t dot = sums[t * limbs][j];  // at most 2^22 * 128 * k: far below 2^63
      for (int l = 1; l < limbs; ++l) dot = dot * (int64_t{1} << 15) + sums[t * limbs + l][j];
      c[t * ldc + j] = static_cast<float>(dot);
    }
  }
}

// Column groups outermost, as in gemm_packed; the m tokens' rows in blocks of kI16BlockRows.
void gemm_packed_i16(const int16_t* a, int64_t lda, int64_t m, int64_t k, int limbs, const int8_t* b,
                     int64_t group_stride, int64_t n, float* c, int64_t ldc) {
  static_assert(kI16BlockRows % 2 == 0, "whole fp32 tokens per block");
  const int64_t rows = m * limbs;
  for (int64_t j = 0; j < n; j += kPackCols) {
    for (int64_t r = 0; r < rows; r += kI16BlockRows) {
      i16_row_block(a + r * lda, lda, rows - r < kI16BlockRows ? rows - r : kI16BlockRows, k, limbs,
                    b + j / kPackCols * group_stride, n - j, c + r / limbs * ldc + j, ldc);
    }
  }
}

// acc[i][q] = the int32 pair-sum lanes (W8A16 section above) of int16 row i with quarter kFirst + q of the
// packed blocks of K quads [kq0, kq1).
template <int MR, int kQuarters = 4, int kFirst = 0>
__attribute__((always_inline)) inline void i16_products(__m256i (&acc)[MR][kQuarters], const int16_t* a, int64_t lda,
                                                        const int8_t* b, int64_t kq0, int64_t kq1) {
  for (int i = 0; i < MR; ++i) {
    for (int q = 0; q < kQuarters; ++q) acc[i][q] = _mm256_setzero_si256();
  }
  for (int64_t kq = kq0; kq < kq1; ++kq) {
    const int8_t* block = b + kq * kPackBlock;
    __m256i x[MR];
    for (int i = 0; i < MR; ++i) {
      int64_t quad;
      std::memcpy(&quad, a + i * lda + kq * kPackDepth, sizeof(quad));
      x[i] = _mm256_set1_epi64x(quad);
    }
    for (int q = 0; q < kQuarters; ++q) {
      const __m256i w =
          _mm256_cvtepi8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(block + 16 * (kFirst + q))));
      for (int i = 0; i < MR; ++i) acc[i][q] = _mm256_add_epi32(acc[i][q], _mm256_madd_epi16(w, x[i]));
    }
  }
}

// Lanes of 8 columns from `first` on, of which `valid` (maybe fewer than 8, maybe none) exist.
inline __m256i column_lanes(int64_t first, int64_t valid) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(valid - first)),
                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// Per-group W8A16 for MR tokens and one 16-column group: dots(k0, depth, dot) gives each
// token's products over a group as floats, exact sums rounded once, in registers; they go
// into the totals with the float operations of digits_group_accumulate in the same order, so
// the result is the composition's bit for bit; no int32 tile is stored, no call made, per group.
template <int MR, typename Dots>
__attribute__((always_inline)) inline void grouped_tile(const W8A16GroupedArgs& p, int64_t t0, int64_t j0,
                                                        const Dots& dots) {
  constexpr int kHalves = 2;
  const int64_t valid = p.n - j0 < kPackCols ? p.n - j0 : kPackCols;
  __m256i lanes[kHalves];
  __m256 total[MR][kHalves];
  for (int h = 0; h < kHalves; ++h) {
    lanes[h] = column_lanes(8 * h, valid);
    for (int i = 0; i < MR; ++i) total[i][h] = _mm256_setzero_ps();
  }
  for (int64_t k0 = 0, q = 0; k0 < p.k; k0 += p.group_size, ++q) {
    __m256 dot[MR][kHalves];
    dots(k0, p.k - k0 < p.group_size ? p.k - k0 : p.group_size, dot);
    const float* scale = p.scale + q * p.scale_stride + j0;
    for (int h = 0; h < kHalves; ++h) {
      const __m256 group_scale = _mm256_maskload_ps(scale + 8 * h, lanes[h]);
      for (int i = 0; i < MR; ++i) total[i][h] = _mm256_add_ps(total[i][h], _mm256_mul_ps(dot[i][h], group_scale));
    }
  }
  for (int i = 0; i < MR; ++i) {
    float* out = p.totals + (t0 + i) * p.ldt + j0;
    for (int h = 0; h < kHalves; ++h) _mm256_maskstore_ps(out + 8 * h, lanes[h], total[i][h]);
  }
}

// One token of 2 digit rows: the digits' int32 sums (exact below 2^24 for groups of at most
// kFloatDigitsMaxDepth) combined as high * 256 + low, which rounds once.
void grouped_digits_tile(const W8A16GroupedArgs& p, int64_t token, int64_t j0) {
  constexpr int kDigits = 2;
  const int8_t* a = p.a + token * kDigits * p.k;
  const int8_t* b = p.b + j0 / kPackCols * p.group_stride;
  grouped_tile<1>(p, token, j0, [&](int64_t k0, int64_t depth, __m256 (&dot)[1][2]) {
    GroupColumns<kDigits> digits;
    group_products<kDigits>(digits, a + k0, p.k, depth, b + k0 / kPackDepth * kPackBlock);
    for (int h = 0; h < 2; ++h) {
      const __m256 high = _mm256_cvtepi32_ps(digits[0][h]), low = _mm256_cvtepi32_ps(digits[1][h]);
      dot[0][h] = _mm256_add_ps(_mm256_mul_ps(high, _mm256_set1_ps(256.0f)), low);
    }
  });
}

// 16-bit activations (2 digits) and groups whose digit sums are exact floats; the rest (fp32
// activations, longer groups) goes to the composition in int8_gemm_impl.h.
bool w8a16_grouped_tiles(const W8A16GroupedArgs& p) {
  if (p.limbs != 2 || p.group_size > kFloatDigitsMaxDepth) return false;
  // Column groups outermost, as in gemm_packed: a group's weights stay in L2 for every token.
  for (int64_t j = 0; j < p.n; j += kPackCols) {
    for (int64_t t = 0; t < p.tokens; ++t) grouped_digits_tile(p, t, j);
  }
  return true;
}

// Per group, int16 rows' pair-sum lanes are summed into columns in int32 (exact: a group of
// kGroupedI16MaxDepth values keeps two lanes' sum below 2^31), then rounded once to float:
// directly for one row per token, through double for the two limb rows of an fp32 token.
static_assert(kGroupedI16MaxDepth / kPackDepth * 2 * (2 * split_max(2) * 128) <= INT32_MAX,
              "a group's column sums must fit int32");

// Columns of one fp32 token's two limb rows (base 2^15, leading first) combined exactly in
// double (far below 2^53), rounded once.
inline __m256 combine_two_limbs(__m256i high, __m256i low) {
  auto four = [](__m128i h, __m128i l) {
    return _mm256_cvtpd_ps(
        _mm256_add_pd(_mm256_mul_pd(_mm256_cvtepi32_pd(h), _mm256_set1_pd(32768.0)), _mm256_cvtepi32_pd(l)));
  };
  return _mm256_set_m128(four(_mm256_extracti128_si256(high, 1), _mm256_extracti128_si256(low, 1)),
                         four(_mm256_castsi256_si128(high), _mm256_castsi256_si128(low)));
}

// dot[t][h] for the MR / kLimbs tokens of MR rows: columns 8h..8h+7 over K quads [kq0, kq1),
// from the pair-sum lanes of quarters kFirst and kFirst + 1 (h = kFirst / 2), or of all
// four (h = 0, 1).
template <int MR, int kLimbs, int kQuarters, int kFirst = 0>
__attribute__((always_inline)) inline void i16_group_dots(__m256 (&dot)[MR / kLimbs][2], const int16_t* a,
                                                          int64_t lda, const int8_t* b, int64_t kq0, int64_t kq1) {
  __m256i acc[MR][kQuarters];
  i16_products<MR, kQuarters, kFirst>(acc, a, lda, b, kq0, kq1);
  for (int t = 0; t < MR / kLimbs; ++t) {
    for (int q = 0; q < kQuarters; q += 2) {
      const int r = t * kLimbs;
      const __m256i lead = column_sums(acc[r][q], acc[r][q + 1]);
      if constexpr (kLimbs == 1) {
        dot[t][(kFirst + q) / 2] = _mm256_cvtepi32_ps(lead);
      } else {
        dot[t][(kFirst + q) / 2] = combine_two_limbs(lead, column_sums(acc[r + 1][q], acc[r + 1][q + 1]));
      }
    }
  }
}

// MR rows (MR / kLimbs tokens). Two rows take a group's 16 columns in two passes of 8 (the
// second reads the group's blocks from L1): with all four quarters' accumulators next to the
// tile's totals, GCC spilled one, and its store-to-load round trip every step cost 1.4x
// (measured). One row takes all 16.
template <int MR, int kLimbs>
void grouped_i16_tile(const int16_t* a, int64_t lda, const W8A16GroupedArgs& p, int64_t t0, int64_t j0) {
  constexpr int kTokens = MR / kLimbs;
  const int8_t* b = p.b + j0 / kPackCols * p.group_stride;
  grouped_tile<kTokens>(p, t0, j0, [&](int64_t k0, int64_t depth, __m256 (&dot)[kTokens][2]) {
    const int64_t kq0 = k0 / kPackDepth, kq1 = kq0 + (depth + kPackDepth - 1) / kPackDepth;
    if constexpr (MR == 1) {
      i16_group_dots<MR, kLimbs, 4>(dot, a, lda, b, kq0, kq1);
    } else {
      i16_group_dots<MR, kLimbs, 2, 0>(dot, a, lda, b, kq0, kq1);
      i16_group_dots<MR, kLimbs, 2, 2>(dot, a, lda, b, kq0, kq1);
    }
  });
}

void w8a16_packed_grouped_i16(const int16_t* a, int64_t lda, int limbs, const W8A16GroupedArgs& p) {
  for (int64_t j = 0; j < p.n; j += kPackCols) {
    if (limbs == 2) {  // one fp32 token per 2-row tile
      for (int64_t t = 0; t < p.tokens; ++t) grouped_i16_tile<2, 2>(a + 2 * t * lda, lda, p, t, j);
      continue;
    }
    for (int64_t t = 0; t < p.tokens; t += kI16TileM) {
      const int64_t mr = p.tokens - t < kI16TileM ? p.tokens - t : kI16TileM;
      for_tile_edge<kI16TileM, 1>(mr, 1, [&]<int MR, int>() { grouped_i16_tile<MR, 1>(a + t * lda, lda, p, t, j); });
    }
  }
}

}  // namespace
}  // namespace avx2_gemm

const Int8GemmKernels& int8_gemm_kernels_avx2() { return avx2_gemm::kGemmTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
