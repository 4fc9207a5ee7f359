// aarch64 NEON path of the int8 and sign gradient codecs, 4 fp32 lanes.
#include <arm_neon.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "compress.h"

namespace effgen::cpu {
namespace neon {
namespace {

#include "simd_neon.h"

#include "compress_impl.h"
#include "compress_sign_impl.h"

}  // namespace
}  // namespace neon

const CompressKernels& compress_kernels_neon() { return neon::kTable; }

}  // namespace effgen::cpu
