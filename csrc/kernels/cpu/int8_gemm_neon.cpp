// aarch64 NEON int8 GEMM on SDOT (ARMv8.2's dotprod; isa.cpp checks the CPU has it): each
// int32 lane adds the products of 4 signed bytes by 4 signed bytes, so unlike x86's VNNI
// (unsigned by signed) there is no sign shift and no excess to take off. Sums are exact
// int32 (modulo 2^32, like every ISA's: the op bounds K so that the true result fits).
#include <arm_neon.h>

#include <cstring>

#include "int8_gemm.h"

#pragma GCC push_options
#pragma GCC target("arch=armv8.2-a+dotprod")

namespace effgen::cpu {
namespace neon_gemm {
namespace {

#include "simd_neon.h"

// Canonical weights: MR rows by NR weight rows, each a dot product along K, 16 bytes a step.
constexpr int kTileM = 4;  // 16 accumulators + 4 weight vectors + 4 activation vectors
constexpr int kTileN = 4;
constexpr int kDecodeN = 8;  // one row: 8 accumulators, 8 weight streams
constexpr int64_t kStep = 16;

// The 16 bytes of row from kk on, zeros past its end k.
inline int8x16_t load_k(const int8_t* row, int64_t kk, int64_t k) {
  if (k - kk >= kStep) return vld1q_s8(row + kk);
  int8_t padded[kStep] = {};
  std::memcpy(padded, row + kk, static_cast<size_t>(k - kk));
  return vld1q_s8(padded);
}

template <int MR, int NR>
void tile(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k, const int32_t* /*panel_info*/,
          int32_t* c, int64_t ldc) {
  int32x4_t acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) acc[i][j] = vdupq_n_s32(0);
  }
  for (int64_t kk = 0; kk < k; kk += kStep) {
    int8x16_t bv[NR];
    for (int j = 0; j < NR; ++j) bv[j] = load_k(b + j * ldb, kk, k);
    for (int i = 0; i < MR; ++i) {
      const int8x16_t av = load_k(a + i * lda, kk, k);
      for (int j = 0; j < NR; ++j) acc[i][j] = vdotq_s32(acc[i][j], av, bv[j]);
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = vaddvq_s32(acc[i][j]);
  }
}

// Exact products need no per-panel correction.
const int32_t* prepare_panel(const int8_t*, int64_t, int64_t, int64_t, int32_t*) { return nullptr; }

// Packed weights (int8_gemm.h): a 64-byte block holds kPackCols = 16 columns by 4 bytes of
// K, column c's at byte 4c, so each 16-byte vector of it holds 4 columns' quads. SDOT by
// lane q of a row's 16 bytes of K (4 quads) adds quad q's products to those 4 columns.
// MR rows by one column group: 4 MR accumulators, 4 weight vectors, MR activation vectors.
constexpr int kPackedTileM = 4;
constexpr int kPackedTileGroups = 1;
constexpr int kVectorsPerBlock = 4;

// acc[i][v] += quad L of rows[i] times the 4 columns of vector v of `block`.
template <int L, int MR>
__attribute__((always_inline)) inline void accumulate_lane(int32x4_t (&acc)[MR][kVectorsPerBlock],
                                                           const int8x16_t (&rows)[MR], const int8_t* block) {
  int8x16_t w[kVectorsPerBlock];
  for (int v = 0; v < kVectorsPerBlock; ++v) w[v] = vld1q_s8(block + v * 16);
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < kVectorsPerBlock; ++v) acc[i][v] = vdotq_laneq_s32(acc[i][v], w[v], rows[i], L);
  }
}

template <int MR, int NG>
void packed_tile(const int8_t* a, int64_t lda, int64_t k, const int8_t* b, int64_t /*group_stride*/,
                 const int32_t* /*col_sums*/, int64_t n_valid, int32_t* c, int64_t ldc, PrefetchRange /*prefetch*/) {
  static_assert(NG == 1, "one column group per NEON tile");
  int32x4_t acc[MR][kVectorsPerBlock];
  for (int i = 0; i < MR; ++i) {
    for (int v = 0; v < kVectorsPerBlock; ++v) acc[i][v] = vdupq_n_s32(0);
  }
  for (int64_t kk = 0; kk < k; kk += kStep) {
    int8x16_t rows[MR];
    for (int i = 0; i < MR; ++i) rows[i] = load_k(a + i * lda, kk, k);
    // 4 quads, but at K's end only the blocks that exist (the rows are zero-padded there).
    const int64_t quads = ((k - kk < kStep ? k - kk : kStep) + kPackDepth - 1) / kPackDepth;
    const int8_t* blocks = b + kk / kPackDepth * kPackBlock;
    accumulate_lane<0>(acc, rows, blocks);
    if (quads > 1) accumulate_lane<1>(acc, rows, blocks + kPackBlock);
    if (quads > 2) accumulate_lane<2>(acc, rows, blocks + 2 * kPackBlock);
    if (quads > 3) accumulate_lane<3>(acc, rows, blocks + 3 * kPackBlock);
  }
  const int64_t cols = n_valid < kPackCols ? n_valid : kPackCols;
  for (int i = 0; i < MR; ++i) {
    int32_t row[kPackCols];
    for (int v = 0; v < kVectorsPerBlock; ++v) vst1q_s32(row + 4 * v, acc[i][v]);
    std::memcpy(c + i * ldc, row, static_cast<size_t>(cols) * sizeof(int32_t));
  }
}

// W8A16 register tile: 2 x 4 totals + 2 x 4 group partials + 4 weight vectors.
constexpr int kW16M = 2;
constexpr int kW16N = 4;
constexpr int kW16ChannelM = 4;  // per-channel tile: 4 x 4 accumulators

constexpr GemmPacked kGemmPacked = nullptr;  // int8_gemm_impl.h's gemm_packed
constexpr GemmPackedScaled kGemmPackedScaled = nullptr;  // the op's epilogue_row after gemm_packed

// 16-bit activations run as 2 digit rows on gemm_packed.
constexpr GemmPackedI16 kGemmPackedI16 = nullptr;
constexpr W8A16GroupedI16 kW8A16PackedGroupedI16 = nullptr;

#include "int8_gemm_impl.h"

// No register tile for per-group W8A16: the composition in int8_gemm_impl.h runs it.
bool w8a16_grouped_tiles(const W8A16GroupedArgs&) { return false; }

}  // namespace
}  // namespace neon_gemm

const Int8GemmKernels& int8_gemm_kernels_neon() { return neon_gemm::kGemmTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
