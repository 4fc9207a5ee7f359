// Torch-free CPU kernels of the `binary_gemm` family: 1-bit and ternary weights.
//
// Bit order (see effgen_kernels/reference.py): weight k of a row is bit k % 8 of byte k / 8,
// least significant first, bits past K are 0. Binary rows hold ceil(K/8) bytes (1 = +1,
// 0 = -1). Ternary rows hold a positive then a negative plane of ceil(K/8) bytes each.
#pragma once
#include <cstdint>

#include "dtypes.h"
#include "int8_gemm.h"
#include "isa.h"

namespace effgen::cpu {

inline int64_t packed_row_bytes(int64_t k) { return (k + 7) / 8; }

constexpr int64_t kLutMaxM = 8;
constexpr int64_t kLutTileRows = 16;
static_assert(kLutTileRows == kPackCols, "a lookup tile's rows are one packed column group (lut_tiles_to_int8)");
// The AVX2 lookup kernels hold activation rows in their lanes (a lane a row) over at least
// kLutLanesMinTiles tiles in a call, from as many rows as binary_gemm_avx2.cpp's lanes_pay
// says: interleaving the tables by entry costs the same for any number of weight rows.
constexpr int64_t kLutLanesMinTiles = 4;
constexpr int64_t kLutWordBytes = 64;

// The tiled layout of the lookup-table kernel. Inputs go in groups of `width` (the last one
// zero-padded); a group's weight bits index a table of 2^width subset sums. Per tile of 16
// weight rows, words of 64 bytes = 16 uint32 lanes (little endian); lane r holds the
// `width`-bit fields of row r, field j at bits width * j (bit t = input width * g + t).
// Word w, field j is slot s = slots_per_lane * w + j, where slot s = g * planes + plane: a
// ternary lane holds the positive (even j) and negative (odd j) fields of half as many
// groups as a binary lane. So one 64-byte load and a shift give 16 rows' indices of a slot,
// and vpermps reads only the index bits it needs (0-3 for 16 floats, 0-2 for 8), so nothing
// is masked. Width 4 (8 nibbles a lane) suits AVX-512's 16-entry vpermps (and NEON, whose
// vld4q_u8 of a word gives one byte of the 16 rows a register: two slots' nibbles); width 3 (10
// fields, bits 30-31 unused) suits AVX2's 8-entry one: one permute per lookup instead of two
// and a blend. lut_tiles keeps width 4 in uint8 tensors and width 3 in int32 ones.
struct LutLayout {
  int width;

  constexpr int64_t entries() const { return int64_t{1} << width; }
  constexpr int64_t slots_per_lane() const { return 32 / width; }
  constexpr int64_t groups(int64_t k) const { return (k + width - 1) / width; }
  // Tables per activation row: a whole number of lanes' worth, so that every slot of the
  // last word has a table (pad tables are all zeros, as is every field looked up in them).
  constexpr int64_t table_groups(int64_t k) const {
    return (groups(k) + slots_per_lane() - 1) / slots_per_lane() * slots_per_lane();
  }
  constexpr int64_t table_floats(int64_t k) const { return table_groups(k) * entries(); }
  constexpr int64_t words(int64_t k, int planes) const {
    return (groups(k) * planes + slots_per_lane() - 1) / slots_per_lane();
  }
  constexpr int64_t tile_bytes(int64_t k, int planes) const { return words(k, planes) * kLutWordBytes; }
  // Inputs one lane of a word covers (binary: 32 for nibbles, 30 for triples).
  constexpr int64_t lane_inputs(int planes) const { return slots_per_lane() / planes * width; }
  // Where slot s of row r lives in a tile: the uint32 lane and the shift within it.
  constexpr int64_t slot_lane(int64_t slot, int64_t r) const { return slot / slots_per_lane() * kLutTileRows + r; }
  constexpr int slot_shift(int64_t slot) const { return static_cast<int>(width * (slot % slots_per_lane())); }
  // The table a slot is looked up in.
  static constexpr int64_t slot_table(int64_t slot, int planes) { return slot / planes; }
};
constexpr LutLayout kLutNibbles{4}, kLutTriples{3};

// Binary weights with one alpha per group of `group` inputs, for lut_alpha_sums: groups are
// whole lanes of words (group a multiple of lane_inputs(1)), so a group's sums are complete
// at the end of a word.
struct LutAlphaGroups {
  const float* alpha;  // [n][groups], row-major
  int64_t n, groups, group;
  const float* totals;  // [m][groups]: the sum of x per activation row and group
};

struct BinaryGemmKernels {
  // sums[i * lds + j * groups + g] = sum of x[i][k] over k in group g whose bit is set in
  // weight row j (groups of `group` elements, a multiple of 16 unless it spans all of k).
  // The real-activation binary and ternary products are built from these sums.
  void (*masked_sums)(DType dtype, const void* x, int64_t ldx, const uint8_t* bits, int64_t ldb, int64_t m,
                      int64_t n, int64_t k, int64_t group, float* sums, int64_t lds);
  // c[i * ldc + j] = popcount(a_i XOR b_j) over `nbytes` bytes: disagreeing signs.
  void (*xor_popcount)(const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, int64_t m, int64_t n,
                       int64_t nbytes, int32_t* c, int64_t ldc);
  // out[j][k] = weight value as float: +-1 (planes = 1) or pos - neg (planes = 2); rows of
  // `planes * ceil(k/8)` bytes. For products with many rows, which then go to a float GEMM.
  void (*expand)(const uint8_t* packed, int64_t n, int64_t k, int planes, float* out);
  // build_lut_tables(lut_layout, ...), vectorised: the same tables bit for bit.
  void (*build_tables)(const float* x, int64_t m, int64_t k, float* tables);
  // The same for alpha_layout (lut_alpha_sums' tables): build_tables where the layouts agree.
  void (*build_alpha_tables)(const float* x, int64_t m, int64_t k, float* tables);
  // Lookup-table product (T-MAC style) in the layout `lut_layout`:
  // tables[i][g][b] holds the sum of x[i][width * g + t] over the set bits t of b, so one
  // table lookup (one lane of a vpermps, or of a load) stands for `width` adds.
  // sums[i * lds + row] for the rows of tiles [t0, t1) (positive minus negative plane when
  // planes = 2). m <= kLutMaxM (callers go through larger m in blocks of rows); tables hold
  // LutLayout::table_floats(k) floats per row.
  void (*lut_sums)(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                   int planes, float* sums, int64_t lds);
  // lut_sums of binary weights with per-group alphas, finished: out[i * lds + row] = sum over
  // groups g of alpha[row][g] * (2 * (sum of x over the +1 weights of group g) - totals[i][g]),
  // 0 for rows past n; tables and tiles in alpha_layout, whose lanes end at group ends.
  void (*lut_alpha_sums)(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                         const LutAlphaGroups& alphas, float* out, int64_t lds);
  // Tiles [t0, t1) of `lut_layout` as the int8 GEMM's packed blocks with their column sums
  // (Int8Panel, int8_gemm.h; a tile's 16 rows are column group t - t0): weight values
  // +1 / -1 (binary) or positive - negative (ternary), 0 past K. Batches multiply on the
  // int8 GEMM this way with the weights still streamed as bits. Null on the ISAs whose
  // batches stay on the lookup tables (scalar, AVX2, NEON: int8_gemm_min_m in
  // ops/binary_gemm.cpp).
  void (*lut_tiles_to_int8)(const uint8_t* tiles, int64_t k, int planes, int64_t t0, int64_t t1,
                            const Int8Panel& panel);
  LutLayout lut_layout;
  // The layout lut_alpha_sums reads: lut_layout, but on AVX2 nibbles (its triples' 30-input
  // lanes cannot end at the ends of groups of 32k inputs).
  LutLayout alpha_layout;
};

// Derives the tiled layout from canonical packed rows (n rows of planes * ceil(k/8) bytes).
void tile_for_lut(LutLayout layout, const uint8_t* packed, int64_t n, int64_t k, int planes, uint8_t* tiles);
// The LUT product in plain C++, any layout (the table entry of ISAs without a vector permute,
// and what runs a layout that is not the dispatched ISA's).
void lut_sums_portable(LutLayout layout, const float* tables, int64_t m, int64_t k, const uint8_t* tiles,
                       int64_t t0, int64_t t1, int planes, float* sums, int64_t lds);
// lut_alpha_sums in plain C++, any layout whose lanes hold whole groups.
void lut_alpha_sums_portable(LutLayout layout, const float* tables, int64_t m, int64_t k, const uint8_t* tiles,
                             int64_t t0, int64_t t1, const LutAlphaGroups& alphas, float* out, int64_t lds);
// The subset sums the LUT kernel looks up for x [m, k] (fp32), layout.table_floats(k) a row.
// Entry b of a group's table is the sum of the group's inputs t over the set bits t of b,
// added from the highest bit down starting at +0 (binary_pack.cpp). Past k, inputs are 0.
void build_lut_tables(LutLayout layout, const float* x, int64_t m, int64_t k, float* tables);

// One call's operands as the ISA tile functions see them.
template <typename T>
struct MaskedArgs {
  const T* x;
  int64_t ldx;
  const uint8_t* bits;
  int64_t ldb, k, group, groups;
  float* sums;
  int64_t lds;
};

struct PopcountArgs {
  const uint8_t* a;
  int64_t lda;
  const uint8_t* b;
  int64_t ldb, nbytes;
  int32_t* c;
  int64_t ldc;
};

const BinaryGemmKernels& binary_gemm_kernels_scalar();
const BinaryGemmKernels& binary_gemm_kernels_avx2();
// The AVX-512 table; its xor_popcount is xor_popcount_avx512_vpopcntdq where the CPU has
// VPOPCNTDQ, else the byte-lookup kernel of binary_gemm_kernels_avx512_lookup().
const BinaryGemmKernels& binary_gemm_kernels_avx512();
const BinaryGemmKernels& binary_gemm_kernels_avx512_lookup();
const BinaryGemmKernels& binary_gemm_kernels_neon();  // aarch64 builds only
void xor_popcount_avx512_vpopcntdq(const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, int64_t m, int64_t n,
                                   int64_t nbytes, int32_t* c, int64_t ldc);
const BinaryGemmKernels& binary_gemm_kernels();

// Portable packing (conversion time, not the hot path).
// Row r of out gets bit 1 where x[r][k] >= 0 (NaN counts as negative).
void pack_signs(DType dtype, const void* x, int64_t rows, int64_t k, uint8_t* out);
// q in {-1, 0, 1}; returns false (and stops) at the first other value.
bool pack_ternary_rows(const int8_t* q, int64_t rows, int64_t k, uint8_t* out);
void unpack_binary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out);
void unpack_ternary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out);
// Sum of |x| over n values, accumulated in double (the means of binarize / ternarize_weight).
double abs_sum(DType dtype, const void* x, int64_t n);
// BitNet b1.58 rows packed as pack_ternary_rows packs q = round(clamp(w / s, -1, 1)), s =
// scale[r * scale_stride] (0 or 1 stride); a row whose s is not > 0 packs as all 0.
void ternarize_rows(DType dtype, const void* w, int64_t rows, int64_t k, const float* scale, int64_t scale_stride,
                    uint8_t* out);

}  // namespace effgen::cpu
