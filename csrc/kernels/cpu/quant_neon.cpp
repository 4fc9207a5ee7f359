// aarch64 NEON path of the quant family, 4 fp32 lanes (Advanced SIMD, in every aarch64 CPU).
#include <arm_neon.h>

#include <cstring>

#include "quant.h"

namespace effgen::cpu {
namespace neon {
namespace {

#include "simd_neon.h"

#include "quant_impl.h"

}  // namespace
}  // namespace neon

const QuantKernels& quant_kernels_neon() { return neon::kTable; }

}  // namespace effgen::cpu
