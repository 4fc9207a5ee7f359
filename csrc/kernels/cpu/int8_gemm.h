// Torch-free CPU kernels of the `int8_gemm` op family (W8A8 and W8A16 linear layers).
// gemm_s8s8s32 reads the canonical layouts the modules store: activations [M, K] and
// weights [N, K] row-major, and takes dot products along K. gemm_packed reads weights
// re-laid out once per layer (kPackCols x kPackDepth blocks, below), so that one vector of
// weights feeds 16 output channels and no dot product ends in a horizontal sum.
#pragma once
#include <cstdint>

#include "dtypes.h"
#include "isa.h"

namespace effgen::cpu {

// Largest K whose int32 dot products cannot overflow for any int8 inputs: K * 128^2 < 2^31.
constexpr int64_t kMaxExactInt8K = (int64_t{1} << 17) - 1;

// W8A16: out[i][j] = sum_g scale[j * groups + g] * sum_{k in group g} x[i][k] * w[j][k]
// (+ bias[j]), fp32 accumulation, rounded to x's dtype. groups = 1 with group_size = k is
// per-channel. The last group may be shorter.
struct W8A16Args {
  DType dtype;  // of x and of out
  const void* x;
  int64_t ldx;
  const int8_t* w;
  int64_t ldw;
  int64_t m, n, k;
  const float* scale;
  int64_t groups, group_size;
  const float* bias;  // nullptr: none
  void* out;
  int64_t ldo;
};

// Packed weights: 64-byte blocks of kPackCols output channels x kPackDepth values of K
// (one VNNI operand). Block (jb, kq) holds w[16 jb + c][4 kq + r] at byte 4 c + r, zero
// past N and K, at packed[(jb * kquads + kq) * 64] with kquads = ceil(K / 4): the blocks of
// one column group are contiguous along K. col_sums[j] = sum_k w[j][k] goes with them.
constexpr int64_t kPackCols = 16, kPackDepth = 4;
constexpr int64_t kPackBlock = kPackCols * kPackDepth;

// Column groups [jb0, jb1) of canonical int8 weights w (n x k, rows ldw apart) into that
// layout at packed (block (0, 0); every column group's blocks written whole, zeros
// included), and the sums of `groups` groups of group_size values of K (one group of at
// least k for one sum per channel): sums[g * n + j] = sum of w[j][g * group_size, (g + 1) *
// group_size) within K. Portable: one pass over the weights, for every ISA.
void pack_int8_weight(const int8_t* w, int64_t ldw, int64_t n, int64_t k, int64_t group_size, int64_t groups,
                      int64_t jb0, int64_t jb1, int8_t* packed, int32_t* sums);

// Column groups of packed weights made on the fly (binary_gemm.h's lut_tiles_to_int8):
// group g's blocks at blocks + g * group_stride, and the sums of its column c over each
// group q of `group` values of K (a multiple of kPackDepth; the last group may be shorter,
// and group >= K makes one sum per column) at sums[q * sums_stride + g * kPackCols + c].
struct Int8Panel {
  int8_t* blocks;
  int64_t group_stride;
  int32_t* sums;
  int64_t group, sums_stride;
};

// Memory for a kernel to pull into the cache, spread over its work, while it computes: the
// weights the caller reads next (a compute-bound call otherwise starts each new weight
// panel stalled on memory). Empty: nothing.
struct PrefetchRange {
  const int8_t* begin = nullptr;
  int64_t bytes = 0;

  // Part i of `parts` equal parts, for work split into that many pieces.
  PrefetchRange part(int64_t i, int64_t parts) const {
    const int64_t first = bytes * i / parts, end = bytes * (i + 1) / parts;
    return PrefetchRange{begin + first, end - first};
  }
};

// The packed bytes of columns [j, j + cols) (j a multiple of kPackCols), for PrefetchRange.
inline PrefetchRange packed_columns(const int8_t* packed, int64_t group_stride, int64_t j, int64_t cols) {
  return PrefetchRange{packed + j / kPackCols * group_stride, (cols + kPackCols - 1) / kPackCols * group_stride};
}

// W8A16 on the int8 GEMM: activations as fixed point per token in `limbs` int8 digits of
// base 256. x[i] = scales[i] * a[i], a = round_half_even(x / scales[i]) with
// |a| <= split_max(limbs), written as a = sum_j 256^(limbs-1-j) d_j with d_j int8 (every
// digit but the first in [-128, 127]); digit j of row i is row i * limbs + j of rows
// ([m * limbs, k], so a block of tokens is a block of rows). Then
// x[i] . w = scales[i] * sum_j 256^(limbs-1-j) (d_j[i] . w) exactly, from one int8 GEMM
// over m * limbs rows. scales[i] = absmax / split_max(limbs) (0 for a zero row). 2 limbs
// keep 15 bits (16-bit activations), 3 keep 22 (fp32; the conversion rounds exactly up to
// 2^22). Int8GemmKernels::split_fixed_point_rows does the conversion.
constexpr int32_t split_max(int limbs) { return limbs == 2 ? 127 * 256 + 127 : (1 << 22) - 1; }

// The largest magnitude of an int8 weight.
constexpr int kInt8WeightBound = 128;

// Per-group W8A16 on packed weights, groups starting on packed blocks (group_size a
// multiple of kPackDepth), activations as fixed-point digit rows (split_fixed_point_rows):
// for tokens t < tokens and columns j < n,
//   totals[t * ldt + j] = sum over groups q, in order, of scale[q * scale_stride + j] * dot_q(t, j)
// in fp32 without FMA, where dot_q(t, j) is token t's product with column j over group q's
// values of K, combined from its digit rows exactly and rounded once to float.
struct W8A16GroupedArgs {
  const int8_t* a;  // digit rows [tokens * limbs, k]: token t's digit d is row t * limbs + d
  int64_t tokens;
  int limbs;
  int64_t k, group_size;
  const int8_t* b;  // packed block (0, 0) of the first column group; group g's at b + g * group_stride
  int64_t group_stride;
  const int32_t* col_sums;  // group q's column sums (over its values of K) at col_sums + q * sums_stride
  int64_t sums_stride;
  const float* scale;  // group q's scales at scale + q * scale_stride (transposed from [N, groups])
  int64_t scale_stride;
  int64_t n;
  float* totals;  // written, not accumulated
  int64_t ldt;
  PrefetchRange next = {};  // prefetched meanwhile by the AVX-512 tiles
  int weight_bound = kInt8WeightBound;  // the weights' largest magnitude (1 for +-1 / 0 panels)
};

using GemmPacked = void (*)(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b, int64_t group_stride,
                            const int32_t* col_sums, int64_t n, int32_t* c, int64_t ldc, PrefetchRange next);
// Where gemm_packed_scaled writes the products c of its m rows: the fused epilogue of
// epilogue_row (limbs = 1), or of digits_epilogue_row where the rows are W8A16's digit rows
// (split_fixed_point_rows), `limbs` a token, each token's digits combined exactly and
// rounded once to float first (dot[t][j]); then, for token (or row) t,
//   out[t * ldo + j] = dot[t][j] * a_scale[t * a_stride] * b_scale[j * b_stride]
//                      (+ bias[j] when bias != nullptr)
// in fp32 without FMA, rounded to dtype (b_stride 0 or 1).
struct ScaledOutput {
  const float* a_scale;
  int64_t a_stride;
  const float* b_scale;
  int64_t b_stride;
  const float* bias;
  DType dtype;
  void* out;
  int64_t ldo;
  int limbs = 1;
};
// Returns false, writing nothing, where it does not take out.limbs.
using GemmPackedScaled = bool (*)(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b,
                                  int64_t group_stride, const int32_t* col_sums, int64_t n, const ScaledOutput& out,
                                  PrefetchRange next);
using GemmPackedI16 = void (*)(const int16_t* a, int64_t lda, int64_t m, int64_t k, int limbs, const int8_t* b,
                               int64_t group_stride, int64_t n, float* c, int64_t ldc);
// int16 digits per token of W8A16's fixed-point activations (split_fixed_point_rows_i16).
constexpr int fixed_point_i16_limbs(DType dtype) { return dtype == DType::kF32 ? 2 : 1; }
using W8A16GroupedI16 = void (*)(const int16_t* a, int64_t lda, int limbs, const W8A16GroupedArgs& args);
// The longest group W8A16GroupedI16 takes.
constexpr int64_t kGroupedI16MaxDepth = 512;

struct Int8GemmKernels {
  // c[i * ldc + j] = sum_k a[i * lda + k] * b[j * ldb + k], exact in int32 for k <= kMaxExactInt8K.
  void (*gemm_s8s8s32)(const int8_t* a, int64_t lda, const int8_t* b, int64_t ldb, int64_t m, int64_t n, int64_t k,
                       int32_t* c, int64_t ldc);
  // gemm_s8s8s32 with packed weights: c[i * ldc + j] for i < m, j < n, where b points at
  // the packed block (0, kq0) of column group j / 16 = 0, column group g's blocks start at
  // b + g * group_stride, and col_sums[j] = the sum of those columns' weights over the k
  // values taken (4 kq0 onwards). Exact (modulo 2^32 in between) for k <= kMaxExactInt8K.
  // `next` is prefetched meanwhile (the SIMD ISAs; the scalar code ignores it).
  GemmPacked gemm_packed;
  // gemm_packed followed by epilogue_row (or digits_epilogue_row) on each row, bit for bit,
  // with the epilogue applied to each register tile as it finishes (ScaledOutput): no int32
  // products through memory, and the output's stores spread over the product instead of
  // after it. nullptr on ISAs without one (the caller runs gemm_packed and the epilogue).
  GemmPackedScaled gemm_packed_scaled;
  // One output row of the fused epilogue, in fp32 without FMA, rounded to out_dtype:
  //   out[j] = float(c[j]) * a_scale * b_scale[j * b_stride] (+ bias[j] when bias != nullptr)
  void (*epilogue_row)(const int32_t* c, int64_t n, float a_scale, const float* b_scale, int64_t b_stride,
                       const float* bias, DType out_dtype, void* out);
  // The same for float sums c.
  void (*epilogue_row_float)(const float* c, int64_t n, float a_scale, const float* b_scale, int64_t b_stride,
                             const float* bias, DType out_dtype, void* out);
  // W8A16 activations as fixed point (above): rows [i0, i1) of x [m, k] into digit rows and
  // scales; false, outputs unspecified, when a row holds Inf or NaN or its absmax is below
  // 2^-100 (so small that the float kernel must take it).
  bool (*split_fixed_point_rows)(DType dtype, const void* x, int64_t k, int limbs, int64_t i0, int64_t i1,
                                 int8_t* rows, float* scales);
  // Activations as int16 rows instead of int8 digit rows: the same scales and the same
  // integer a, as fixed_point_i16_limbs(dtype) int16 digits of base 2^15 (16-bit dtypes: a
  // itself; fp32: a = 2^15 hi + lo, lo in [-2^14, 2^14)), every one at most split_max(2) in
  // magnitude. Token i's limb l is row i * limbs + l at rows + (i * limbs + l) * ldr, zeros
  // from k to ldr (a multiple of kPackDepth, so that gemm_packed_i16 reads whole quads).
  bool (*split_fixed_point_rows_i16)(DType dtype, const void* x, int64_t k, int64_t ldr, int64_t i0, int64_t i1,
                                     int16_t* rows, float* scales);
  // The products of m tokens' int16 rows (lda apart, `limbs` per token) with packed
  // weights, as gemm_packed but combined and summed exactly and rounded once to float: the
  // digit rows' products combined as digits_epilogue_row does, bit for bit. nullptr on ISAs
  // that multiply digit rows instead (VNNI's int8 dot products are as fast; the portable
  // scalar code keeps its one int8 path, unmeasured with int16 rows).
  GemmPackedI16 gemm_packed_i16;
  // epilogue_row for W8A16 on fixed-point activations (split_fixed_point_rows): dot[j] =
  // sum_d 256^(digits-1-d) c[d * digit_stride + j], exact, rounded once to float; then
  // out[j] = dot[j] * a_scale * b_scale[j] (+ bias[j]), per-channel b_scale.
  void (*digits_epilogue_row)(const int32_t* c, int64_t digit_stride, int digits, int64_t n, float a_scale,
                              const float* b_scale, const float* bias, DType out_dtype, void* out);
  // Per-group W8A16 on packed weights and fixed-point activations (W8A16GroupedArgs);
  // epilogue_row_float finishes each token's row of totals.
  void (*w8a16_packed_grouped)(const W8A16GroupedArgs& args);
  // The same totals, bit for bit, from int16 rows (split_fixed_point_rows_i16, lda apart,
  // `limbs` per token; args.a and args.limbs are not read) for groups of at most
  // kGroupedI16MaxDepth values. nullptr where gemm_packed_i16 is.
  W8A16GroupedI16 w8a16_packed_grouped_i16;
  // The W8A16 product of W8A16Args for its m x n block (weights converted in registers).
  void (*w8a16_gemm)(const W8A16Args& args);
  // Columns [j0, j1) of packed weights as canonical int8 rows of k values (j0 a multiple of
  // kPackCols; b points at column group 0's block (0, 0), groups group_stride apart):
  //   rows[(j - j0) * k + kk] = w[j][kk]
  void (*unpack_packed)(const int8_t* b, int64_t group_stride, int64_t j0, int64_t j1, int64_t k, int8_t* rows);
  // Ends a thread's run of gemm_packed calls: AMX's gemm_packed leaves the thread's tiles
  // configured for its next call, and this puts them back in their init state. nullptr on
  // the ISAs whose kernels hold no such state.
  void (*release_tiles)();
};

const Int8GemmKernels& int8_gemm_kernels_scalar();
const Int8GemmKernels& int8_gemm_kernels_avx2();
const Int8GemmKernels& int8_gemm_kernels_neon();  // aarch64 builds only
const Int8GemmKernels& int8_gemm_kernels_avx512();
// The AVX-512 table with gemm_packed on AMX tiles (int8_gemm_amx.cpp).
const Int8GemmKernels& int8_gemm_kernels_amx();
// The table for the active ISA.
const Int8GemmKernels& int8_gemm_kernels();

}  // namespace effgen::cpu
