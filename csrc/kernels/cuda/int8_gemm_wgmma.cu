// The int8 GEMM on Hopper's warpgroup tensor cores (sm_90a): 128x256 output tiles, computed
// by persistent blocks of three warpgroups, one block per SM, each taking tiles blockIdx.x,
// blockIdx.x + gridDim.x, ... Warpgroup 0 is the producer: one of its threads has the Tensor
// Memory Accelerator (TMA) copy 128-byte-deep K slices of a (128 rows) and b (256 rows) into
// a 4-stage ring of shared memory, each stage's arrival counted in bytes on a "full" mbarrier.
// Warpgroups 1 and 2 are the consumers: each runs wgmma m64n256k32 on its 64 rows of a and all
// 256 rows of b, straight from shared memory through matrix descriptors, keeps one stage's
// products in flight while it waits for the next, and frees a stage on its "empty" mbarrier
// once the products reading it have finished. The epilogue (int8_mma.cuh's
// store_scaled_pair) runs from the registers. The ring runs on across a block's tiles, so
// while the consumers store one tile the producer already loads the next one's first stages.
//
// Why this shape (session 8's profile of the cp.async 128x128 kernel this replaces: L2 74%
// busy, 25% occupancy, the tensor cores idle across each stage's barrier and wait): a
// 128x256 tile reads 25% fewer operand bytes from L2 per product, TMA moves them without
// per-thread addressing or register staging, and the consumers never wait on a block
// barrier. Session 44 (H200, the first run): right first time, 1.1-1.4x bf16 F.linear and
// 1.15-1.40x cuBLAS's _int_mm with our epilogue from 128 tiles up; auto takes it where its
// tiles fill more than half the SMs (int8_gemm_wgmma_pays), EFFGEN_CUDA_INT8_GEMM=wgmma
// everywhere it can.
//
// Layout: TMA writes a box of R rows x 128 bytes with 128-byte swizzle, row r at r * 128 and
// its 16-byte piece j at piece j ^ (r % 8); wgmma reads the same layout from a descriptor
// with swizzle mode 128B and 1024 bytes between 8-row atoms, the k32 step s of a stage at
// start + 32 s (the swizzle applies to the address bits, so stage tiles are 1024-aligned).
// Needs k % 16 == 0 (TMA's row stride), 16-byte aligned a and b, m, n, k < 2^31 (TMA
// coordinates are 32-bit) and k > 0 (a map has no empty dimension): tma_gemm_takes(args). A
// build without sm_90a has an empty kernel here and int8_gemm_wgmma_supported() says false.
#include <cuda.h>          // CUtensorMap
#include <cudaTypedefs.h>  // PFN_cuTensorMapEncodeTiled_v12000

#include <cstdint>

#include "common.cuh"
#include "int8_mma.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define EFFGEN_WGMMA_DEVICE 1
#endif

namespace effgen::cuda {
namespace {

// [[maybe_unused]] below: a compile pass for another architecture builds the kernel empty
// (the helpers stay __host__ __device__ for tests/cuda_host/wgmma_tile.cu).
constexpr int kTileRows = 128;        // rows of a per block: two consumer warpgroups of 64
constexpr int kTileCols = 256;        // rows of b (output columns) per block
constexpr int kTileK = 128;           // bytes of K per stage: one 128-byte swizzle row
constexpr int kWgmmaK = 32;           // bytes of K per wgmma
constexpr int kStages = 4;            // 4 x 48 KB of the 227 KB an SM's block may use
constexpr int kWarpgroupRows = 64;    // rows per consumer warpgroup
constexpr int kConsumers = kTileRows / kWarpgroupRows;
constexpr int kThreads = 128 * (1 + kConsumers);
constexpr int kATileBytes = kTileRows * kTileK;
constexpr int kBTileBytes = kTileCols * kTileK;
constexpr int kStageBytes = kATileBytes + kBTileBytes;
constexpr int kAtomBytes = 1024;  // a swizzle atom: 8 rows x 128 bytes
// Dynamic shared memory: the ring, plus an atom of slack to align it to 1024 bytes.
[[maybe_unused]] constexpr size_t kSharedBytes = size_t{kStages} * kStageBytes + kAtomBytes;
[[maybe_unused]] constexpr int kAccumulators = kTileCols / 2;  // m64n256 int32 results per thread
constexpr int64_t kMaxTmaCoordinate = (int64_t{1} << 31) - 1;

// Tiles run in groups of kGroupTiles row tiles: inside a group the row tile changes fastest,
// so the tiles in work at one time (consecutive numbers) share a few column tiles of b and a
// band of a, and both stay in L2 while they are being read.
constexpr int64_t kGroupTiles = 16;
struct BlockTile {
  int64_t row_tile, col_tile;
};
[[maybe_unused]] __host__ __device__ __forceinline__ BlockTile block_tile(int64_t tile, int64_t row_tiles,
                                                                         int64_t col_tiles) {
  const int64_t per_group = kGroupTiles * col_tiles, first = tile / per_group * kGroupTiles;
  const int64_t rows_here = row_tiles - first < kGroupTiles ? row_tiles - first : kGroupTiles;
  return {first + tile % per_group % rows_here, tile % per_group / rows_here};
}

// Blocks of a launch: one per SM (a block fills one), fewer for fewer tiles.
[[maybe_unused]] __host__ __device__ __forceinline__ int64_t persistent_blocks(int64_t tiles, int64_t sms) {
  return tiles < sms ? tiles : sms;
}

// Where K tile `use` of a block's run (counted over all its output tiles) lies in the ring:
// stage use % kStages, whose full and empty barriers each complete one phase per use, so the
// use waits for parity (use / kStages) & 1 of them.
struct RingSlot {
  int stage;
  uint32_t parity;
};
[[maybe_unused]] __host__ __device__ __forceinline__ RingSlot ring_slot(int64_t use) {
  return {static_cast<int>(use % kStages), static_cast<uint32_t>(use / kStages) & 1};
}

// Shared-memory matrix descriptor (PTX ISA, "matrix descriptor format") of a K-major operand
// at `address` in the layout above: address >> 4 in bits 0-13, leading byte offset in bits
// 16-29 (not used by a swizzled K-major operand whose k32 fits in the 128-byte row; 1 by
// convention), stride byte offset >> 4 (8-row atoms, 1024 B) in bits 32-45, base offset 0
// in bits 49-51 (atoms 1024-aligned) and swizzle mode 1 (128B) in bits 62-63.
[[maybe_unused]] __host__ __device__ __forceinline__ uint64_t swizzled_descriptor(uint32_t address) {
  return ((address & 0x3FFFFu) >> 4) | (uint64_t{1} << 16) | (uint64_t{kAtomBytes >> 4} << 32) | (uint64_t{1} << 62);
}

// Offsets in a stage of the operands of consumer `consumer`'s wgmma for k32 step `step`: its
// 64 rows of a; all 256 rows of b, which follow a.
[[maybe_unused]] __host__ __device__ __forceinline__ int a_operand_offset(int consumer, int step) {
  return consumer * kWarpgroupRows * kTileK + kWgmmaK * step;
}
[[maybe_unused]] __host__ __device__ __forceinline__ int b_operand_offset(int step) {
  return kATileBytes + kWgmmaK * step;
}

// Where accumulator v of warp `warp` (of 4 in its warpgroup), lane `lane` of consumer
// `consumer` belongs in the block: the m64nN result fragment (PTX ISA) puts d[v] at row
// 16 warp + lane / 4 + 8 (v / 2 % 2), column 8 (v / 4) + 2 (lane % 4) + v % 2 of the
// consumer's 64 rows.
[[maybe_unused]] __host__ __device__ __forceinline__ TilePosition wgmma_accumulator_position(int consumer, int warp,
                                                                                             int lane, int v) {
  return {consumer * kWarpgroupRows + 16 * warp + lane / 4 + v / 2 % 2 * 8, 8 * (v / 4) + 2 * (lane % 4) + v % 2};
}

#ifdef EFFGEN_WGMMA_DEVICE
// --- mbarriers (PTX ISA, "mbarrier"), at shared addresses --------------------------------
__device__ __forceinline__ void barrier_init(uint32_t bar, uint32_t arrivals) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(arrivals) : "memory");
}
__device__ __forceinline__ void barrier_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.shared::cta.b64 state, [%0];\n}\n" ::"r"(bar) : "memory");
}
// One arrival that also expects `bytes` of asynchronous copies to complete on the barrier.
__device__ __forceinline__ void barrier_arrive_expect_bytes(uint32_t bar, uint32_t bytes) {
  asm volatile("{\n.reg .b64 state;\nmbarrier.arrive.expect_tx.shared::cta.b64 state, [%0], %1;\n}\n" ::"r"(bar),
               "r"(bytes)
               : "memory");
}
// Until the barrier's phase of parity `parity` has completed. The retry loop is in the PTX:
// written as a C++ loop around try_wait, ptxas serialized the consumers' wgmmas (warning
// C7514, a wait for every wgmma instead of one stage in flight). A wait longer than
// kBarrierTimeoutNs (a product takes milliseconds) means a broken protocol: the kernel traps,
// so the launch fails with an error instead of hanging the GPU.
constexpr uint64_t kBarrierTimeoutNs = 10'000'000'000;
__device__ __forceinline__ void barrier_wait(uint32_t bar, uint32_t parity) {
  asm volatile(
      "{\n.reg .pred done, waiting;\n.reg .u64 start, now;\n"
      "mov.u64 start, %%globaltimer;\n"
      "retry:\n"
      "mbarrier.try_wait.parity.shared::cta.b64 done, [%0], %1;\n"
      "@done bra finished;\n"
      "mov.u64 now, %%globaltimer;\n"
      "sub.u64 now, now, start;\n"
      "setp.lt.u64 waiting, now, %2;\n"
      "@waiting bra retry;\n"
      "trap;\n"
      "finished:\n}\n" ::"r"(bar),
      "r"(parity), "l"(kBarrierTimeoutNs)
      : "memory");
}

// TMA: the box of `map` at (k0, row0) into shared memory at dst, counted on barrier bar.
__device__ __forceinline__ void tma_load(uint32_t dst, const CUtensorMap& map, uint32_t bar, int32_t k0,
                                         int32_t row0) {
  asm volatile(
      "cp.async.bulk.tensor.2d.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1, {%2, %3}], [%4];\n" ::"r"(
          dst),
      "l"(reinterpret_cast<uint64_t>(&map)), "r"(k0), "r"(row0), "r"(bar)
      : "memory");
}

// d += a (64 x 32, K-major) * b (32 x 256, K-major), int8 in, int32 exact; d[v] is the
// result at wgmma_accumulator_position.
#define EFFGEN_ACC8(i)                                                                                        \
  "+r"(d[i]), "+r"(d[i + 1]), "+r"(d[i + 2]), "+r"(d[i + 3]), "+r"(d[i + 4]), "+r"(d[i + 5]), "+r"(d[i + 6]), \
      "+r"(d[i + 7])
__device__ __forceinline__ void wgmma_s8(int32_t (&d)[kAccumulators], uint64_t a, uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n256k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63, "
      "%64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79, "
      "%80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95, "
      "%96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111, "
      "%112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127},"
      " %128, %129, 1;\n"
      : EFFGEN_ACC8(0), EFFGEN_ACC8(8), EFFGEN_ACC8(16), EFFGEN_ACC8(24), EFFGEN_ACC8(32), EFFGEN_ACC8(40),
        EFFGEN_ACC8(48), EFFGEN_ACC8(56), EFFGEN_ACC8(64), EFFGEN_ACC8(72), EFFGEN_ACC8(80), EFFGEN_ACC8(88),
        EFFGEN_ACC8(96), EFFGEN_ACC8(104), EFFGEN_ACC8(112), EFFGEN_ACC8(120)
      : "l"(a), "l"(b));
}
#undef EFFGEN_ACC8

template <int PENDING>
__device__ __forceinline__ void wgmma_wait() {
  asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(PENDING) : "memory");
}

// The ring's state in one block: shared addresses of the stages and of their barriers.
struct Ring {
  uint32_t stages, full, empty;
  __device__ uint32_t slot(const RingSlot& at) const { return stages + at.stage * kStageBytes; }
  __device__ uint32_t full_barrier(const RingSlot& at) const { return full + 8 * at.stage; }
  __device__ uint32_t empty_barrier(const RingSlot& at) const { return empty + 8 * at.stage; }
};

// The producer thread, for one output tile: its K tiles t into uses first_use + t of the
// ring, each once the consumers have freed that stage's previous use (kStages uses before).
__device__ __forceinline__ void produce(const CUtensorMap& a_map, const CUtensorMap& b_map, int64_t k_tiles,
                                        int32_t row0, int32_t col0, const Ring& ring, int64_t first_use) {
  for (int64_t t = 0; t < k_tiles; ++t) {
    const int64_t use = first_use + t;
    const RingSlot at = ring_slot(use);
    if (use >= kStages) barrier_wait(ring.empty_barrier(at), at.parity ^ 1);
    const uint32_t slot = ring.slot(at), bar = ring.full_barrier(at);
    // the whole box counts, rows and bytes past the matrix included (TMA writes zeros there)
    barrier_arrive_expect_bytes(bar, kStageBytes);
    const int32_t k0 = static_cast<int32_t>(t * kTileK);
    tma_load(slot, a_map, bar, k0, row0);
    tma_load(slot + kATileBytes, b_map, bar, k0, col0);
  }
}

// A consumer warpgroup's K loop for one output tile (uses first_use ..): products of use u
// issued, then those of use u - 1 waited for and its stage freed; the last use's stage is
// freed once all the tile's products are done, before the epilogue.
__device__ __forceinline__ void consume(int consumer, int64_t k_tiles, const Ring& ring, int64_t first_use,
                                        int32_t (&acc)[kAccumulators]) {
  for (int64_t t = 0; t < k_tiles; ++t) {
    const RingSlot at = ring_slot(first_use + t);
    barrier_wait(ring.full_barrier(at), at.parity);
    const uint32_t slot = ring.slot(at);
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");
#pragma unroll
    for (int step = 0; step < kTileK / kWgmmaK; ++step) {
      wgmma_s8(acc, swizzled_descriptor(slot + a_operand_offset(consumer, step)),
               swizzled_descriptor(slot + b_operand_offset(step)));
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    wgmma_wait<1>();  // this thread's products of use u - 1 are done
    if (t > 0) barrier_arrive(ring.empty_barrier(ring_slot(first_use + t - 1)));
  }
  wgmma_wait<0>();
  barrier_arrive(ring.empty_barrier(ring_slot(first_use + k_tiles - 1)));
}
#endif

template <typename Out>
__global__ void __launch_bounds__(kThreads, 1)
    int8_gemm_wgmma_kernel(const __grid_constant__ CUtensorMap a_map, const __grid_constant__ CUtensorMap b_map,
                           Int8GemmArgs p) {
#ifdef EFFGEN_WGMMA_DEVICE
  extern __shared__ uint8_t shared[];
  __shared__ __align__(8) uint64_t barriers[2 * kStages];  // full[stage], then empty[stage]
  const uint32_t full = shared_address(barriers);
  const Ring ring{(shared_address(shared) + kAtomBytes - 1) / kAtomBytes * kAtomBytes, full, full + 8 * kStages};
  if (threadIdx.x == 0) {
    for (int stage = 0; stage < kStages; ++stage) {
      barrier_init(ring.full + 8 * stage, 1);                  // the producer's expect-bytes arrival
      barrier_init(ring.empty + 8 * stage, kConsumers * 128);  // every consumer thread's
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");  // visible to TMA
  }
  __syncthreads();
  const int64_t row_tiles = (p.m + kTileRows - 1) / kTileRows, col_tiles = (p.n + kTileCols - 1) / kTileCols;
  const int64_t k_tiles = (p.k + kTileK - 1) / kTileK;
  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0 && threadIdx.x != 0) return;
  const int consumer = warpgroup - 1, warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32;
  int64_t first_use = 0;
  for (int64_t number = blockIdx.x; number < row_tiles * col_tiles; number += gridDim.x, first_use += k_tiles) {
    const BlockTile tile = block_tile(number, row_tiles, col_tiles);
    const int64_t row0 = tile.row_tile * kTileRows, col0 = tile.col_tile * kTileCols;
    if (warpgroup == 0) {
      produce(a_map, b_map, k_tiles, static_cast<int32_t>(row0), static_cast<int32_t>(col0), ring, first_use);
      continue;
    }
    int32_t acc[kAccumulators] = {};
    consume(consumer, k_tiles, ring, first_use, acc);
    // The thread's outputs lie in two rows (v / 2 % 2), accumulators v and v + 1 (v even) in
    // adjacent columns: the row scales are loaded once and outputs stored in pairs.
    const int64_t row = row0 + wgmma_accumulator_position(consumer, warp, lane, 0).row;
    const float row_scales[2] = {row_scale_of(p, row), row_scale_of(p, row + 8)};
#pragma unroll
    for (int v = 0; v < kAccumulators; v += 2) {
      const TilePosition at = wgmma_accumulator_position(consumer, warp, lane, v);
      store_scaled_pair<Out>(p, row0 + at.row, col0 + at.col, row_scales[v / 2 % 2], acc[v], acc[v + 1]);
    }
  }
#endif
}

// cuTensorMapEncodeTiled from the driver, through the runtime (no -lcuda); null if missing.
PFN_cuTensorMapEncodeTiled_v12000 encode_tiled() {
  static const PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* entry = nullptr;
    cudaDriverEntryPointQueryResult found{};
    const cudaError_t status =
        cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &entry, 12000, cudaEnableDefault, &found);
    return status == cudaSuccess && found == cudaDriverEntryPointSuccess
               ? reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(entry)
               : nullptr;
  }();
  return fn;
}

// The TMA map of int8 [rows, k] (row-major) in boxes of box_rows x kTileK bytes, 128-byte
// swizzle, zeros outside the matrix.
cudaError_t tile_map(CUtensorMap* map, const int8_t* base, int64_t rows, int64_t k, uint32_t box_rows) {
  const PFN_cuTensorMapEncodeTiled_v12000 encode = encode_tiled();
  if (encode == nullptr) return cudaErrorNotSupported;
  const cuuint64_t dims[2] = {static_cast<cuuint64_t>(k), static_cast<cuuint64_t>(rows)};
  const cuuint64_t row_stride[1] = {static_cast<cuuint64_t>(k)};
  const cuuint32_t box[2] = {kTileK, box_rows}, element_strides[2] = {1, 1};
  const CUresult result =
      encode(map, CU_TENSOR_MAP_DATA_TYPE_UINT8, 2, const_cast<int8_t*>(base), dims, row_stride, box, element_strides,
             CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B, CU_TENSOR_MAP_L2_PROMOTION_L2_256B,
             CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  return result == CUDA_SUCCESS ? cudaSuccess : cudaErrorInvalidValue;
}

}  // namespace

bool int8_gemm_wgmma_supported() {
#ifdef EFFGEN_SM90A
  int device = 0, major = 0, minor = 0;  // asked each time: devices of one process may differ
  cudaGetDevice(&device);
  cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device);
  cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device);
  return major == 9 && minor == 0;  // sm_90a code runs on compute capability 9.0 only
#else
  return false;
#endif
}

namespace {

int64_t tile_count(const Int8GemmArgs& args) {
  return (args.m + kTileRows - 1) / kTileRows * ((args.n + kTileCols - 1) / kTileCols);
}

}  // namespace

bool tma_gemm_takes(const Int8GemmArgs& args) {
  return in_16_byte_pieces(args) && args.k > 0 && args.m <= kMaxTmaCoordinate && args.n <= kMaxTmaCoordinate &&
         args.k <= kMaxTmaCoordinate;
}

// On an H200 (132 SMs), against cuBLAS's _int_mm plus our epilogue (the route otherwise taken):
// session 44, 1.40x faster at 512x8192->8192 (128 tiles), 1.15x at 512x4096->11008 (172),
// 1.25-1.36x at 2048 rows (256-688), 0.90x at 512x11008->4096 (64 tiles: with one block per
// SM, half the SMs idle); session 45 (benchmarks/wgmma_tile_study.py, k = 4096), 0.61x at 32
// tiles, 0.96x at 64, 1.22x at 80, 1.18x at 96. So it pays once its tiles fill more than half
// of the SMs.
bool int8_gemm_wgmma_pays(const Int8GemmArgs& args) {
  // Rows first: a decode call (the GEMV's) asks the device nothing.
  if (args.m <= kGemvMaxRows || !int8_gemm_wgmma_supported() || !tma_gemm_takes(args)) return false;
  return 2 * tile_count(args) > multiprocessors();
}

cudaError_t int8_gemm_wgmma(const Int8GemmArgs& args, cudaStream_t stream) {
  CUtensorMap a_map, b_map;
  if (const cudaError_t status = tile_map(&a_map, args.a, args.m, args.k, kTileRows); status != cudaSuccess) {
    return status;
  }
  if (const cudaError_t status = tile_map(&b_map, args.b, args.n, args.k, kTileCols); status != cudaSuccess) {
    return status;
  }
  const int64_t blocks = persistent_blocks(tile_count(args), multiprocessors());
  return with_dtype(args.out_dtype, [&](auto zero) {
    const auto kernel = int8_gemm_wgmma_kernel<decltype(zero)>;
    if (cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes) != cudaSuccess) return;
    kernel<<<static_cast<unsigned>(blocks), kThreads, kSharedBytes, stream>>>(a_map, b_map, args);
  });
}

}  // namespace effgen::cuda
