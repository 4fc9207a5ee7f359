// Portable path: one lane, plain C++. Also the definition the SIMD paths are tested against.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "quant.h"

namespace effgen::cpu {
namespace scalar {
namespace {

#include "simd_scalar.h"

#include "quant_impl.h"

}  // namespace
}  // namespace scalar

const QuantKernels& quant_kernels_scalar() { return scalar::kTable; }

}  // namespace effgen::cpu
