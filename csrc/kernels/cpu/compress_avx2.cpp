// The int8 and sign gradient codecs, AVX2 + FMA + F16C path (8 fp32 lanes). Every function in this
// file is compiled for that target only; the table is picked at run time, never called on a CPU without AVX2.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "compress.h"

#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace effgen::cpu {
namespace avx2 {
namespace {

#include "simd_avx2.h"

#include "compress_impl.h"
#include "compress_sign_impl.h"

}  // namespace
}  // namespace avx2

const CompressKernels& compress_kernels_avx2() { return avx2::kTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
