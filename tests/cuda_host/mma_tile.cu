// Host-side check of the index math of the 128x128 mma.sync GEMM (int8_gemm_tiled.cu):
// one block is emulated with the kernel's own functions (staging offsets, ldmatrix lane
// addresses, accumulator positions) and the PTX ISA's ldmatrix and m16n8k32 fragment
// layouts written out here, and must give a @ b^T, every output written once. No GPU
// needed; built and run by tests/test_int8_gemm.py. Exits 1 with the first mismatch.
#include <cstring>

#include "../../csrc/kernels/cuda/int8_gemm_tiled.cu"
#include "tile_check.h"

using namespace effgen::cuda;
using tile_check::Matrix;

namespace {

int32_t word_at(const int8_t* tile, int offset) {
  int32_t w;
  std::memcpy(&w, tile + offset, 4);
  return w;
}

int8_t byte_of(int32_t word, int b) { return static_cast<int8_t>(static_cast<uint32_t>(word) >> (8 * b)); }

// ldmatrix.x4 (PTX): lane l receives, from matrix q, bytes 4 (l % 4).. of the row whose
// address lane 8 q + l / 4 gave.
template <typename Address>
void ldmatrix(const int8_t* tile, Address address_of_lane, int32_t (&regs)[32][4]) {
  for (int l = 0; l < 32; ++l) {
    for (int q = 0; q < 4; ++q) regs[l][q] = word_at(tile, address_of_lane(8 * q + l / 4) + 4 * (l % 4));
  }
}

// mma.sync m16n8k32 s8 (PTX): lane = 4 g + t holds a rows g, g + 8 at bytes 4t.. (a0, a1)
// and 16 + 4t.. (a2, a3); b column g at bytes 4t.. (b0) and 16 + 4t.. (b1); returns d[l][e]
// for rows g, g + 8 (e / 2) and columns 2t + e % 2.
void mma(const int32_t (&a)[32][4], const int32_t (&b0)[32], const int32_t (&b1)[32], int64_t (&d)[32][4]) {
  int64_t am[16][32] = {}, bm[8][32] = {};
  for (int l = 0; l < 32; ++l) {
    const int g = l / 4, t = l % 4;
    for (int x = 0; x < 4; ++x) {
      am[g][4 * t + x] = byte_of(a[l][0], x), am[g + 8][4 * t + x] = byte_of(a[l][1], x);
      am[g][16 + 4 * t + x] = byte_of(a[l][2], x), am[g + 8][16 + 4 * t + x] = byte_of(a[l][3], x);
      bm[g][4 * t + x] = byte_of(b0[l], x), bm[g][16 + 4 * t + x] = byte_of(b1[l], x);
    }
  }
  for (int l = 0; l < 32; ++l) {
    for (int e = 0; e < 4; ++e) {
      const int row = l / 4 + e / 2 * 8, col = 2 * (l % 4) + e % 2;
      int64_t sum = 0;
      for (int kk = 0; kk < 32; ++kk) sum += am[row][kk] * bm[col][kk];
      d[l][e] = sum;
    }
  }
}

// One kernel launch over [m, k] x [n, k], block by block.
void emulate(int64_t m, int64_t n, int64_t k, const Matrix& a, const Matrix& b, tile_check::Output& out) {
  const auto offset = [](int row, int piece) { return swizzled(row, piece); };
  std::vector<int8_t> tile_a(kBlockRows * kBlockK), tile_b(kBlockRows * kBlockK);
  for (int64_t row0 = 0; row0 < m; row0 += kBlockRows) {
    for (int64_t col0 = 0; col0 < n; col0 += kBlockRows) {
      static int64_t acc[kWarps][kMTiles][kNTiles][32][4];
      std::memset(acc, 0, sizeof(acc));
      for (int64_t t = 0; t * kBlockK < k; ++t) {
        tile_check::stage(a, m, k, row0, t, tile_a.data(), offset);
        tile_check::stage(b, n, k, col0, t, tile_b.data(), offset);
        for (int warp = 0; warp < kWarps; ++warp) {
          for (int step = 0; step < kBlockK / 32; ++step) {
            int32_t fa[kMTiles][32][4], fb[kNTiles][32][2];
            for (int i = 0; i < kMTiles; ++i) {
              ldmatrix(tile_a.data(), [&](int lane) { return a_fragment_offset(warp, lane, i, step); }, fa[i]);
            }
            for (int j = 0; j < kNTiles; j += 2) {
              int32_t r[32][4];
              ldmatrix(tile_b.data(), [&](int lane) { return b_fragment_offset(warp, lane, j, step); }, r);
              for (int l = 0; l < 32; ++l) {
                fb[j][l][0] = r[l][0], fb[j][l][1] = r[l][1], fb[j + 1][l][0] = r[l][2], fb[j + 1][l][1] = r[l][3];
              }
            }
            for (int i = 0; i < kMTiles; ++i) {
              for (int j = 0; j < kNTiles; ++j) {
                int32_t b0[32], b1[32];
                for (int l = 0; l < 32; ++l) b0[l] = fb[j][l][0], b1[l] = fb[j][l][1];
                int64_t d[32][4];
                mma(fa[i], b0, b1, d);
                for (int l = 0; l < 32; ++l) {
                  for (int e = 0; e < 4; ++e) acc[warp][i][j][l][e] += d[l][e];
                }
              }
            }
          }
        }
      }
      for (int warp = 0; warp < kWarps; ++warp) {
        for (int i = 0; i < kMTiles; ++i) {
          for (int j = 0; j < kNTiles; ++j) {
            for (int l = 0; l < 32; ++l) {
              for (int e = 0; e < 4; ++e) {
                const TilePosition at = accumulator_position(warp, l, i, j, e);
                const int64_t row = row0 + at.row, col = col0 + at.col;
                if (row < m && col < n) out.put(row * n + col, acc[warp][i][j][l][e]);
              }
            }
          }
        }
      }
    }
  }
}

}  // namespace

int main() { return tile_check::run(emulate); }
