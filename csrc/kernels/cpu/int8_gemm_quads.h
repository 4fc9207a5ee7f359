// for_each_quad(a, lda, k, step) calls step(kq, quad) for every group of kPackDepth values
// of K, where quad(i) returns the kPackDepth activation bytes of row i as one int32 (zero
// past K, like the packed weights). Include it inside an ISA namespace, after that ISA's
// target pragma (no include guard on purpose), so that the step inlines with the ISA's
// instructions and its accumulators stay in registers.

template <typename Step>
__attribute__((always_inline)) inline void for_each_quad(const int8_t* a, int64_t lda, int64_t k, Step&& step) {
  const int64_t full_quads = k / kPackDepth;
  for (int64_t kq = 0; kq < full_quads; ++kq) {
    step(kq, [&](int i) {
      int32_t q;
      std::memcpy(&q, a + i * lda + kq * kPackDepth, sizeof(q));
      return q;
    });
  }
  if (const int64_t rest = k - full_quads * kPackDepth; rest > 0) {
    step(full_quads, [&](int i) {
      int32_t q = 0;
      std::memcpy(&q, a + i * lda + full_quads * kPackDepth, static_cast<size_t>(rest));
      return q;
    });
  }
}
