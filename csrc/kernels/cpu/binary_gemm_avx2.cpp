// AVX2 binary kernels: each weight byte is expanded to an 8-lane mask (and + compare with
// the lane's bit), popcounts use the 4-bit lookup table of vpshufb, and the lookup-table
// product builds its 16-entry lookups from two 8-entry vpermps and a blend.
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

// Two ways to look up a 16-entry table for 8 rows; vpermps reads index bits 0-2, and bit 3,
// shifted to the sign bit, is `upper_half` (vblendvps reads only the sign).
// Both halves of the table, permuted, blended: fewest instructions in all.
inline __m256 lookup16_two_permutes(const float* table, __m256i idx, __m256 upper_half) {
  return _mm256_blendv_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(table), idx),
                          _mm256_permutevar8x32_ps(_mm256_loadu_ps(table + 8), idx), upper_half);
}

// The lower half plus, where bit 3 is set, entry 8 (the upper half of a subset-sum table is
// the lower half plus entry 8, the group's fourth input): one permute, one more add. Rounds
// that sum in another order than the table does.
inline __m256 lookup16_one_permute(const float* table, __m256i idx, __m256 upper_half) {
  return _mm256_add_ps(_mm256_permutevar8x32_ps(_mm256_loadu_ps(table), idx),
                       _mm256_blendv_ps(_mm256_setzero_ps(), _mm256_broadcast_ss(table + 8), upper_half));
}

// Tables are 64 bytes per group of 4 inputs and row, so the tables of a whole row (K = 4096:
// 64 KB) do not stay in L1 while the tiles sweep them: chunks of words whose tables take
// about half of L1 go over every tile before the next chunk (1.1x measured at M = 8,
// K = 4096; nothing at M = 1, where the lookups' arithmetic bounds it).
constexpr int64_t kLutChunkTableBytes = 16 * 1024;

// The tile's 16 rows are two halves of 8 uint32 lanes (bytes 0-31 and 32-63 of each word);
// kHalves of them from `first` on go through one pass, with M x kHalves x kChains
// accumulators (2 chains per half for one row keep adds in flight; more spilled them to
// the stack). Per word: one load per half; slot j's indices are the word shifted right by
// 4j (the lookup reads only bits 0-3). Ternary subtracts the negative (odd) slots.
template <int M, int kPlanes, int kHalves>
void lut_tiles_half(const float* tables, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, int first,
                    float* sums, int64_t lds) {
  constexpr int kChains = M == 1 ? 2 : 1;
  // The shuffle pipes bound many rows (one permute each is better); the instruction count
  // bounds one or two rows, whose index shifts are shared by fewer lookups (measured).
  constexpr bool kTwoPermutes = M <= 2;
  constexpr int64_t kTableBytesPerWord = 8 / kPlanes * 16 * sizeof(float) * M;
  constexpr int64_t kChunkWords = kLutChunkTableBytes / kTableBytesPerWord;
  static_assert(kChunkWords > 0, "a chunk must hold one word's tables (kLutMaxM rows)");
  const int64_t words = lut_words(k, kPlanes), table_stride = lut_table_groups(k) * 16;
  const int64_t tile_bytes = words * kLutWordBytes;
  for (int64_t w0 = 0; w0 < words; w0 += kChunkWords) {
    const int64_t w1 = words - w0 < kChunkWords ? words : w0 + kChunkWords;
    for (int64_t t = t0; t < t1; ++t) {
      const uint8_t* tile = tiles + t * tile_bytes;
      float* tile_sums = sums + t * kLutTileRows + first * 8;
      __m256 acc[M][kHalves][kChains];
      for (int i = 0; i < M; ++i) {
        for (int h = 0; h < kHalves; ++h) {
          acc[i][h][0] = w0 == 0 ? _mm256_setzero_ps() : _mm256_loadu_ps(tile_sums + i * lds + h * 8);
          for (int c = 1; c < kChains; ++c) acc[i][h][c] = _mm256_setzero_ps();
        }
      }
      for (int64_t w = w0; w < w1; ++w) {
        const uint8_t* word = tile + w * kLutWordBytes;
        // The next tile's chunk, a stride away: the hardware prefetcher's stream ends with the chunk.
        _mm_prefetch(reinterpret_cast<const char*>(word) + tile_bytes, _MM_HINT_T0);
        __m256i nibbles[kHalves];
        for (int h = 0; h < kHalves; ++h) {
          nibbles[h] = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(word + (first + h) * 32));
        }
        const float* word_tables = tables + lut_slot_table(8 * w, kPlanes) * 16;
#pragma GCC unroll 8
        for (int j = 0; j < 8; ++j) {
          const float* table = word_tables + j / kPlanes * 16;
          for (int h = 0; h < kHalves; ++h) {
            // Both shifts from the word: no chain between them, and none at all for the
            // index of slot 0 and the upper-half bit of slot 7 (already bit 31).
            const __m256i idx = _mm256_srli_epi32(nibbles[h], 4 * j);
            const __m256 upper_half = _mm256_castsi256_ps(_mm256_slli_epi32(nibbles[h], 28 - 4 * j));
            for (int i = 0; i < M; ++i) {
              __m256& a = acc[i][h][j % kChains];
              const __m256 v = kTwoPermutes ? lookup16_two_permutes(table + i * table_stride, idx, upper_half)
                                            : lookup16_one_permute(table + i * table_stride, idx, upper_half);
              a = kPlanes == 2 && j % 2 == 1 ? _mm256_sub_ps(a, v) : _mm256_add_ps(a, v);
            }
          }
        }
      }
      for (int i = 0; i < M; ++i) {
        for (int h = 0; h < kHalves; ++h) {
          __m256 total = acc[i][h][0];
          for (int c = 1; c < kChains; ++c) total = _mm256_add_ps(total, acc[i][h][c]);
          _mm256_storeu_ps(tile_sums + i * lds + h * 8, total);
        }
      }
    }
  }
}

// Up to 2 rows take both halves in one pass (each table load serves 16 weight rows); more
// rows take a pass per half, so that their accumulators fit the registers.
template <int M, int kPlanes>
void lut_tiles(const float* tables, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, float* sums,
               int64_t lds) {
  if constexpr (M <= 2) {
    lut_tiles_half<M, kPlanes, 2>(tables, k, tiles, t0, t1, 0, sums, lds);
  } else {
    for (int half = 0; half < 2; ++half) lut_tiles_half<M, kPlanes, 1>(tables, k, tiles, t0, t1, half, sums, lds);
  }
}

#include "binary_lut_dispatch.h"

#include "binary_gemm_impl.h"

}  // namespace
}  // namespace avx2_binary

const BinaryGemmKernels& binary_gemm_kernels_avx2() { return avx2_binary::kBinaryTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
