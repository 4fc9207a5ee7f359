#include "binary_gemm.h"
#include "compress.h"
#include "int8_gemm.h"
#include "quant.h"

namespace effgen::cpu {

#ifdef EFFGEN_X86
#define EFFGEN_FOR_ACTIVE_ISA(scalar, ...) for_active_isa(scalar, __VA_ARGS__)
#else  // only the scalar kernels are built (isa.h), and active_isa() is kScalar
#define EFFGEN_FOR_ACTIVE_ISA(scalar, ...) scalar
#endif

const QuantKernels& quant_kernels() {
  return EFFGEN_FOR_ACTIVE_ISA(quant_kernels_scalar(), quant_kernels_avx2(), quant_kernels_avx512());
}

const Int8GemmKernels& int8_gemm_kernels() {
  return EFFGEN_FOR_ACTIVE_ISA(int8_gemm_kernels_scalar(), int8_gemm_kernels_avx2(), int8_gemm_kernels_avx512(),
                               int8_gemm_kernels_amx());
}

const CompressKernels& compress_kernels() {
  return EFFGEN_FOR_ACTIVE_ISA(compress_kernels_scalar(), compress_kernels_avx2(), compress_kernels_avx512());
}

const BinaryGemmKernels& binary_gemm_kernels() {
  return EFFGEN_FOR_ACTIVE_ISA(binary_gemm_kernels_scalar(), binary_gemm_kernels_avx2(),
                               binary_gemm_kernels_avx512());
}

}  // namespace effgen::cpu
