// Tile loops of the binary kernels and the XNOR popcount driver, included inside an ISA's
// namespace (by binary_gemm_impl.h, and by binary_gemm_vpopcntdq.cpp alone) once it has
// defined template <int MR, int NR> void popcount_tile(const PopcountArgs&, int64_t i0,
// int64_t j0) and the tile sizes kPopM, kPopN.

// f.template operator()<mr, nr>(i, j) with compile-time mr <= MR, nr <= NR.
template <int MR, int NR, int kMaxN, typename F>
void call_tile(int64_t mr, int64_t nr, F& f, int64_t i, int64_t j) {
  if (mr == MR) {
    if (nr == NR) return f.template operator()<MR, NR>(i, j);
    if constexpr (NR > 1) return call_tile<MR, NR - 1, kMaxN>(mr, nr, f, i, j);
  } else if constexpr (MR > 1) {
    return call_tile<MR - 1, kMaxN, kMaxN>(mr, nr, f, i, j);
  }
}

template <int kM, int kN, typename F>
void for_tiles(int64_t m, int64_t n, F&& f) {
  for (int64_t i = 0; i < m; i += kM) {
    for (int64_t j = 0; j < n; j += kN) call_tile<kM, kN, kN>(m - i < kM ? m - i : kM, n - j < kN ? n - j : kN, f, i, j);
  }
}

void xor_popcount(const uint8_t* a, int64_t lda, const uint8_t* b, int64_t ldb, int64_t m, int64_t n,
                  int64_t nbytes, int32_t* c, int64_t ldc) {
  const PopcountArgs args{a, lda, b, ldb, nbytes, c, ldc};
  for_tiles<kPopM, kPopN>(m, n, [&]<int MR, int NR>(int64_t i, int64_t j) { popcount_tile<MR, NR>(args, i, j); });
}
