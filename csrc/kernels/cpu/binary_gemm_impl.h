// The ISA-independent driver of the binary kernels, included by each binary_gemm_<isa>.cpp
// (after MaskedArgs / PopcountArgs from binary_gemm.h) once it has defined
//   template <typename T, int MR, int NR> void masked_tile(const MaskedArgs<T>&, int64_t i0, int64_t j0);
//   template <int MR, int NR> void popcount_tile(const PopcountArgs&, int64_t i0, int64_t j0);
//   void expand_row(const uint8_t* bits, const uint8_t* negative_bits_or_null, int64_t k, float* out);
//   build_tables, build_alpha_tables, lut_sums, lut_alpha_sums and lut_tiles_to_int8 (see
//   BinaryGemmKernels; the portable ones serve the ISAs without vpermps; lut_tiles_to_int8
//   may be nullptr) and kLutLayout, the
//   layout they read (kLutAlphaLayout: build_alpha_tables' and lut_alpha_sums')
// and the tile sizes kMaskedM/N, kPopM/N. Ragged edges go to smaller instantiations
// (binary_tiles.h, which also holds xor_popcount).

#include "binary_tiles.h"

template <typename T>
void masked_sums_t(const T* x, int64_t ldx, const uint8_t* bits, int64_t ldb, int64_t m, int64_t n, int64_t k,
                   int64_t group, float* sums, int64_t lds) {
  const MaskedArgs<T> args{x, ldx, bits, ldb, k, group, k == 0 ? 0 : (k + group - 1) / group, sums, lds};
  for_tiles<kMaskedM, kMaskedN>(m, n, [&]<int MR, int NR>(int64_t i, int64_t j) { masked_tile<T, MR, NR>(args, i, j); });
}

void masked_sums(DType dtype, const void* x, int64_t ldx, const uint8_t* bits, int64_t ldb, int64_t m, int64_t n,
                 int64_t k, int64_t group, float* sums, int64_t lds) {
  switch (dtype) {
    case DType::kBF16:
      return masked_sums_t(static_cast<const bf16*>(x), ldx, bits, ldb, m, n, k, group, sums, lds);
    case DType::kF16:
      return masked_sums_t(static_cast<const fp16*>(x), ldx, bits, ldb, m, n, k, group, sums, lds);
    case DType::kF32:
      return masked_sums_t(static_cast<const float*>(x), ldx, bits, ldb, m, n, k, group, sums, lds);
  }
}

void expand(const uint8_t* packed, int64_t n, int64_t k, int planes, float* out) {
  const int64_t plane = (k + 7) / 8;
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = packed + j * planes * plane;
    expand_row(row, planes == 2 ? row + plane : nullptr, k, out + j * k);
  }
}

const BinaryGemmKernels kBinaryTable{.masked_sums = masked_sums,
                                     .xor_popcount = xor_popcount,
                                     .expand = expand,
                                     .build_tables = build_tables,
                                     .build_alpha_tables = build_alpha_tables,
                                     .lut_sums = lut_sums,
                                     .lut_alpha_sums = lut_alpha_sums,
                                     .lut_tiles_to_int8 = lut_tiles_to_int8,
                                     .lut_layout = kLutLayout,
                                     .alpha_layout = kLutAlphaLayout};
