// Host-side check of the index math of the 128x128 mma.sync GEMM (int8_gemm_tiled.cu):
// one block is emulated with the kernel's own functions (staging offsets, ldmatrix lane
// addresses, accumulator positions) and the PTX ISA's ldmatrix and m16n8k32 fragment
// layouts (tile_check.h), and must give a @ b^T, every output written once. No GPU
// needed; built and run by tests/test_int8_gemm.py. Exits 1 with the first mismatch.
#include <cstring>

#include "../../csrc/kernels/cuda/int8_gemm_tiled.cu"
#include "tile_check.h"

using namespace effgen::cuda;
using tile_check::Matrix;

namespace {

// One kernel launch over [m, k] x [n, k], block by block.
void emulate(int64_t m, int64_t n, int64_t k, const Matrix& a, const Matrix& b, tile_check::Output& out) {
  const auto offset = [](int row, int piece) { return swizzled(row, piece); };
  std::vector<int8_t> tile_a(kBlockRows * kBlockK), tile_b(kBlockRows * kBlockK);
  for (int64_t row0 = 0; row0 < m; row0 += kBlockRows) {
    for (int64_t col0 = 0; col0 < n; col0 += kBlockRows) {
      static int64_t acc[kWarps][kMTiles][kNTiles][32][4];
      std::memset(acc, 0, sizeof(acc));
      for (int64_t t = 0; t * kBlockK < k; ++t) {
        tile_check::stage(a, m, k, row0, t * kBlockK, kBlockRows, kPieces, tile_a.data(), offset);
        tile_check::stage(b, n, k, col0, t * kBlockK, kBlockRows, kPieces, tile_b.data(), offset);
        for (int warp = 0; warp < kWarps; ++warp) {
          for (int step = 0; step < kBlockK / 32; ++step) {
            int32_t fa[kMTiles][32][4], fb[kNTiles][32][2];
            for (int i = 0; i < kMTiles; ++i) {
              const auto address = [&](int lane) { return a_fragment_offset(warp, lane, i, step); };
              tile_check::ldmatrix(tile_a.data(), address, fa[i]);
            }
            for (int j = 0; j < kNTiles; j += 2) {
              int32_t r[32][4];
              tile_check::ldmatrix(tile_b.data(), [&](int lane) { return b_fragment_offset(warp, lane, j, step); }, r);
              for (int l = 0; l < 32; ++l) {
                fb[j][l][0] = r[l][0], fb[j][l][1] = r[l][1], fb[j + 1][l][0] = r[l][2], fb[j + 1][l][1] = r[l][3];
              }
            }
            for (int i = 0; i < kMTiles; ++i) {
              for (int j = 0; j < kNTiles; ++j) {
                int32_t b0[32], b1[32];
                for (int l = 0; l < 32; ++l) b0[l] = fb[j][l][0], b1[l] = fb[j][l][1];
                int64_t d[32][4];
                tile_check::mma(fa[i], b0, b1, d);
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
              for (int e = 0; e < 4; e += 2) {  // the kernel's epilogue: e, e + 1 stored as a pair
                const TilePosition at = accumulator_position(warp, l, i, j, e);
                for (int x = 0; x < 2; ++x) {
                  const int64_t row = row0 + at.row, col = col0 + at.col + x;
                  if (row < m && col < n) out.put(row * n + col, acc[warp][i][j][l][e + x]);
                }
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
