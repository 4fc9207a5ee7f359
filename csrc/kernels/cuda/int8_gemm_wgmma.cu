// The int8 GEMM on Hopper's warpgroup tensor cores (wgmma, sm_90a): 128x128 output tiles
// per block of two warpgroups, each 64 rows x 128 columns (wgmma m64n128k32), K staged 64
// bytes at a time through the cp.async ring of int8_pipeline.cuh, the operands read by the
// tensor cores straight from shared memory through matrix descriptors. Staged tiles are in
// the no-swizzle core-matrix layout wgmma reads: a core matrix is 8 rows x 16 bytes,
// contiguous (128 B); core matrices along K are 128 B apart (the descriptor's leading byte
// offset), groups of 8 rows 256 B apart (its stride byte offset); each 32-byte half of a
// stage's K is a 4 KB region of 16 row groups. Needs in_16_byte_pieces(args) and an sm_90
// device; a build without sm_90a has an empty kernel here and int8_gemm_wgmma_supported()
// says false.
#include <cstdint>

#include "common.cuh"
#include "int8_mma.cuh"
#include "int8_pipeline.cuh"

#if defined(__CUDA_ARCH__) && defined(__CUDA_ARCH_FEAT_SM90_ALL)
#define EFFGEN_WGMMA_DEVICE 1
#endif

namespace effgen::cuda {
namespace {

// [[maybe_unused]] below: a compile pass for another architecture builds the kernel empty
// (the helpers stay __host__ __device__ for tests/cuda_host/wgmma_tile.cu).
constexpr int kWarpgroupRows = 64;   // rows per warpgroup: warpgroup g takes rows 64 g..
constexpr int kCoreBytes = 128;      // one core matrix: 8 rows x 16 bytes
constexpr int kRowGroupBytes = 256;  // the two core matrices of 8 rows in one 32-byte K half
constexpr int kHalfBytes = kBlockRows / 8 * kRowGroupBytes;  // 4 KB: a 32-byte K half of a stage
[[maybe_unused]] constexpr int kAccumulators = 64;  // m64n128 int32 results per thread

// Byte offset of 16-byte piece `piece` (bytes 16 piece.. of the stage's K) of staged row r.
[[maybe_unused]] __host__ __device__ __forceinline__ int core_matrix_offset(int r, int piece) {
  return piece / 2 * kHalfBytes + r / 8 * kRowGroupBytes + piece % 2 * kCoreBytes + r % 8 * 16;
}

// Shared-memory matrix descriptor of the operand at shared address `address` (PTX ISA,
// "matrix descriptor format"): address >> 4 in bits 0-13, leading byte offset >> 4 (the
// distance of core matrices along K) in bits 16-29, stride byte offset >> 4 (along M or N)
// in bits 32-45, swizzle mode 0 (none) in bits 62-63.
[[maybe_unused]] __host__ __device__ __forceinline__ uint64_t encode_descriptor(uint32_t address) {
  return ((address & 0x3FFFFu) >> 4) | (uint64_t{kCoreBytes >> 4} << 16) | (uint64_t{kRowGroupBytes >> 4} << 32);
}

// Stage offsets of the operands of warpgroup `warpgroup`'s wgmma for K half `half`: its 64
// rows of a, all 128 rows of b.
[[maybe_unused]] __host__ __device__ __forceinline__ int a_operand_offset(int warpgroup, int half) {
  return half * kHalfBytes + warpgroup * (kWarpgroupRows / 8) * kRowGroupBytes;
}
[[maybe_unused]] __host__ __device__ __forceinline__ int b_operand_offset(int half) { return half * kHalfBytes; }

// Where accumulator v of warp `warp` (of 4 in its warpgroup), lane `lane` belongs in the
// block: the m64n128 result fragment (PTX ISA) puts d[v] at row 16 warp + lane / 4 +
// 8 (v / 2 % 2), column 8 (v / 4) + 2 (lane % 4) + v % 2 of the warpgroup's 64 rows.
[[maybe_unused]] __host__ __device__ __forceinline__ TilePosition wgmma_accumulator_position(int warpgroup, int warp,
                                                                                             int lane, int v) {
  return {warpgroup * kWarpgroupRows + 16 * warp + lane / 4 + v / 2 % 2 * 8, 8 * (v / 4) + 2 * (lane % 4) + v % 2};
}

#ifdef EFFGEN_WGMMA_DEVICE
// d += a (64 x 32, K-major) * b (32 x 128, K-major), int8 in, int32 exact; d[v] is the
// result at wgmma_accumulator_position.
__device__ __forceinline__ void wgmma_s8(int32_t (&d)[kAccumulators], uint64_t a, uint64_t b) {
  asm volatile(
      "wgmma.mma_async.sync.aligned.m64n128k32.s32.s8.s8 {"
      "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15, "
      "%16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31, "
      "%32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47, "
      "%48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63},"
      " %64, %65, 1;\n"
      : "+r"(d[0]), "+r"(d[1]), "+r"(d[2]), "+r"(d[3]), "+r"(d[4]), "+r"(d[5]), "+r"(d[6]), "+r"(d[7]),
        "+r"(d[8]), "+r"(d[9]), "+r"(d[10]), "+r"(d[11]), "+r"(d[12]), "+r"(d[13]), "+r"(d[14]), "+r"(d[15]),
        "+r"(d[16]), "+r"(d[17]), "+r"(d[18]), "+r"(d[19]), "+r"(d[20]), "+r"(d[21]), "+r"(d[22]), "+r"(d[23]),
        "+r"(d[24]), "+r"(d[25]), "+r"(d[26]), "+r"(d[27]), "+r"(d[28]), "+r"(d[29]), "+r"(d[30]), "+r"(d[31]),
        "+r"(d[32]), "+r"(d[33]), "+r"(d[34]), "+r"(d[35]), "+r"(d[36]), "+r"(d[37]), "+r"(d[38]), "+r"(d[39]),
        "+r"(d[40]), "+r"(d[41]), "+r"(d[42]), "+r"(d[43]), "+r"(d[44]), "+r"(d[45]), "+r"(d[46]), "+r"(d[47]),
        "+r"(d[48]), "+r"(d[49]), "+r"(d[50]), "+r"(d[51]), "+r"(d[52]), "+r"(d[53]), "+r"(d[54]), "+r"(d[55]),
        "+r"(d[56]), "+r"(d[57]), "+r"(d[58]), "+r"(d[59]), "+r"(d[60]), "+r"(d[61]), "+r"(d[62]), "+r"(d[63])
      : "l"(a), "l"(b));
}
#endif

template <typename Out>
__global__ void __launch_bounds__(kPipelineThreads) int8_gemm_wgmma_kernel(Int8GemmArgs p) {
#ifdef EFFGEN_WGMMA_DEVICE
  __shared__ __align__(128) Stage stages[kStages];
  const int64_t row0 = int64_t(blockIdx.x) * kBlockRows, col0 = int64_t(blockIdx.y) * kBlockRows;
  const int warpgroup = threadIdx.x / 128, warp = threadIdx.x / 32 % 4, lane = threadIdx.x % 32;
  int32_t acc[kAccumulators] = {};
  const auto offset = [](int row, int piece) { return core_matrix_offset(row, piece); };
  pipelined_k_loop<true>(p, row0, col0, stages, offset, [&](const Stage& slot) {
    asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory");  // acc was last written by plain instructions
#pragma unroll
    for (int half = 0; half < kBlockK / 32; ++half) {
      wgmma_s8(acc, encode_descriptor(shared_address(slot.a + a_operand_offset(warpgroup, half))),
               encode_descriptor(shared_address(slot.b + b_operand_offset(half))));
    }
    asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory");
    asm volatile("wgmma.wait_group.sync.aligned 0;\n" ::: "memory");  // before the next barrier frees the slot
  });
#pragma unroll
  for (int v = 0; v < kAccumulators; ++v) {
    const TilePosition at = wgmma_accumulator_position(warpgroup, warp, lane, v);
    store_scaled<Out>(p, row0 + at.row, col0 + at.col, acc[v]);
  }
#endif
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

cudaError_t int8_gemm_wgmma(const Int8GemmArgs& args, cudaStream_t stream) {
  const dim3 grid(static_cast<unsigned>((args.m + kBlockRows - 1) / kBlockRows),
                  static_cast<unsigned>((args.n + kBlockRows - 1) / kBlockRows));
  return with_dtype(args.out_dtype, [&](auto zero) {
    int8_gemm_wgmma_kernel<decltype(zero)><<<grid, kPipelineThreads, 0, stream>>>(args);
  });
}

}  // namespace effgen::cuda
