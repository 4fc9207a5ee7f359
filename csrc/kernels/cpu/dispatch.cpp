#include "binary_gemm.h"
#include "compress.h"
#include "int8_gemm.h"
#include "quant.h"

namespace effgen::cpu {

const QuantKernels& quant_kernels() {
  return for_active_isa(quant_kernels_scalar(), quant_kernels_avx2(), quant_kernels_avx512());
}

const Int8GemmKernels& int8_gemm_kernels() {
  return for_active_isa(int8_gemm_kernels_scalar(), int8_gemm_kernels_avx2(), int8_gemm_kernels_avx512(),
                        int8_gemm_kernels_amx());
}

const CompressKernels& compress_kernels() {
  return for_active_isa(compress_kernels_scalar(), compress_kernels_avx2(), compress_kernels_avx512());
}

const BinaryGemmKernels& binary_gemm_kernels() {
  return for_active_isa(binary_gemm_kernels_scalar(), binary_gemm_kernels_avx2(), binary_gemm_kernels_avx512());
}

}  // namespace effgen::cpu
