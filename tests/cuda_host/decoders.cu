// Host-side check of compress.cu's decoders (decompress_sum_int8 / _sign): every lane's
// work (decode_lane, as the kernel's grid runs it) over shapes that take the vector paths
// (4-value groups) and the value-by-value ones, against the sums written out plainly: each
// value of each row times its block's scale (int8) or its block's level for its bit (sign),
// added in row order. Every output must be
// written once. No GPU needed; built and run by tests/test_compress.py. Exits 1 with the
// first mismatch.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <vector>

#include "../../csrc/kernels/cuda/compress.cu"

using namespace effgen::cuda;

namespace {

// Fills total by every lane's decode_lane of every warp's values (the kernel's grid).
template <typename Codec>
void run_grid(const DecodeArgs& a) {
  for (int64_t warp_first = 0; warp_first < a.n; warp_first += kWarpValues<Codec>) {
    for (int lane = 0; lane < 32; ++lane) decode_lane<Codec>(a, warp_first, lane);
  }
}

bool check(const char* what, int64_t n, int64_t block, const std::vector<float>& got, const std::vector<float>& want) {
  for (int64_t i = 0; i < n; ++i) {
    if (got[i] != want[i]) {
      std::printf("%s, n %lld, block %lld: total[%lld] = %g, expected %g\n", what, (long long)n, (long long)block,
                  (long long)i, got[i], want[i]);
      return false;
    }
  }
  return true;
}

bool check_shape(int64_t n, int64_t block, std::mt19937& rng) {
  constexpr int64_t kRows = 3;
  const int64_t blocks = (n + block - 1) / block, row_bytes = (n + 7) / 8;
  std::uniform_int_distribution<int> code(-127, 127), byte(0, 255);
  std::uniform_real_distribution<float> scale(0.01f, 2.0f);
  // 16-byte aligned storage, as the launchers require for the vector paths
  std::vector<int4> q_storage((kRows * n + 15) / 16 + 1), packed_storage((kRows * row_bytes + 15) / 16 + 1);
  auto* q = reinterpret_cast<int8_t*>(q_storage.data());
  auto* packed = reinterpret_cast<uint8_t*>(packed_storage.data());
  std::vector<float> scales(kRows * blocks), levels(kRows * blocks * 2);
  for (int64_t i = 0; i < kRows * n; ++i) q[i] = static_cast<int8_t>(code(rng));
  for (int64_t i = 0; i < kRows * row_bytes; ++i) packed[i] = static_cast<uint8_t>(byte(rng));
  for (auto& s : scales) s = scale(rng);
  for (auto& level : levels) level = scale(rng) - 1.0f;  // either sign, low above high too

  std::vector<float> want_int8(n, 0.0f), want_sign(n, 0.0f);
  for (int64_t r = 0; r < kRows; ++r) {
    for (int64_t i = 0; i < n; ++i) {
      const float s = scales[r * blocks + i / block];
      want_int8[i] = want_int8[i] + float(q[r * n + i]) * s;
      const int bit = (packed[r * row_bytes + i / 8] >> (i % 8)) & 1;
      want_sign[i] = want_sign[i] + levels[(r * blocks + i / block) * 2 + bit];
    }
  }
  // NaN marks outputs never written; the launchers' vector conditions decide the path
  std::vector<float> total_storage(n + 8, NAN);
  float* total = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(total_storage.data()) + 15) / 16 * 16);
  const bool int8_vector = n % kGroupValues == 0 && block % kGroupValues == 0;
  run_grid<Int8Codes>(DecodeArgs{q, scales.data(), kRows, n, block, blocks, int8_vector, total});
  if (!check(int8_vector ? "int8, vector" : "int8", n, block, std::vector<float>(total, total + n), want_int8)) {
    return false;
  }
  std::fill(total, total + n, NAN);
  const bool sign_vector = block % kGroupValues == 0;
  run_grid<SignBits>(DecodeArgs{packed, levels.data(), kRows, n, block, blocks, sign_vector, total});
  return check(sign_vector ? "sign, vector" : "sign", n, block, std::vector<float>(total, total + n), want_sign);
}

}  // namespace

int main() {
  std::mt19937 rng(5);
  const int64_t shapes[][2] = {{1, 4}, {4099, 256}, {70001, 64}, {4096, 256}, {1000, 12}, {4112, 16}, {8192, 32},
                               {4160, 64}, {4100, 4}, {5000, 200}, {1030, 1030}, {3, 1}, {70000, 1000}};
  for (const auto& shape : shapes) {
    if (!check_shape(shape[0], shape[1], rng)) return 1;
  }
  std::printf("ok\n");
  return 0;
}
