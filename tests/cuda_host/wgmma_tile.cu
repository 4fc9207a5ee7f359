// Host-side check of the index math of the 128x128 wgmma GEMM (int8_gemm_wgmma.cu): one
// block is emulated with the kernel's own functions (staging offsets, descriptor encoding,
// operand offsets, accumulator positions) and the PTX ISA's rules written out here (the
// matrix descriptor's bit fields; a K-major, no-swizzle operand's element (row, k) at
// start + (row / 8) stride + (k / 16) leading + (row % 8) 16 + k % 16; the m64nN result
// fragment), and must give a @ b^T, every output written once. No GPU needed; built and
// run by tests/test_int8_gemm.py. Exits 1 with the first mismatch.
#include <cstddef>
#include <cstdlib>
#include <cstring>

#include "../../csrc/kernels/cuda/int8_gemm_wgmma.cu"
#include "tile_check.h"

using namespace effgen::cuda;
using tile_check::Matrix;

namespace {

// A descriptor's fields (PTX ISA): address, leading and stride byte offsets (>> 4 in bits
// 0-13, 16-29, 32-45) and the swizzle mode (bits 62-63).
struct Descriptor {
  uint32_t address, leading, stride, swizzle;
};

Descriptor decode(uint64_t bits) {
  return {uint32_t(bits & 0x3FFF) << 4, uint32_t(bits >> 16 & 0x3FFF) << 4, uint32_t(bits >> 32 & 0x3FFF) << 4,
          uint32_t(bits >> 62)};
}

// Element (row, kk) of a K-major, no-swizzle operand of 32 bytes of K.
int8_t operand(const int8_t* shared, const Descriptor& d, int row, int kk) {
  return shared[d.address + row / 8 * d.stride + kk / 16 * d.leading + row % 8 * 16 + kk % 16];
}

// One kernel launch over [m, k] x [n, k], block by block; exits 1 if a descriptor asks for
// a swizzle the staging does not use.
void emulate(int64_t m, int64_t n, int64_t k, const Matrix& a, const Matrix& b, tile_check::Output& out) {
  const auto offset = [](int row, int piece) { return core_matrix_offset(row, piece); };
  // one stage as shared memory: a at 0, b after it (descriptor addresses are offsets here)
  std::vector<int8_t> shared(sizeof(Stage));
  const uint32_t a_base = offsetof(Stage, a), b_base = offsetof(Stage, b);
  for (int64_t row0 = 0; row0 < m; row0 += kBlockRows) {
    for (int64_t col0 = 0; col0 < n; col0 += kBlockRows) {
      static int64_t d[2][kWarpgroupRows][kBlockRows];  // per warpgroup: its m64n128 result
      std::memset(d, 0, sizeof(d));
      for (int64_t t = 0; t * kBlockK < k; ++t) {
        tile_check::stage(a, m, k, row0, t * kBlockK, kBlockRows, kPieces, shared.data() + a_base, offset);
        tile_check::stage(b, n, k, col0, t * kBlockK, kBlockRows, kPieces, shared.data() + b_base, offset);
        for (int warpgroup = 0; warpgroup < 2; ++warpgroup) {
          for (int half = 0; half < kBlockK / 32; ++half) {
            const Descriptor da = decode(encode_descriptor(a_base + a_operand_offset(warpgroup, half)));
            const Descriptor db = decode(encode_descriptor(b_base + b_operand_offset(half)));
            if (da.swizzle != 0 || db.swizzle != 0) {
              std::printf("a descriptor sets swizzle mode %u / %u\n", da.swizzle, db.swizzle);
              std::exit(1);
            }
            for (int row = 0; row < kWarpgroupRows; ++row) {
              for (int col = 0; col < kBlockRows; ++col) {
                for (int kk = 0; kk < 32; ++kk) {
                  d[warpgroup][row][col] +=
                      int64_t{operand(shared.data(), da, row, kk)} * operand(shared.data(), db, col, kk);
                }
              }
            }
          }
        }
      }
      // m64nN result fragment (PTX): d[v] of warp w, lane 4 g + t is row 16 w + g + 8 (v / 2 % 2),
      // column 8 (v / 4) + 2 t + v % 2 of the warpgroup's result.
      for (int warpgroup = 0; warpgroup < 2; ++warpgroup) {
        for (int warp = 0; warp < 4; ++warp) {
          for (int l = 0; l < 32; ++l) {
            for (int v = 0; v < kAccumulators; ++v) {
              const int64_t value_v =
                  d[warpgroup][16 * warp + l / 4 + v / 2 % 2 * 8][8 * (v / 4) + 2 * (l % 4) + v % 2];
              const TilePosition at = wgmma_accumulator_position(warpgroup, warp, l, v);
              const int64_t row = row0 + at.row, col = col0 + at.col;
              if (row < m && col < n) out.put(row * n + col, value_v);
            }
          }
        }
      }
    }
  }
}

}  // namespace

int main() { return tile_check::run(emulate); }
