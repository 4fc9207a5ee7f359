// Host-side check of the per-token quantizer's lane values (csrc/kernels/cuda/quant.cu):
// item_f32 reads every bf16 / fp16 bit pattern, in either half of its word, as to_f32 does,
// bit for bit; items_absmax_bits, which compares 16-bit magnitudes two at a time and widens
// only the largest, gives the largest abs_bits(to_f32(v)) of a lane's items (fp32 too), on
// random patterns (NaN, Inf, subnormals and -0 among them) and random values. No GPU
// needed; built and run by tests/test_quant.py. Exits 1 with the first mismatch.
#include <cstdio>
#include <random>

#include "../../csrc/kernels/cuda/quant.cu"

using effgen::cuda::abs_bits;
using effgen::cuda::float_bits;
using effgen::cuda::item_f32;
using effgen::cuda::items_absmax_bits;
using effgen::cuda::kItems;
using effgen::cuda::LaneItems;
using effgen::cuda::to_f32;

namespace {

template <typename T>
T from_bits(uint16_t bits) {
  T value;
  memcpy(&value, &bits, sizeof value);
  return value;
}

template <typename T>
bool every_pattern_reads_as_to_f32(const char* name) {
  for (uint32_t p = 0; p < 65536; ++p) {
    const uint32_t expected = float_bits(to_f32(from_bits<T>(static_cast<uint16_t>(p))));
    for (int j = 0; j < 2; ++j) {
      LaneItems<T> items{};
      items.words[0] = j == 0 ? p | 0xABCD0000u : p << 16 | 0x1234u;  // the other half: noise
      const uint32_t got = float_bits(item_f32(items, j));
      if (got != expected) {
        std::printf("%s pattern 0x%04x in half %d: 0x%08x, expected 0x%08x\n", name, p, j, got, expected);
        return false;
      }
    }
  }
  return true;
}

template <typename T>
uint32_t plain_absmax_bits(const LaneItems<T>& items) {
  uint32_t bits = 0;
  for (int j = 0; j < kItems; ++j) {
    const uint32_t item = abs_bits(to_f32(items.values[j]));
    bits = item > bits ? item : bits;
  }
  return bits;
}

template <typename T>
bool absmax_matches(const char* name) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 3.0f);
  for (int trial = 0; trial < 200000; ++trial) {
    LaneItems<T> items{};
    for (int j = 0; j < kItems; ++j) {
      if constexpr (sizeof(T) == 4) {
        items.values[j] = trial % 2 ? normal(rng) : effgen::cuda::bits_float(static_cast<uint32_t>(rng()));
      } else if (trial % 2) {
        items.values[j] = effgen::cuda::from_f32<T>(normal(rng));
      } else {
        items.values[j] = from_bits<T>(static_cast<uint16_t>(rng()));
      }
    }
    const uint32_t got = items_absmax_bits(items), expected = plain_absmax_bits(items);
    if (got != expected) {
      std::printf("%s trial %d: absmax bits 0x%08x, expected 0x%08x\n", name, trial, got, expected);
      return false;
    }
  }
  return true;
}

}  // namespace

int main() {
  const bool ok = every_pattern_reads_as_to_f32<__nv_bfloat16>("bf16") && every_pattern_reads_as_to_f32<__half>("fp16") &&
                  absmax_matches<float>("fp32") && absmax_matches<__nv_bfloat16>("bf16") &&
                  absmax_matches<__half>("fp16");
  if (!ok) return 1;
  std::printf("ok\n");
  return 0;
}
