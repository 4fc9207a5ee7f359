// Host-side check of binary_gemm.cu's expand_packed_byte, what expand_bits_kernel runs for
// each packed byte: for int8, fp32, bf16 and fp16 codes, binary and ternary rows, K from 1
// to 4097 (the vector stores where k % 8 == 0), every byte of every row expanded, the result
// must be the plain decode of each weight (binary: bit 1 -> +1, 0 -> -1; ternary: positive
// minus negative plane, overlapping bits 0), bit for bit, and nothing written past the rows.
// No GPU needed; built and run by tests/test_binary.py. Exits 1 with the first mismatch.
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/kernels/cuda/binary_gemm.cu"

using effgen::cuda::expand_packed_byte;

namespace {

int plain_code(const std::vector<uint8_t>& packed, int64_t k, int planes, int64_t r, int64_t i) {
  const int64_t plane = (k + 7) / 8;
  const uint8_t* row = packed.data() + r * planes * plane;
  const int positive = (row[i / 8] >> (i % 8)) & 1;
  if (planes == 1) return 2 * positive - 1;
  return positive - ((row[plane + i / 8] >> (i % 8)) & 1);
}

template <typename T>
bool check(const char* name, std::mt19937& rng) {
  constexpr unsigned char kSentinel = 0xA5;
  for (int planes = 1; planes <= 2; ++planes) {
    for (int64_t k : {1, 7, 8, 33, 64, 4097, 4104}) {
      const int64_t rows = 3, plane = (k + 7) / 8;
      std::vector<uint8_t> packed(rows * planes * plane);
      for (auto& byte : packed) byte = static_cast<uint8_t>(rng());
      const size_t out_bytes = rows * k * sizeof(T);
      std::vector<uint4> storage(out_bytes / 16 + 2);  // 16-byte aligned, room after the rows
      std::memset(storage.data(), kSentinel, storage.size() * 16);
      T* out = reinterpret_cast<T*>(storage.data());
      const bool vector = k % 8 == 0;
      for (int64_t item = 0; item < rows * plane; ++item) expand_packed_byte(packed.data(), k, planes, out, vector, item);
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t i = 0; i < k; ++i) {
          const int code = plain_code(packed, k, planes, r, i);
          T want;
          if constexpr (std::is_same_v<T, int8_t>) {
            want = static_cast<int8_t>(code);
          } else {
            want = effgen::cuda::from_f32<T>(static_cast<float>(code));
          }
          if (std::memcmp(&out[r * k + i], &want, sizeof(T)) != 0) {
            std::printf("%s, %d plane(s), k %lld: row %lld weight %lld is not %d\n", name, planes, (long long)k,
                        (long long)r, (long long)i, code);
            return false;
          }
        }
      }
      const auto* bytes = reinterpret_cast<const unsigned char*>(storage.data());
      for (size_t b = out_bytes; b < storage.size() * 16; ++b) {
        if (bytes[b] != kSentinel) {
          std::printf("%s, %d plane(s), k %lld: byte %zu past the rows written\n", name, planes, (long long)k, b);
          return false;
        }
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  std::mt19937 rng(5);
  if (!(check<int8_t>("int8", rng) && check<float>("fp32", rng) && check<__nv_bfloat16>("bf16", rng) &&
        check<__half>("fp16", rng))) {
    return 1;
  }
  std::printf("ok\n");
  return 0;
}
