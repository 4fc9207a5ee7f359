// The int8 and sign gradient codecs, AVX-512 (F, BW, VL) path, 16 fp32 lanes. Every function in this
// file is compiled for that target only; the table is picked at run time, never called on a CPU without it.
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>

#include "compress.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx2,fma,f16c")

namespace effgen::cpu {
namespace avx512 {
namespace {

#include "simd_avx512.h"

#include "compress_impl.h"
#include "compress_sign_impl.h"

}  // namespace
}  // namespace avx512

const CompressKernels& compress_kernels_avx512() { return avx512::kTable; }

}  // namespace effgen::cpu

#pragma GCC pop_options
