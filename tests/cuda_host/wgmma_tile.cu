// Host-side check of the index math of the TMA + wgmma GEMM (int8_gemm_wgmma.cu): a launch
// is emulated block by block with the kernel's own functions (persistent blocks, tile order,
// ring slots, stage offsets, descriptor encoding, operand offsets, accumulator positions) and
// the hardware rules written out here, and must give a @ b^T, every output written once. The
// rules, from the PTX ISA and the CUDA driver API as transcribed:
// - TMA with CU_TENSOR_MAP_SWIZZLE_128B writes box row r (128 bytes) at r * 128, its 16-byte
//   piece j at piece j ^ (r % 8), zeros where the box leaves the matrix;
// - a matrix descriptor holds address >> 4 (bits 0-13), leading byte offset >> 4 (16-29),
//   stride byte offset >> 4 (32-45), base offset (49-51), swizzle mode (62-63, 1 = 128B);
// - a K-major 128B-swizzled operand's element (row, kk) is at the address
//   u = start + (row / 8) stride + (row % 8) 128 + kk, with bits 4-6 of u XORed with bits 7-9;
// - the m64nN result fragment puts d[v] of warp w, lane l at row 16 w + l / 4 + 8 (v / 2 % 2),
//   column 8 (v / 4) + 2 (l % 4) + v % 2 (the kernel stores d[v], d[v + 1] as a pair).
// No GPU needed; built and run by tests/test_int8_gemm.py. Exits 1 with the first mismatch.
#include <cstdlib>
#include <cstring>

#include "../../csrc/kernels/cuda/int8_gemm_wgmma.cu"
#include "tile_check.h"

using namespace effgen::cuda;
using tile_check::Matrix;

namespace {

struct Descriptor {
  uint32_t address, leading, stride, base_offset, swizzle;
};

Descriptor decode(uint64_t bits) {
  return {uint32_t(bits & 0x3FFF) << 4, uint32_t(bits >> 16 & 0x3FFF) << 4, uint32_t(bits >> 32 & 0x3FFF) << 4,
          uint32_t(bits >> 49 & 7), uint32_t(bits >> 62)};
}

// Element (row, kk) of the K-major operand at descriptor d, 128-byte swizzle.
int8_t operand(const std::vector<int8_t>& shared, const Descriptor& d, int row, int kk) {
  const uint32_t u = d.address + row / 8 * d.stride + row % 8 * 128 + kk;
  return shared[u ^ ((u >> 7 & 7) << 4)];
}

// TMA's write of the box at (k0, row0) of src [rows, k], box_rows x kTileK bytes, to dst.
void tma_box(const Matrix& src, int64_t rows, int64_t k, int64_t row0, int64_t k0, int box_rows, int8_t* dst) {
  for (int r = 0; r < box_rows; ++r) {
    for (int j = 0; j < kTileK; ++j) {
      const int64_t row = row0 + r, col = k0 + j;
      dst[r * 128 + (j / 16 ^ r % 8) * 16 + j % 16] = row < rows && col < k ? src[row * k + col] : 0;
    }
  }
}

// Exits 1 unless a descriptor is what the kernel's layout needs.
void check_descriptor(const Descriptor& d) {
  if (d.swizzle != 1 || d.base_offset != 0 || d.stride != kAtomBytes || d.address % 16 != 0) {
    std::printf("descriptor: swizzle %u, base offset %u, stride %u, address %u\n", d.swizzle, d.base_offset, d.stride,
                d.address);
    std::exit(1);
  }
}

// Exits 1 unless block_tile visits every (row tile, column tile) once.
void check_block_order() {
  for (int64_t row_tiles = 1; row_tiles <= 40; ++row_tiles) {
    for (int64_t col_tiles = 1; col_tiles <= 12; ++col_tiles) {
      std::vector<int> seen(row_tiles * col_tiles, 0);
      for (int64_t block = 0; block < row_tiles * col_tiles; ++block) {
        const BlockTile t = block_tile(block, row_tiles, col_tiles);
        if (t.row_tile < 0 || t.row_tile >= row_tiles || t.col_tile < 0 || t.col_tile >= col_tiles ||
            seen[t.row_tile * col_tiles + t.col_tile]++ != 0) {
          std::printf("block order %lldx%lld: block %lld -> (%lld, %lld)\n", (long long)row_tiles,
                      (long long)col_tiles, (long long)block, (long long)t.row_tile, (long long)t.col_tile);
          std::exit(1);
        }
      }
    }
  }
}

// The SMs of the emulated GPU: one, so that its block takes every tile of the shapes (at
// most 2) and its ring's uses run on across them.
constexpr int64_t kEmulatedSms = 1;

// Exits 1 unless the stage of a use and the parity its waits take are what the ring needs:
// uses kStages apart share a stage, with alternating parities.
void check_ring_slots() {
  for (int64_t use = 0; use < 5 * kStages; ++use) {
    const RingSlot at = ring_slot(use), next = ring_slot(use + kStages);
    if (at.stage != next.stage || at.parity == next.parity || (use < kStages && (at.stage != use || at.parity != 0))) {
      std::printf("ring slot of use %lld: stage %d, parity %u\n", (long long)use, at.stage, at.parity);
      std::exit(1);
    }
  }
}

// One output tile of a block, its K tiles in ring uses first_use ..; d is the consumers'
// accumulators.
using Accumulators = int64_t[kConsumers][kWarpgroupRows][kTileCols];
void emulate_tile(int64_t m, int64_t n, int64_t k, const Matrix& a, const Matrix& b, tile_check::Output& out,
                  const BlockTile& tile, int64_t k_tiles, std::vector<int8_t>& shared, uint32_t ring,
                  int64_t first_use, Accumulators& d) {
  const int64_t row0 = tile.row_tile * kTileRows, col0 = tile.col_tile * kTileCols;
  std::memset(d, 0, sizeof(d));
  for (int64_t t = 0; t < k_tiles; ++t) {
    const uint32_t slot = ring + static_cast<uint32_t>(ring_slot(first_use + t).stage) * kStageBytes;
    tma_box(a, m, k, row0, t * kTileK, kTileRows, shared.data() + slot);
    tma_box(b, n, k, col0, t * kTileK, kTileCols, shared.data() + slot + kATileBytes);
    for (int consumer = 0; consumer < kConsumers; ++consumer) {
      for (int step = 0; step < kTileK / kWgmmaK; ++step) {
        const Descriptor da = decode(swizzled_descriptor(slot + a_operand_offset(consumer, step)));
        const Descriptor db = decode(swizzled_descriptor(slot + b_operand_offset(step)));
        check_descriptor(da), check_descriptor(db);
        for (int row = 0; row < kWarpgroupRows; ++row) {
          for (int col = 0; col < kTileCols; ++col) {
            int64_t sum = 0;
            for (int kk = 0; kk < kWgmmaK; ++kk) {
              sum += int64_t{operand(shared, da, row, kk)} * operand(shared, db, col, kk);
            }
            d[consumer][row][col] += sum;
          }
        }
      }
    }
  }
  for (int consumer = 0; consumer < kConsumers; ++consumer) {
    for (int warp = 0; warp < 4; ++warp) {
      for (int l = 0; l < 32; ++l) {
        // the kernel's epilogue: accumulators v and v + 1 (v even) stored at (row, col), (row, col + 1)
        for (int v = 0; v < kAccumulators; v += 2) {
          const TilePosition at = wgmma_accumulator_position(consumer, warp, l, v);
          for (int x = 0; x < 2; ++x) {
            const int u = v + x;
            const int64_t value_u = d[consumer][16 * warp + l / 4 + u / 2 % 2 * 8][8 * (u / 4) + 2 * (l % 4) + u % 2];
            const int64_t row = row0 + at.row, col = col0 + at.col + x;
            if (row < m && col < n) out.put(row * n + col, value_u);
          }
        }
      }
    }
  }
}

// One launch over [m, k] x [n, k]; the dynamic shared memory starts at an unaligned address,
// as it may on the GPU, and the ring is aligned the way the kernel aligns it.
void emulate(int64_t m, int64_t n, int64_t k, const Matrix& a, const Matrix& b, tile_check::Output& out) {
  const uint32_t dynamic_base = 0x50, ring = (dynamic_base + kAtomBytes - 1) / kAtomBytes * kAtomBytes;
  std::vector<int8_t> shared(dynamic_base + kSharedBytes);
  const int64_t row_tiles = (m + kTileRows - 1) / kTileRows, col_tiles = (n + kTileCols - 1) / kTileCols;
  const int64_t k_tiles = (k + kTileK - 1) / kTileK, tiles = row_tiles * col_tiles;
  const int64_t blocks = persistent_blocks(tiles, kEmulatedSms);
  static Accumulators d;
  for (int64_t block = 0; block < blocks; ++block) {
    int64_t first_use = 0;
    for (int64_t number = block; number < tiles; number += blocks, first_use += k_tiles) {
      emulate_tile(m, n, k, a, b, out, block_tile(number, row_tiles, col_tiles), k_tiles, shared, ring, first_use, d);
    }
  }
}

}  // namespace

int main() {
  check_block_order();
  check_ring_slots();
  return tile_check::run(emulate);
}
