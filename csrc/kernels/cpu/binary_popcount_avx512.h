// The AVX-512 XNOR popcount tile, included inside the namespace of binary_gemm_avx512.cpp
// (popcounts by byte lookup) and of binary_gemm_vpopcntdq.cpp (by vpopcntq) once it has
// defined __m512i popcount_qwords(__m512i v): the bits set in each 64-bit lane of v.

constexpr int kPopM = 2, kPopN = 4;
// Weight rows are read a few hundred bytes at a time, kPopN rows at once: too short a run
// for the hardware prefetcher. Rows are adjacent, so this distance ahead of a row is a
// later tile's. Zen 5, XNOR 1x4096x4096 from memory: 0.21-0.28 -> 0.08 ms (AVX2: 0.13 -> 0.07).
constexpr int64_t kPopPrefetchBytes = 2048;

template <int MR, int NR>
void popcount_tile(const PopcountArgs& p, int64_t i0, int64_t j0) {
  __m512i acc[MR][NR];
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_setzero_si512();
  }
  for (int64_t byte = 0; byte < p.nbytes; byte += 64) {
    const int64_t rest = p.nbytes - byte;
    const __mmask64 valid = rest >= 64 ? ~__mmask64{0} : (__mmask64{1} << rest) - 1;  // zeros xor to zero
    __m512i bv[NR];
    for (int j = 0; j < NR; ++j) {
      const uint8_t* bytes = p.b + (j0 + j) * p.ldb + byte;
      _mm_prefetch(reinterpret_cast<const char*>(bytes) + kPopPrefetchBytes, _MM_HINT_T0);
      bv[j] = _mm512_maskz_loadu_epi8(valid, bytes);
    }
    for (int i = 0; i < MR; ++i) {
      const __m512i av = _mm512_maskz_loadu_epi8(valid, p.a + (i0 + i) * p.lda + byte);
      for (int j = 0; j < NR; ++j) acc[i][j] = _mm512_add_epi64(acc[i][j], popcount_qwords(_mm512_xor_si512(av, bv[j])));
    }
  }
  for (int i = 0; i < MR; ++i) {
    for (int j = 0; j < NR; ++j) p.c[(i0 + i) * p.ldc + j0 + j] = static_cast<int32_t>(_mm512_reduce_add_epi64(acc[i][j]));
  }
}
