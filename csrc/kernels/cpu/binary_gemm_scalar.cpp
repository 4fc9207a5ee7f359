// Portable binary kernels: bit tests and 64-bit popcounts.
#include <cmath>
#include <cstring>

#include "binary_gemm.h"

namespace effgen::cpu {
namespace scalar_binary {
namespace {

constexpr int kMaskedM = 1, kMaskedN = 4, kPopM = 1, kPopN = 4;

template <typename T, int MR, int NR>
void masked_tile(const MaskedArgs<T>& p, int64_t i0, int64_t j0) {
  for (int64_t g = 0; g < p.groups; ++g) {
    const int64_t k0 = g * p.group, k1 = k0 + p.group < p.k ? k0 + p.group : p.k;
    float acc[MR][NR] = {};
    for (int64_t kk = k0; kk < k1; ++kk) {
      for (int j = 0; j < NR; ++j) {
        if (!((p.bits[(j0 + j) * p.ldb + kk / 8] >> (kk % 8)) & 1u)) continue;
        for (int i = 0; i < MR; ++i) acc[i][j] += to_f32(p.x[(i0 + i) * p.ldx + kk]);
      }
    }
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) p.sums[(i0 + i) * p.lds + (j0 + j) * p.groups + g] = acc[i][j];
    }
  }
}

template <int MR, int NR>
void popcount_tile(const PopcountArgs& p, int64_t i0, int64_t j0) {
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) {
      const uint8_t* a = p.a + (i0 + i) * p.lda;
      const uint8_t* b = p.b + (j0 + j) * p.ldb;
      int32_t count = 0;
      int64_t byte = 0;
      for (; byte + 8 <= p.nbytes; byte += 8) {
        uint64_t wa, wb;
        std::memcpy(&wa, a + byte, 8);
        std::memcpy(&wb, b + byte, 8);
        count += __builtin_popcountll(wa ^ wb);
      }
      for (; byte < p.nbytes; ++byte) count += __builtin_popcount(static_cast<unsigned>(a[byte] ^ b[byte]));
      p.c[(i0 + i) * p.ldc + j0 + j] = count;
    }
  }
}

void expand_row(const uint8_t* bits, const uint8_t* negative, int64_t k, float* out) {
  for (int64_t i = 0; i < k; ++i) {
    const bool set = (bits[i / 8] >> (i % 8)) & 1u;
    out[i] = negative == nullptr ? (set ? 1.0f : -1.0f)
                                 : static_cast<float>(int{set} - static_cast<int>((negative[i / 8] >> (i % 8)) & 1u));
  }
}

constexpr LutLayout kLutLayout = kLutNibbles;
constexpr LutLayout kLutAlphaLayout = kLutLayout;

void build_tables(const float* x, int64_t m, int64_t k, float* tables) {
  build_lut_tables(kLutLayout, x, m, k, tables);
}

constexpr auto build_alpha_tables = build_tables;  // kLutAlphaLayout is kLutLayout

void lut_sums(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1, int planes,
              float* sums, int64_t lds) {
  lut_sums_portable(kLutLayout, tables, m, k, tiles, t0, t1, planes, sums, lds);
}

void lut_alpha_sums(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                    const LutAlphaGroups& alphas, float* out, int64_t lds) {
  lut_alpha_sums_portable(kLutLayout, tables, m, k, tiles, t0, t1, alphas, out, lds);
}

constexpr std::nullptr_t lut_tiles_to_int8 = nullptr;  // batches stay on the lookup tables here

#include "binary_gemm_impl.h"

}  // namespace
}  // namespace scalar_binary

const BinaryGemmKernels& binary_gemm_kernels_scalar() { return scalar_binary::kBinaryTable; }

}  // namespace effgen::cpu
