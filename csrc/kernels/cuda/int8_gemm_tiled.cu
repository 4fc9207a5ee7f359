// The int8 GEMM for products with many rows: 128x128 output tiles per block of 8 warps (each
// 64 rows x 32 columns of m16n8k32 tensor-core products), K staged 64 bytes at a time
// through a 3-stage cp.async ring so the next tiles' loads overlap this tile's products, one
// barrier per stage, fragments read with ldmatrix from XOR-swizzled rows. Needs k % 16 == 0
// and 16-byte aligned a and b: each 16-byte piece of a row is then wholly inside the matrix
// or wholly past it, and the pieces past it are zero-filled by cp.async, adding nothing.
#include <cstdint>

#include "common.cuh"
#include "int8_mma.cuh"
#include "int8_pipeline.cuh"

namespace effgen::cuda {
namespace {

constexpr int kWarps = 8;  // 2 x 4 warps over the 128 x 128 tile
constexpr int kWarpRows = 64, kWarpCols = 32;
constexpr int kMTiles = kWarpRows / 16, kNTiles = kWarpCols / 8;  // m16 and n8 tiles per warp
static_assert(kWarps * 32 == kPipelineThreads);

// Byte offset of 16-byte piece `piece` of staged row `row`. Rows are 64 bytes, so rows r and
// r + 2 would share banks; piece p of row r sits at slot p ^ (r / 2 % 4) instead, and the 8
// rows an ldmatrix phase reads (one piece each, 8 consecutive rows from a multiple of 8)
// fall on 8 different groups of 4 banks.
__host__ __device__ __forceinline__ int swizzled(int row, int piece) {
  return row * kBlockK + ((piece ^ (row >> 1 & 3)) << 4);
}

// The stage offsets a lane hands to ldmatrix in K step `step` (32 bytes) for warp `warp`'s
// m16 tile i of a, and n8 tiles j, j + 1 of b. Matrices of a: (rows 0-7, bytes 0-15),
// (8-15, 0-15), (0-7, 16-31), (8-15, 16-31) = fragment words a0..a3; of b: (columns 0-7,
// bytes 0-15), (0-7, 16-31), (8-15, 0-15), (8-15, 16-31) = words b0, b1 of the two n8 tiles.
__host__ __device__ __forceinline__ int a_fragment_offset(int warp, int lane, int i, int step) {
  return swizzled(warp / 4 * kWarpRows + 16 * i + lane % 8 + lane / 8 % 2 * 8, 2 * step + lane / 16);
}
__host__ __device__ __forceinline__ int b_fragment_offset(int warp, int lane, int j, int step) {
  return swizzled(warp % 4 * kWarpCols + 8 * j + lane % 8 + lane / 16 * 8, 2 * step + lane / 8 % 2);
}

// Where accumulator e of tile (i, j) of warp `warp`, lane `lane` belongs in the block: the
// m16n8 result fragment (rows lane / 4 and + 8, columns 2 (lane % 4) and + 1).
__host__ __device__ __forceinline__ TilePosition accumulator_position(int warp, int lane, int i, int j, int e) {
  return {warp / 4 * kWarpRows + 16 * i + lane / 4 + e / 2 * 8, warp % 4 * kWarpCols + 8 * j + 2 * (lane % 4) + e % 2};
}

// Four 8x8 matrices of 16-bit words (8 rows x 16 bytes): lanes 8q..8q+7 give the row
// addresses of matrix q, and lane l receives bytes 4 (l % 4).. of row l / 4 of each.
__device__ __forceinline__ void load_matrices(uint32_t (&r)[4], uint32_t address) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
}

template <typename Out>
__global__ void __launch_bounds__(kPipelineThreads) int8_gemm_tiled_kernel(Int8GemmArgs p) {
  __shared__ __align__(128) Stage stages[kStages];
  const int64_t row0 = int64_t(blockIdx.x) * kBlockRows, col0 = int64_t(blockIdx.y) * kBlockRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  int32_t acc[kMTiles][kNTiles][4] = {};
  const auto offset = [](int row, int piece) { return swizzled(row, piece); };
  pipelined_k_loop(p, row0, col0, stages, offset, [&](const Stage& slot) {
#pragma unroll
    for (int step = 0; step < kBlockK / 32; ++step) {
      uint32_t a[kMTiles][4], b[kNTiles][2];
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
        load_matrices(a[i], shared_address(slot.a + a_fragment_offset(warp, lane, i, step)));
      }
#pragma unroll
      for (int j = 0; j < kNTiles; j += 2) {
        uint32_t r[4];
        load_matrices(r, shared_address(slot.b + b_fragment_offset(warp, lane, j, step)));
        b[j][0] = r[0], b[j][1] = r[1], b[j + 1][0] = r[2], b[j + 1][1] = r[3];
      }
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
        for (int j = 0; j < kNTiles; ++j) mma_s8(acc[i][j], a[i], b[j][0], b[j][1]);
      }
    }
  });
#pragma unroll
  for (int i = 0; i < kMTiles; ++i) {
#pragma unroll
    for (int j = 0; j < kNTiles; ++j) {
#pragma unroll
      for (int e = 0; e < 4; e += 2) {  // accumulators e and e + 1: adjacent columns of a row
        const TilePosition at = accumulator_position(warp, lane, i, j, e);
        store_scaled_pair<Out>(p, row0 + at.row, col0 + at.col, row_scale_of(p, row0 + at.row), acc[i][j][e],
                               acc[i][j][e + 1]);
      }
    }
  }
}

}  // namespace

cudaError_t int8_gemm_tiled(const Int8GemmArgs& args, cudaStream_t stream) {
  // rows on x (up to 2^31 - 1 tiles), output columns on y (up to 65535 tiles); consecutive
  // blocks share a b tile in L2
  const dim3 grid(static_cast<unsigned>((args.m + kBlockRows - 1) / kBlockRows),
                  static_cast<unsigned>((args.n + kBlockRows - 1) / kBlockRows));
  return with_dtype(args.out_dtype, [&](auto zero) {
    int8_gemm_tiled_kernel<decltype(zero)><<<grid, kPipelineThreads, 0, stream>>>(args);
  });
}

}  // namespace effgen::cuda
