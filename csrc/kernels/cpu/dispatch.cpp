#include "binary_gemm.h"
#include "int8_gemm.h"
#include "quant.h"

namespace effgen::cpu {

const QuantKernels& quant_kernels() {
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return quant_kernels_avx512();
    case Isa::kAvx2: return quant_kernels_avx2();
    case Isa::kScalar: break;
  }
  return quant_kernels_scalar();
}

const Int8GemmKernels& int8_gemm_kernels() {
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return int8_gemm_kernels_avx512();
    case Isa::kAvx2: return int8_gemm_kernels_avx2();
    case Isa::kScalar: break;
  }
  return int8_gemm_kernels_scalar();
}

}  // namespace effgen::cpu

namespace effgen::cpu {

const BinaryGemmKernels& binary_gemm_kernels() {
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return binary_gemm_kernels_avx512();
    case Isa::kAvx2: return binary_gemm_kernels_avx2();
    case Isa::kScalar: break;
  }
  return binary_gemm_kernels_scalar();
}

}  // namespace effgen::cpu
