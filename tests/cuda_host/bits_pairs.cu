// Host-side check of binary_gemm.cu's pair_bits + binary_pair / ternary_pair, the decode of
// packed bits into the 16-bit A operand of its tensor-core GEMV: for random plane words and
// every pair, both halves must be the exact +1 / -1 / 0 of bf16 and fp16 that the packed
// weight stands for (binary: bit 1 -> +1, 0 -> -1; ternary: positive minus negative plane),
// the lower k in the low half. No GPU needed; built and run by tests/test_binary.py. Exits 1
// with the first mismatch.
#include <random>

#include "../../csrc/kernels/cuda/binary_gemm.cu"

using namespace effgen::cuda;

namespace {

// The value a half's bits stand for, of the three a weight can be (else 99).
int decoded(uint16_t bits, uint16_t one) {
  if (bits == one) return 1;
  if (bits == (one | 0x8000u)) return -1;
  return bits == 0 || bits == 0x8000u ? 0 : 99;
}

// The decoder's pair i of plane words (positive, negative), as BitsDecoder::pair makes it.
template <typename T, int PLANES>
uint32_t decode_pair(uint32_t positive, uint32_t negative, int i) {
  if constexpr (PLANES == 1) return binary_pair<T>(pair_bits(~positive), i);
  return ternary_pair<T>(pair_bits(positive ^ negative), pair_bits(negative), i);
}

template <typename T>
bool check_type(uint16_t one, const char* name) {
  std::mt19937 rng(11);
  for (int trial = 0; trial < 200; ++trial) {
    // planes that overlap are never packed, but decode as unpack does: p - n = 0
    const uint32_t positive = rng(), negative = rng();
    for (int planes = 1; planes <= 2; ++planes) {
      for (int i = 0; i < 16; ++i) {
        const uint32_t pair =
            planes == 1 ? decode_pair<T, 1>(positive, 0, i) : decode_pair<T, 2>(positive, negative, i);
        for (int h = 0; h < 2; ++h) {
          const int k = 2 * i + h;
          const int p = (positive >> k) & 1, n = (negative >> k) & 1;
          const int want = planes == 1 ? 2 * p - 1 : p - n;
          const int got = decoded(static_cast<uint16_t>(pair >> (16 * h)), one);
          if (got != want) {
            std::printf("%s, %d plane(s), weight %d: got %d, expected %d\n", name, planes, k, got, want);
            return false;
          }
        }
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  if (!check_type<__nv_bfloat16>(0x3F80u, "bf16") || !check_type<__half>(0x3C00u, "fp16")) return 1;
  std::printf("ok\n");
  return 0;
}
