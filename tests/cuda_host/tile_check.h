// Shared by the host-side tile tests (mma_tile.cu, wgmma_tile.cu): random operands, the
// kernels' staging loop (int8_pipeline.cuh's stage_rows, one piece at a time) and the run
// over shapes with the comparison against a @ b^T. Include after the kernel file.
#pragma once
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace tile_check {

using Matrix = std::vector<int8_t>;  // row-major [rows, k]

// Rows [row0, row0 + 128) x K tile t of src into tile, piece p of row r at offset(r, p);
// pieces past the matrix are zeros.
template <typename Offset>
void stage(const Matrix& src, int64_t rows, int64_t k, int64_t row0, int64_t t, int8_t* tile, Offset offset) {
  using namespace effgen::cuda;
  for (int idx = 0; idx < kBlockRows * kPieces; ++idx) {
    const int r = idx / kPieces, piece = idx % kPieces;
    const int64_t row = row0 + r, col = t * kBlockK + 16 * piece;
    for (int x = 0; x < 16; ++x) tile[offset(r, piece) + x] = row < rows && col < k ? src[row * k + col + x] : 0;
  }
}

// What an emulated kernel produced: each output's value and how many times it was written.
struct Output {
  std::vector<int64_t> value;
  std::vector<int> writes;
  void put(int64_t index, int64_t v) { value[index] = v, ++writes[index]; }
};

// Emulates the kernel with emulate(m, n, k, a, b, out) on shapes with partial row, column
// and K tiles, K within one stage and across stages; prints "ok" and returns 0 when every
// output was written once with the value of a @ b^T, else prints the first mismatch, 1.
template <typename Emulate>
int run(Emulate emulate) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> value(-128, 127);
  const int64_t shapes[][3] = {{17, 9, 16}, {130, 129, 80}, {40, 200, 192}, {128, 128, 64}};
  for (const auto& shape : shapes) {
    const int64_t m = shape[0], n = shape[1], k = shape[2];
    Matrix a(m * k), b(n * k);
    for (auto& v : a) v = static_cast<int8_t>(value(rng));
    for (auto& v : b) v = static_cast<int8_t>(value(rng));
    Output out{std::vector<int64_t>(m * n, 0), std::vector<int>(m * n, 0)};
    emulate(m, n, k, a, b, out);
    for (int64_t i = 0; i < m * n; ++i) {
      int64_t expected = 0;
      for (int64_t kk = 0; kk < k; ++kk) expected += int64_t{a[i / n * k + kk]} * b[i % n * k + kk];
      if (out.writes[i] != 1 || out.value[i] != expected) {
        std::printf("%lldx%lldx%lld: out[%lld][%lld] = %lld written %d times, expected %lld\n", (long long)m,
                    (long long)n, (long long)k, (long long)(i / n), (long long)(i % n), (long long)out.value[i],
                    out.writes[i], (long long)expected);
        return 1;
      }
    }
  }
  std::printf("ok\n");
  return 0;
}

}  // namespace tile_check
