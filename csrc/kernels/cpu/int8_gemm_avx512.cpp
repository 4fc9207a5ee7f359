// AVX-512 VNNI int8 GEMM. vpdpbusd multiplies unsigned by signed bytes, so activations are
// shifted to unsigned (a + 128, an XOR of the sign bit) and the excess 128 * sum(b) is
// accumulated alongside with the same instruction and subtracted at the end.
#include <immintrin.h>

#include <cstring>

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
void packed_tile(const int8_t* a, int64_t lda, int64_t k, const int8_t* b, int64_t group_stride,
                 const int32_t* col_sums, int64_t n_valid, int32_t* c, int64_t ldc) {
  const __m512i sign_bit = _mm512_set1_epi8(static_cast<char>(0x80));
  __m512i acc[MR][NG];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    #pragma GCC unroll 8
    for (int g = 0; g < NG; ++g) acc[i][g] = _mm512_setzero_si512();
  }
  // quad(i): the 4 activation bytes of row i as one int32.
  auto step = [&](int64_t kq, auto quad) __attribute__((always_inline)) {
    __m512i bv[NG];
    #pragma GCC unroll 8
    for (int g = 0; g < NG; ++g) bv[g] = _mm512_loadu_si512(b + g * group_stride + kq * kPackBlock);
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_xor_si512(_mm512_set1_epi32(quad(i)), sign_bit);
      #pragma GCC unroll 8
      for (int g = 0; g < NG; ++g) dpbusd(acc[i][g], av, bv[g]);
    }
  };
  for_each_quad(a, lda, k, step);
  #pragma GCC unroll 8
  for (int g = 0; g < NG; ++g) {
    const int64_t cols = n_valid - g * kPackCols;
    const __mmask16 valid = cols >= kPackCols ? __mmask16(0xFFFF) : __mmask16((1u << cols) - 1);
    const __m512i excess = _mm512_slli_epi32(_mm512_maskz_loadu_epi32(valid, col_sums + g * kPackCols), 7);
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      _mm512_mask_storeu_epi32(c + i * ldc + g * kPackCols, valid, _mm512_sub_epi32(acc[i][g], excess));
    }
  }
}

// W8A16 register tile: 2 x 4 totals + 2 x 4 group partials + 4 weight vectors.
constexpr int kW16M = 2;
constexpr int kW16N = 4;
constexpr int kW16ChannelM = 4;  // per-channel tile: 4 x 4 accumulators

#include "int8_gemm_impl.h"

}  // namespace
}  // namespace avx512_gemm

const Int8GemmKernels& int8_gemm_kernels_avx512() { return avx512_gemm::kGemmTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
