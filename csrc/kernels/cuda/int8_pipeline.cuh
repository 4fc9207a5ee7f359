// The K loop of the 128x128-tile mma.sync int8 GEMM (int8_gemm_tiled.cu): K in 64-byte
// stages through a 3-stage cp.async ring, one barrier per stage; the kernel places a staged
// row's 16-byte pieces where its fragment loads want them. Internal linkage, like common.cuh.
#pragma once
#include <cstdint>

#include "int8_gemm.cuh"
#include "int8_mma.cuh"

namespace effgen::cuda {
namespace {

constexpr int kBlockRows = 128;        // rows of a and of b (output columns) per block
constexpr int kBlockK = 64;            // bytes of K per stage
constexpr int kPieces = kBlockK / 16;  // 16-byte pieces per staged row
constexpr int kStages = 3;             // 3 x 16 KB: the static shared-memory limit
constexpr int kPipelineThreads = 256;

struct Stage {
  int8_t a[kBlockRows * kBlockK];
  int8_t b[kBlockRows * kBlockK];
};

// 16 bytes global -> shared without passing through L1; bytes = 0 writes 16 zeros, reads nothing.
__device__ __forceinline__ void copy_async_16(uint32_t dst, const void* src, int bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(bytes));
}
__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;\n" ::); }
// Waits until at most PENDING of this thread's committed copy groups are still in flight.
template <int PENDING>
__device__ __forceinline__ void wait_copies() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(PENDING));
}

// Starts the copies of rows [row0, row0 + 128) x bytes [k0, k0 + 64) of a [rows, k] matrix,
// piece `piece` of staged row r to tile + offset(r, piece); pieces past the matrix are zeros.
template <typename Offset>
__device__ __forceinline__ void stage_rows(const int8_t* src, int64_t rows, int64_t k, int64_t row0, int64_t k0,
                                           int8_t* tile, Offset offset) {
#pragma unroll
  for (int idx = threadIdx.x; idx < kBlockRows * kPieces; idx += kPipelineThreads) {
    const int r = idx / kPieces, piece = idx % kPieces;
    const int64_t row = row0 + r, col = k0 + 16 * piece;
    const bool inside = row < rows && col < k;
    copy_async_16(shared_address(tile + offset(r, piece)), inside ? src + row * k + col : src, inside ? 16 : 0);
  }
}

// The K loop of the block at rows row0 and output columns col0: K tile t of a and b lands
// in stages[t % kStages], then compute(stage) runs on it while later tiles load.
template <typename Offset, typename Compute>
__device__ __forceinline__ void pipelined_k_loop(const Int8GemmArgs& p, int64_t row0, int64_t col0,
                                                 Stage (&stages)[kStages], Offset offset, Compute compute) {
  const int64_t k_tiles = (p.k + kBlockK - 1) / kBlockK;
  // Copies of K tile t into its ring slot; past the end an empty group, so that the number
  // of groups committed before tile t is always t + kStages - 1.
  auto issue = [&](int64_t t) {
    if (t < k_tiles) {
      Stage& slot = stages[t % kStages];
      stage_rows(p.a, p.m, p.k, row0, t * kBlockK, slot.a, offset);
      stage_rows(p.b, p.n, p.k, col0, t * kBlockK, slot.b, offset);
    }
    commit_copies();
  };
  for (int t = 0; t < kStages - 1; ++t) issue(t);
  for (int64_t t = 0; t < k_tiles; ++t) {
    wait_copies<kStages - 2>();  // this thread's copies of tile t have landed
    __syncthreads();         // everyone's have, and everyone is done reading tile t - 1's slot
    issue(t + kStages - 1);  // into that slot
    compute(stages[t % kStages]);
  }
}

}  // namespace
}  // namespace effgen::cuda
