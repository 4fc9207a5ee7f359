#include "binary_gemm.h"
#include "compress.h"
#include "int8_gemm.h"
#include "quant.h"

namespace effgen::cpu {

// Each family's table for the active ISA, given the tables' getters: only the chosen one is
// called (isa.h says why). A build has only its own architecture's kernels (isa.h), so the
// macro names only those: x86-64 (scalar, avx2, avx512[, amx]) or aarch64 (scalar, neon).
#ifdef EFFGEN_X86
#define EFFGEN_FOR_ACTIVE_ISA(scalar, neon, ...) for_active_isa(scalar, __VA_ARGS__)
#elif defined(EFFGEN_AARCH64)
#define EFFGEN_FOR_ACTIVE_ISA(scalar, neon, ...) (active_isa() == Isa::kNeon ? neon() : scalar())
#else
#define EFFGEN_FOR_ACTIVE_ISA(scalar, neon, ...) scalar()
#endif

const QuantKernels& quant_kernels() {
  return EFFGEN_FOR_ACTIVE_ISA(quant_kernels_scalar, quant_kernels_neon, quant_kernels_avx2,
                               quant_kernels_avx512);
}

const Int8GemmKernels& int8_gemm_kernels() {
  return EFFGEN_FOR_ACTIVE_ISA(int8_gemm_kernels_scalar, int8_gemm_kernels_neon, int8_gemm_kernels_avx2,
                               int8_gemm_kernels_avx512, int8_gemm_kernels_amx);
}

const CompressKernels& compress_kernels() {
  return EFFGEN_FOR_ACTIVE_ISA(compress_kernels_scalar, compress_kernels_neon, compress_kernels_avx2,
                               compress_kernels_avx512);
}

const BinaryGemmKernels& binary_gemm_kernels() {
  return EFFGEN_FOR_ACTIVE_ISA(binary_gemm_kernels_scalar, binary_gemm_kernels_neon,
                               binary_gemm_kernels_avx2, binary_gemm_kernels_avx512);
}

}  // namespace effgen::cpu
