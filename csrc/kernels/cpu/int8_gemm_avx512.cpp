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
