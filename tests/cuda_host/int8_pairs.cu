// Host-side check of int8_gemm.cu's int8_pair_bf16_parts, the W8A16 GEMV's decode of two
// int8 weights into bf16: for every pair of byte values, at both byte positions, the two
// bf16 pairs must hold bf16 values (no NaN or Inf) whose sums are the bytes' signed values
// exactly (the kernel adds them in one bf16x2 fma by 1, exact for these small integers),
// the lower byte in the low halves. No GPU needed; built and run by tests/test_int8_gemm.py.
// Exits 1 with the first mismatch.
#include <cmath>
#include <cstdio>
#include <cstring>

#include "../../csrc/kernels/cuda/int8_gemm.cu"
#include "int8_gemm_stubs.h"

using namespace effgen::cuda;

namespace {

float bf16_value(uint32_t pair, int half) {
  const uint32_t bits = (pair >> (16 * half)) << 16;
  float v;
  std::memcpy(&v, &bits, 4);
  return v;
}

}  // namespace

int main() {
  for (uint32_t lo = 0; lo < 256; ++lo) {
    for (uint32_t hi = 0; hi < 256; ++hi) {
      for (int low = 0; low <= 2; low += 2) {
        // the other two bytes must not matter: fill them with the complement
        const uint32_t word = low == 0 ? (lo | hi << 8 | (~lo & 0xFFu) << 16 | (~hi & 0xFFu) << 24)
                                       : ((~lo & 0xFFu) | (~hi & 0xFFu) << 8 | lo << 16 | hi << 24);
        const Bf16Parts parts = int8_pair_bf16_parts(word, low);
        for (int half = 0; half < 2; ++half) {
          const float magnitude = bf16_value(parts.magnitude, half), offset = bf16_value(parts.offset, half);
          const int want = static_cast<int8_t>(half == 0 ? lo : hi);
          if (!std::isfinite(magnitude) || !std::isfinite(offset) || magnitude + offset != static_cast<float>(want)) {
            std::printf("bytes %u, %u at %d, half %d: %g + %g, expected %d\n", lo, hi, low, half, magnitude, offset,
                        want);
            return 1;
          }
        }
      }
    }
  }
  std::printf("ok\n");
  return 0;
}
