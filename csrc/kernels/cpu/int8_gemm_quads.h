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

// The cache lines of a PrefetchRange spread evenly over the `steps` steps of a loop: step s
// prefetches lines [s * per_step, (s + 1) * per_step), so the memory streams in at the
// loop's pace instead of in a burst that would stall it on full miss buffers.
struct LinePrefetcher {
  static constexpr int64_t kLine = 64;
  const int8_t* begin;
  int64_t lines, per_step;

  LinePrefetcher(PrefetchRange range, int64_t steps)
      : begin(range.begin),
        lines((range.bytes + kLine - 1) / kLine),
        per_step(steps > 0 ? (lines + steps - 1) / steps : 0) {}

  __attribute__((always_inline)) void operator()(int64_t step) const {
    const int64_t end = (step + 1) * per_step < lines ? (step + 1) * per_step : lines;
    // Locality 2 (prefetcht1): for the next call's panel, which lives in L2 while it runs.
    for (int64_t line = step * per_step; line < end; ++line) __builtin_prefetch(begin + line * kLine, 0, 2);
  }
};

struct NoPrefetch {
  __attribute__((always_inline)) void operator()(int64_t /*step*/) const {}
};

// body(prefetcher) with a LinePrefetcher over `range` in `steps` steps, or, where the range is
// empty (most tiles of a batch: only a block's last row tiles prefetch the next block), with
// NoPrefetch: the empty range's per-step bounds check cost compute-bound tiles 0-6% on
// AVX-512 (6 x 64) and 14-25% on AVX2 (2 x 16).
template <typename Body>
__attribute__((always_inline)) inline void with_prefetcher(PrefetchRange range, int64_t steps, Body&& body) {
  if (range.bytes > 0) {
    body(LinePrefetcher(range, steps));
  } else {
    body(NoPrefetch{});
  }
}
