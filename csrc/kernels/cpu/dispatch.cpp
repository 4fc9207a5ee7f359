#include "binary_gemm.h"
#include "compress.h"
#include "int8_gemm.h"
#include "quant.h"

namespace effgen::cpu {
namespace {

// The table of the active ISA; AMX machines run the AVX-512 tables (no AMX kernels yet).
template <typename Table>
const Table& for_active_isa(const Table& scalar, const Table& avx2, const Table& avx512) {
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return avx512;
    case Isa::kAvx2: return avx2;
    case Isa::kScalar: break;
  }
  return scalar;
}

}  // namespace

const QuantKernels& quant_kernels() {
  return for_active_isa(quant_kernels_scalar(), quant_kernels_avx2(), quant_kernels_avx512());
}

const Int8GemmKernels& int8_gemm_kernels() {
  return for_active_isa(int8_gemm_kernels_scalar(), int8_gemm_kernels_avx2(), int8_gemm_kernels_avx512());
}

const CompressKernels& compress_kernels() {
  return for_active_isa(compress_kernels_scalar(), compress_kernels_avx2(), compress_kernels_avx512());
}

const BinaryGemmKernels& binary_gemm_kernels() {
  return for_active_isa(binary_gemm_kernels_scalar(), binary_gemm_kernels_avx2(), binary_gemm_kernels_avx512());
}

}  // namespace effgen::cpu
