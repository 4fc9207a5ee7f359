// The AVX-512 XNOR popcount tile, included inside the namespace of binary_gemm_avx512.cpp
// (popcounts by byte lookup) and of binary_gemm_vpopcntdq.cpp (by vpopcntq) once it has
// defined __m512i popcount_qwords(__m512i v): the bits set in each 64-bit lane of v.

constexpr int kPopM = 2, kPopN = 4;
// Weight rows are read a few hundred bytes at a time, kPopN rows at once: too short a run
// for the hardware prefetcher. Rows are adjacent, so this distance ahead of a row is a
// later tile's. Zen 5, XNOR 1x4096x4096 from memory: 0.21-0.28 -> 0.08 ms (AVX2: 0.13 -> 0.07).
constexpr int64_t kPopPrefetchBytes = 2048;

// The unroll pragmas make GCC unroll the tile's loops before it places acc: without them
// it kept acc in memory and stored every accumulator once per step, and recomputed each
// row's address from p per step (Zen 5, 64 x 4096 x 4096 bits, vpopcntq: 2.2-2.4 -> 0.9-1.3 ms).
template <int MR, int NR>
void popcount_tile(const PopcountArgs& p, int64_t i0, int64_t j0) {
  const uint8_t* a_rows[MR];
  const uint8_t* b_rows[NR];
  __m512i acc[MR][NR];
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    a_rows[i] = p.a + (i0 + i) * p.lda;
    #pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  }
  #pragma GCC unroll 8
  for (int j = 0; j < NR; ++j) b_rows[j] = p.b + (j0 + j) * p.ldb;
  for (int64_t byte = 0; byte < p.nbytes; byte += 64) {
    const int64_t rest = p.nbytes - byte;
    const __mmask64 valid = rest >= 64 ? ~__mmask64{0} : (__mmask64{1} << rest) - 1;  // zeros xor to zero
    __m512i bv[NR];
    #pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) {
      _mm_prefetch(reinterpret_cast<const char*>(b_rows[j] + byte) + kPopPrefetchBytes, _MM_HINT_T0);
      bv[j] = _mm512_maskz_loadu_epi8(valid, b_rows[j] + byte);
    }
    #pragma GCC unroll 8
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_maskz_loadu_epi8(valid, a_rows[i] + byte);
      #pragma GCC unroll 8
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_add_epi64(acc[i][j], popcount_qwords(_mm512_xor_si512(av, bv[j])));
    }
  }
  #pragma GCC unroll 8
  for (int i = 0; i < MR; ++i) {
    #pragma GCC unroll 8
    for (int j = 0; j < NR; ++j) p.c[(i0 + i) * p.ldc + j0 + j] = static_cast<int32_t>(_mm512_reduce_add_epi64(acc[i][j]));
  }
}
