// AVX-512 binary kernels: 16 weight bits are a lane mask as they stand, so a masked add of
// the activations sums exactly the +1 weights; popcounts use the 4-bit lookup table of
// vpshufb (AVX512BW: every AVX-512 CPU we dispatch to, VPOPCNTDQ or not).
#include <immintrin.h>

#include <cstring>

#include "binary_gemm.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")

namespace effgen::cpu {
namespace avx512_binary {
namespace {

#include "simd_avx512.h"

constexpr int kMaskedM = 4, kMaskedN = 4;  // 16 accumulators + 4 activation vectors
constexpr int kPopM = 2, kPopN = 4;

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

inline __m512i popcount_bytes(__m512i v) {
  const __m512i table = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 1, 2, 1, 2, 2, 3, 1, 2, 2, 3, 2, 3, 3, 4));
  const __m512i low = _mm512_set1_epi8(0x0F);
  const __m512i lo = _mm512_shuffle_epi8(table, _mm512_and_si512(v, low));
  const __m512i hi = _mm512_shuffle_epi8(table, _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
  return _mm512_sad_epu8(_mm512_add_epi8(lo, hi), _mm512_setzero_si512());  // 8 x u64 sums
}

template <int MR, int NR>
void popcount_tile(const PopcountArgs& p, int64_t i0, int64_t j0) {
  __m512i acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  }
  for (int64_t byte = 0; byte < p.nbytes; byte += 64) {
    const int64_t rest = p.nbytes - byte;
    const __mmask64 valid = rest >= 64 ? ~__mmask64{0} : (__mmask64{1} << rest) - 1;  // zeros xor to zero
    __m512i bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = _mm512_maskz_loadu_epi8(valid, p.b + (j0 + j) * p.ldb + byte);
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_maskz_loadu_epi8(valid, p.a + (i0 + i) * p.lda + byte);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_add_epi64(acc[i][j], popcount_bytes(_mm512_xor_si512(av, bv[j])));
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) p.c[(i0 + i) * p.ldc + j0 + j] = static_cast<int32_t>(_mm512_reduce_add_epi64(acc[i][j]));
  }
}

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

// 16 nibble indices (one per row of the tile) from 8 bytes: lanes 0-7 take the low
// nibbles, lanes 8-15 the high ones.
inline __m512i lut_indices(const uint8_t* bytes) {
  uint64_t word;
  std::memcpy(&word, bytes, 8);
  const __m512i wide = _mm512_cvtepu8_epi32(_mm_set1_epi64x(static_cast<long long>(word)));
  const __m512i shift = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 4, 4, 4, 4, 4, 4, 4, 4);
  return _mm512_and_si512(_mm512_srlv_epi32(wide, shift), _mm512_set1_epi32(0x0F));
}

template <int M, int kPlanes>
void lut_tiles(const float* tables, int64_t groups, const uint8_t* tiles, int64_t t0, int64_t t1, float* sums,
               int64_t lds) {
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* tile = tiles + t * groups * kPlanes * 8;
    __m512 acc[M];
    for (int i = 0; i < M; ++i) acc[i] = _mm512_setzero_ps();
    for (int64_t g = 0; g < groups; ++g) {
      const __m512i plus = lut_indices(tile + g * kPlanes * 8);
      for (int i = 0; i < M; ++i) {
        const __m512 table = _mm512_loadu_ps(tables + (i * groups + g) * 16);
        acc[i] = _mm512_add_ps(acc[i], _mm512_permutexvar_ps(plus, table));
        if constexpr (kPlanes == 2) {
          acc[i] = _mm512_sub_ps(acc[i], _mm512_permutexvar_ps(lut_indices(tile + g * 16 + 8), table));
        }
      }
    }
    for (int i = 0; i < M; ++i) _mm512_storeu_ps(sums + i * lds + t * kLutTileRows, acc[i]);
  }
}

template <int M = kLutMaxM>
void lut_dispatch(const float* tables, int64_t m, int64_t groups, const uint8_t* tiles, int64_t t0, int64_t t1,
                  int planes, float* sums, int64_t lds) {
  if constexpr (M > 1) {
    if (m < M) return lut_dispatch<M - 1>(tables, m, groups, tiles, t0, t1, planes, sums, lds);
  }
  if (planes == 2) return lut_tiles<M, 2>(tables, groups, tiles, t0, t1, sums, lds);
  lut_tiles<M, 1>(tables, groups, tiles, t0, t1, sums, lds);
}

void lut_sums(const float* tables, int64_t m, int64_t groups, const uint8_t* tiles, int64_t t0, int64_t t1,
              int planes, float* sums, int64_t lds) {
  lut_dispatch(tables, m, groups, tiles, t0, t1, planes, sums, lds);
}

#include "binary_gemm_impl.h"

}  // namespace
}  // namespace avx512_binary

const BinaryGemmKernels& binary_gemm_kernels_avx512() { return avx512_binary::kBinaryTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
