// AVX2 binary kernels: each weight byte is expanded to an 8-lane mask (and + compare with
// the lane's bit), and popcounts use the 4-bit lookup table of vpshufb.
#include <immintrin.h>

#include <cstring>

#include "binary_gemm.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace effgen::cpu {
namespace avx2_binary {
namespace {

#include "simd_avx2.h"

constexpr int kMaskedM = 2, kMaskedN = 4;  // 8 accumulators + 2 x + 4 masks of 16 ymm
constexpr int kPopM = 2, kPopN = 4;

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
    for (int j = 0; j < NR; ++j) bv[j] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(b[j]));
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

constexpr auto lut_sums = lut_sums_portable;

#include "binary_gemm_impl.h"

}  // namespace
}  // namespace avx2_binary

const BinaryGemmKernels& binary_gemm_kernels_avx2() { return avx2_binary::kBinaryTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
