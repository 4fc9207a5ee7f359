// Shared by the host-side tile tests (general_tile.cu, mma_tile.cu, wgmma_tile.cu,
// gemv_tile.cu): random operands, the pipelined kernels' staging loop (int8_pipeline.cuh's
// stage_rows, one piece at a time), the PTX ISA's ldmatrix and mma.sync m16n8k32 / m16n8k16
// rules, and the run over shapes with the comparison against a @ b^T. Include after the
// kernel file.
#pragma once
#include <array>
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

namespace tile_check {

using Matrix = std::vector<int8_t>;  // row-major [rows, k]

int32_t word_at(const int8_t* tile, int offset) {
  int32_t w;
  std::memcpy(&w, tile + offset, 4);
  return w;
}


// ldmatrix.x4 (PTX): lane l receives, from matrix q, bytes 4 (l % 4).. of the row whose
// address lane 8 q + l / 4 gave.
template <typename Address>
void ldmatrix(const int8_t* tile, Address address_of_lane, int32_t (&regs)[32][4]) {
  for (int l = 0; l < 32; ++l) {
    for (int q = 0; q < 4; ++q) regs[l][q] = word_at(tile, address_of_lane(8 * q + l / 4) + 4 * (l % 4));
  }
}

// mma.sync m16n8kK (PTX) with E signed integer elements per 32-bit register (E = 4: k32
// s8; E = 2: k16, integers standing in for bf16/fp16): lane = 4 g + t holds a rows g, g + 8
// at k E t.. (a0, a1) and 4 E + E t.. (a2, a3), the lowest k in the lowest bits; b column g at
// the same k (b0, b1); returns d[l][e] for rows g, g + 8 (e / 2) and columns 2t + e % 2.
template <int E>
void mma_of(const int32_t (&a)[32][4], const int32_t (&b0)[32], const int32_t (&b1)[32], int64_t (&d)[32][4]) {
  constexpr int kBits = 32 / E, kK = 8 * E;
  const auto element = [](int32_t word, int x) {  // sign-extended element x of the register
    return static_cast<int32_t>(static_cast<uint32_t>(word) << (32 - kBits * (x + 1))) >> (32 - kBits);
  };
  int64_t am[16][kK] = {}, bm[8][kK] = {};
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int x = 0; x < E; ++x) {
      am[g][E * t + x] = element(a[l][0], x), am[g + 8][E * t + x] = element(a[l][1], x);
      am[g][kK / 2 + E * t + x] = element(a[l][2], x), am[g + 8][kK / 2 + E * t + x] = element(a[l][3], x);
      bm[g][E * t + x] = element(b0[l], x), bm[g][kK / 2 + E * t + x] = element(b1[l], x);
    }
  }
  for (int l = 0; l < 32; ++l) {
    for (int e = 0; e < 4; ++e) {
      const int row = l / 4 + e / 2 * 8, col = 2 * (l % 4) + e % 2;
      int64_t sum = 0;
      for (int kk = 0; kk < kK; ++kk) sum += am[row][kk] * bm[col][kk];
      d[l][e] = sum;
    }
  }
}

// mma.sync m16n8k32 s8.
void mma(const int32_t (&a)[32][4], const int32_t (&b0)[32], const int32_t (&b1)[32], int64_t (&d)[32][4]) {
  mma_of<4>(a, b0, b1, d);
}

// Rows [row0, row0 + block_rows) x bytes [k0, k0 + 16 pieces) of src into tile, 16-byte
// piece p of row r at offset(r, p); bytes past the matrix are zeros.
template <typename Offset>
void stage(const Matrix& src, int64_t rows, int64_t k, int64_t row0, int64_t k0, int block_rows, int pieces,
           int8_t* tile, Offset offset) {
  for (int r = 0; r < block_rows; ++r) {
    for (int piece = 0; piece < pieces; ++piece) {
      const int64_t row = row0 + r, col = k0 + 16 * piece;
      for (int x = 0; x < 16; ++x) tile[offset(r, piece) + x] = row < rows && col + x < k ? src[row * k + col + x] : 0;
    }
  }
}

// What an emulated kernel produced: each output's value and how many times it was written.
struct Output {
  std::vector<int64_t> value;
  std::vector<int> writes;
  void put(int64_t index, int64_t v) { value[index] = v, ++writes[index]; }
};

// Emulates the kernel with emulate(m, n, k, a, b, out) on shapes with partial row, column
// and K tiles, K within one stage and across stages, more stages than any ring holds (and K
// not a multiple of 16 if odd_k);
// prints "ok" and returns 0 when every output was written once with the value of a @ b^T,
// else prints the first mismatch and returns 1.
template <typename Emulate>
int run(Emulate emulate, bool odd_k = false) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> value(-128, 127);
  std::vector<std::array<int64_t, 3>> shapes = {{17, 9, 16}, {130, 129, 80}, {40, 200, 192}, {128, 128, 64}, {33, 300, 656}};
  if (odd_k) shapes.insert(shapes.end(), {{5, 3, 7}, {70, 65, 99}});
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
