// The AVX-512 XNOR popcount on VPOPCNTDQ (Ice Lake, Zen 4 and later): one vpopcntq per 64
// bytes where the byte lookup takes seven instructions. Only this kernel is built for the
// extension, so the compiler uses it nowhere a CPU without it runs.
#include <immintrin.h>

#include "binary_gemm.h"

#pragma GCC push_options
#pragma GCC target("avx512f,avx512bw,avx512vl,avx512vpopcntdq")

namespace effgen::cpu {
namespace avx512_vpopcntdq_binary {
namespace {

inline __m512i popcount_qwords(__m512i v) { return _mm512_popcnt_epi64(v); }

#include "binary_popcount_avx512.h"
#include "binary_tiles.h"

}  // namespace
}  // namespace avx512_vpopcntdq_binary

void xor_popcount_avx512_vpopcntdq(const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, int64_t m, int64_t n,
                                   int64_t nbytes, int32_t* c, int64_t ldc) {
  avx512_vpopcntdq_binary::xor_popcount(a, lda, b, ldb, m, n, nbytes, c, ldc);
}

}  // namespace effgen::cpu

#pragma GCC pop_options
