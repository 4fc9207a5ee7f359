// Portable path of the int8 and sign gradient codecs: one lane, plain C++.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "compress.h"

namespace effgen::cpu {
namespace scalar {
namespace {

#include "simd_scalar.h"

#include "compress_impl.h"
#include "compress_sign_impl.h"

}  // namespace
}  // namespace scalar

const CompressKernels& compress_kernels_scalar() { return scalar::kTable; }

}  // namespace effgen::cpu
