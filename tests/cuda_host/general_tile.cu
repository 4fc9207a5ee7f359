// Host-side check of the index math of the general 64x64 mma.sync GEMM (int8_gemm.cu, the
// kernel of odd K and unaligned operands): one block is emulated with the kernel's own
// fragment word positions and accumulator positions, its staged layout (row r, byte c of
// the K step at Stage[r][c]) and the PTX ISA's m16n8k32 fragment rules (tile_check.h), and
// must give a @ b^T, every output written once. No GPU needed; built and run by
// tests/test_int8_gemm.py. Exits 1 with the first mismatch.
#include <cstring>

#include "../../csrc/kernels/cuda/int8_gemm.cu"
#include "int8_gemm_stubs.h"
#include "tile_check.h"

using namespace effgen::cuda;
using tile_check::Matrix;

namespace {

int32_t word_at(const Stage& tile, TilePosition at) {
  int32_t w;
  std::memcpy(&w, &tile[at.row][at.col], 4);
  return w;
}

// One kernel launch over [m, k] x [n, k], block by block.
void emulate(int64_t m, int64_t n, int64_t k, const Matrix& a, const Matrix& b, tile_check::Output& out) {
  constexpr int kColTiles = 4;  // n8 tiles per warp, as in the kernel
  const auto row_major = [](int row, int piece) { return row * kRowBytes + 16 * piece; };  // Stage[row][byte]
  Stage a_tile, b_tile;
  for (int64_t row0 = 0; row0 < m; row0 += kTile) {
    for (int64_t col0 = 0; col0 < n; col0 += kTile) {
      static int64_t acc[kGemmWarps][kColTiles][32][4];
      std::memset(acc, 0, sizeof(acc));
      for (int64_t k0 = 0; k0 < k; k0 += kTileK) {
        tile_check::stage(a, m, k, row0, k0, kTile, kTileK / 16, &a_tile[0][0], row_major);
        tile_check::stage(b, n, k, col0, k0, kTile, kTileK / 16, &b_tile[0][0], row_major);
        for (int warp = 0; warp < kGemmWarps; ++warp) {
          int32_t fa[32][4];
          for (int l = 0; l < 32; ++l) {
            for (int q = 0; q < 4; ++q) fa[l][q] = word_at(a_tile, a_word_at(warp, l, q));
          }
          for (int t = 0; t < kColTiles; ++t) {
            int32_t b0[32], b1[32];
            for (int l = 0; l < 32; ++l) {
              b0[l] = word_at(b_tile, b_word_at(warp, l, t, 0)), b1[l] = word_at(b_tile, b_word_at(warp, l, t, 1));
            }
            int64_t d[32][4];
            tile_check::mma(fa, b0, b1, d);
            for (int l = 0; l < 32; ++l) {
              for (int e = 0; e < 4; ++e) acc[warp][t][l][e] += d[l][e];
            }
          }
        }
      }
      for (int warp = 0; warp < kGemmWarps; ++warp) {
        for (int t = 0; t < kColTiles; ++t) {
          for (int l = 0; l < 32; ++l) {
            for (int e = 0; e < 4; ++e) {
              const TilePosition at = general_accumulator_position(warp, l, t, e);
              const int64_t row = row0 + at.row, col = col0 + at.col;
              if (row < m && col < n) out.put(row * n + col, acc[warp][t][l][e]);
            }
          }
        }
      }
    }
  }
}

}  // namespace

int main() { return tile_check::run(emulate, /*odd_k=*/true); }
