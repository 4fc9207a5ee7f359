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
};

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
