// Torch-free CPU kernels of the `binary_gemm` family: 1-bit and ternary weights.
//
// Bit order (see effgen_kernels/reference.py): weight k of a row is bit k % 8 of byte k / 8,
// least significant first, bits past K are 0. Binary rows hold ceil(K/8) bytes (1 = +1,
// 0 = -1). Ternary rows hold a positive then a negative plane of ceil(K/8) bytes each.
#pragma once
#include <cstdint>

#include "dtypes.h"
#include "isa.h"

namespace effgen::cpu {

inline int64_t packed_row_bytes(int64_t k) { return (k + 7) / 8; }

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
  // Lookup-table product for a few rows (T-MAC style): tables[i][g][b] holds the sum of
  // x[i][4g + t] over the set bits t of b, so 4 weights of 16 rows cost one table lookup
  // (vpermps) instead of 64 adds. sums[i * lds + row] for the rows of tiles [t0, t1)
  // (positive minus negative plane when planes = 2). m <= kLutMaxM (callers go through
  // larger m in blocks of rows); tables hold lut_table_groups(k) tables per row.
  void (*lut_sums)(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                   int planes, float* sums, int64_t lds);
};

constexpr int64_t kLutMaxM = 8;
constexpr int64_t kLutTileRows = 16;
constexpr int64_t kLutWordBytes = 64;
inline int64_t lut_groups(int64_t k) { return (k + 3) / 4; }
// Tables per activation row: rounded up to a multiple of 8 so that every nibble slot of the
// last word has a table (pad tables are all zeros, as is every nibble looked up in them).
inline int64_t lut_table_groups(int64_t k) { return (lut_groups(k) + 7) / 8 * 8; }
// The tiled layout: per tile of 16 weight rows, words of 64 bytes = 16 uint32 lanes; lane r
// holds 8 nibbles of row r (nibble bit t = input 4g + t). Word w, nibble j (bits 4j..4j+3)
// is slot s = 8w + j, where slot s = g * planes + plane: a ternary word holds the positive
// (even j) and negative (odd j) nibbles of 4 groups, a binary word 8 groups. So one 64-byte
// load and a shift give the 16 rows' indices of a slot (vpermps reads only index bits 0-3).
inline int64_t lut_words(int64_t k, int planes) { return (lut_groups(k) * planes + 7) / 8; }
inline int64_t lut_tile_bytes(int64_t k, int planes) { return lut_words(k, planes) * kLutWordBytes; }
// Where slot s of row r lives in a tile: byte and bit shift.
inline int64_t lut_slot_byte(int64_t slot, int64_t r) { return slot / 8 * kLutWordBytes + r * 4 + slot % 8 / 2; }
inline int lut_slot_shift(int64_t slot) { return static_cast<int>(4 * (slot % 2)); }
// The table a nibble slot is looked up in.
inline int64_t lut_slot_table(int64_t slot, int planes) { return slot / planes; }
// Derives the tiled layout from canonical packed rows (n rows of planes * ceil(k/8) bytes).
void tile_for_lut(const uint8_t* packed, int64_t n, int64_t k, int planes, uint8_t* tiles);
// The LUT product in plain C++ (the table entry of ISAs without a vector permute).
void lut_sums_portable(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                       int planes, float* sums, int64_t lds);
// tables[i][g][b] for x [m, k] (fp32): the subset sums the LUT kernel looks up,
// lut_table_groups(k) tables per row.
void build_lut_tables(const float* x, int64_t m, int64_t k, float* tables);

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
const BinaryGemmKernels& binary_gemm_kernels_avx512();
const BinaryGemmKernels& binary_gemm_kernels();

// Portable packing (conversion time, not the hot path).
// Row r of out gets bit 1 where x[r][k] >= 0 (NaN counts as negative).
void pack_signs(DType dtype, const void* x, int64_t rows, int64_t k, uint8_t* out);
// q in {-1, 0, 1}; returns false (and stops) at the first other value.
bool pack_ternary_rows(const int8_t* q, int64_t rows, int64_t k, uint8_t* out);
void unpack_binary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out);
void unpack_ternary_rows(const uint8_t* packed, int64_t rows, int64_t k, int8_t* out);

}  // namespace effgen::cpu
