// Portable int8 GEMM: plain int32 dot products (the compiler may vectorise for the baseline ISA).
#include <cmath>
#include <cstring>

#include "int8_gemm.h"

namespace effgen::cpu {
namespace scalar_gemm {
namespace {

#include "simd_scalar.h"

constexpr int kTileM = 2;
constexpr int kTileN = 4;
constexpr int kDecodeN = 4;

template <int MR, int NR>
void tile(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t k, const int32_t* /*panel_info*/,
          int32_t* c, int64_t ldc) {
  int32_t acc[MR][NR] = {};
  for (int64_t kk = 0; kk < k; ++kk) {
    for (int i = 0; i < MR; ++i) {
      for (int j = 0; j < NR; ++j) acc[i][j] += int32_t{a[i * lda + kk]} * int32_t{b[j * ldb + kk]};
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) c[i * ldc + j] = acc[i][j];
  }
}

// Packed weights: 4 rows by one column group, plain int32 products of each 4-value quad
// (about 0.6x the speed of the dot-along-K tile here: the columns' 4-byte stride keeps the
// compiler from vectorising as well; the SIMD ISAs are where the packed layout pays).
constexpr int kPackedTileM = 4;
constexpr int kPackedTileGroups = 1;

template <int MR, int NG>
void packed_tile(const int8_t* a, int64_t lda, int64_t k, const int8_t* b, int64_t /*group_stride*/,
                 const int32_t* /*col_sums*/, int64_t n_valid, int32_t* c, int64_t ldc,
                 PrefetchRange /*prefetch*/) {
  static_assert(NG == 1, "one column group per scalar tile");
  int32_t acc[MR][kPackCols] = {};
  for (int64_t kq = 0; kq * kPackDepth < k; ++kq) {
    const int8_t* block = b + kq * kPackBlock;
    for (int i = 0; i < MR; ++i) {
      int32_t quad[kPackDepth] = {};  // zero past K, like the weights
      for (int64_t r = 0; r < kPackDepth && kq * kPackDepth + r < k; ++r) quad[r] = a[i * lda + kq * kPackDepth + r];
      for (int col = 0; col < kPackCols; ++col) {
        const int8_t* w = block + col * kPackDepth;
        acc[i][col] += quad[0] * w[0] + quad[1] * w[1] + quad[2] * w[2] + quad[3] * w[3];
      }
    }
  }
  const int64_t cols = n_valid < kPackCols ? n_valid : kPackCols;
  for (int i = 0; i < MR; ++i) std::memcpy(c + i * ldc, acc[i], static_cast<size_t>(cols) * sizeof(int32_t));
}

// W8A16 register tile: 1 x 4 totals + 1 x 4 group partials + 4 weight vectors.
constexpr int kW16M = 1;
constexpr int kW16N = 4;
constexpr int kW16ChannelM = 1;  // per-channel tile: 1 x 4 accumulators

// Exact products need no per-strip correction.
const int32_t* prepare_panel(const int8_t*, int64_t, int64_t, int64_t, int32_t*) { return nullptr; }

constexpr GemmPacked kGemmPacked = nullptr;  // int8_gemm_impl.h's gemm_packed
constexpr GemmPackedScaled kGemmPackedScaled = nullptr;  // the op's epilogue_row after gemm_packed

// 16-bit activations run as 2 digit rows on gemm_packed.
constexpr GemmPackedI16 kGemmPackedI16 = nullptr;
constexpr W8A16GroupedI16 kW8A16PackedGroupedI16 = nullptr;

#include "int8_gemm_impl.h"

// No register tile for per-group W8A16: the composition in int8_gemm_impl.h runs it.
bool w8a16_grouped_tiles(const W8A16GroupedArgs&) { return false; }

}  // namespace
}  // namespace scalar_gemm

const Int8GemmKernels& int8_gemm_kernels_scalar() { return scalar_gemm::kGemmTable; }

}  // namespace effgen::cpu
