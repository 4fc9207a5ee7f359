// lut_dispatch<M>: the product of lut_sums (see BinaryGemmKernels) for m <= M rows over an
// ISA's register-tiled LUT kernel
//   template <int M, int kPlanes> void lut_tiles(const float* tables, int64_t k,
//       const uint8_t* tiles, int64_t t0, int64_t t1, float* sums, int64_t lds, extra...);
// with the row count M as a compile-time size; `extra` (such as per-group alphas) passes
// through to the kernel. Include it inside the ISA namespace after
// lut_tiles (no include guard on purpose), like int8_gemm_quads.h.

template <int M = kLutMaxM, typename... Extra>
void lut_dispatch(const float* tables, int64_t m, int64_t k, const uint8_t* tiles, int64_t t0, int64_t t1,
                  int planes, float* sums, int64_t lds, const Extra&... extra) {
  if constexpr (M > 1) {
    if (m < M) return lut_dispatch<M - 1>(tables, m, k, tiles, t0, t1, planes, sums, lds, extra...);
  }
  if (planes == 2) return lut_tiles<M, 2>(tables, k, tiles, t0, t1, sums, lds, extra...);
  lut_tiles<M, 1>(tables, k, tiles, t0, t1, sums, lds, extra...);
}
