// CUDA kernels of the quant family. Memory-bound: each thread moves 16 elements a step, in
// whole-warp coalesced pieces (the kernels with one scale per row or tensor) or as 16
// consecutive elements (those walking a per-element scale index), with vector loads/stores
// when the base pointers allow it. The arithmetic is the fp32 sequence of
// effgen_kernels/reference.py with explicit round-to-nearest intrinsics (the build also
// passes --fmad=false), so results match the CPU kernels.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#include "common.cuh"
#include "convert.cuh"
#include "quant.cuh"

namespace effgen::cuda {
namespace {

constexpr int kItems = 16;       // elements per thread per step
constexpr int kThreads = 256;    // threads per block of the element-wise kernels
constexpr uint32_t kMaxFiniteBits = 0x7F7FFFFFu;

// kItems * sizeof(T) is a multiple of 16 for every T here, so a 16-byte aligned base keeps
// every thread's chunk aligned.
template <typename T>
__device__ __forceinline__ void load_items(const T* p, int count, bool vec_ok, T (&out)[kItems]) {
  if (vec_ok && count == kItems) {
#pragma unroll
    for (int j = 0; j < kItems * int(sizeof(T)) / 16; ++j) {
      reinterpret_cast<uint4*>(out)[j] = reinterpret_cast<const uint4*>(p)[j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      if (j < count) out[j] = p[j];
    }
  }
}

template <typename T>
__device__ __forceinline__ void store_items(T* p, int count, bool vec_ok, const T (&in)[kItems]) {
  if (vec_ok && count == kItems) {
#pragma unroll
    for (int j = 0; j < kItems * int(sizeof(T)) / 16; ++j) {
      reinterpret_cast<uint4*>(p)[j] = reinterpret_cast<const uint4*>(in)[j];
    }
  } else {
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      if (j < count) p[j] = in[j];
    }
  }
}

__host__ __device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Elements of the chunk starting at `base` that exist (kItems except at the very end).
__device__ __forceinline__ int chunk_count(int64_t n, int64_t base) { return static_cast<int>(min64(kItems, n - base)); }

// Lane layout of the kernels without a per-element scale index (one scale for the tensor,
// or for each run, below): a warp takes kWarpItems consecutive elements, lane L the
// kPieceItems-element pieces L, L + 32, ... of them, so that every load and store
// instruction of a warp covers consecutive memory whatever the element size. (16
// consecutive elements a thread made each 16-byte access of fp32 touch 32 half-used
// sectors: on the H200, 28-32 sectors a request, L2 80% busy, DRAM at 40-57%.)
constexpr int kPieceItems = 4, kWarpItems = 32 * kItems;

// Where piece q of a lane starts in its warp's chunk (its items q * kPieceItems ..).
__host__ __device__ __forceinline__ int lane_piece_offset(int lane, int q) { return (q * 32 + lane) * kPieceItems; }

// kPieceItems elements of T as one load / store.
template <typename T>
using Piece = std::conditional_t<sizeof(T) == 4, uint4, std::conditional_t<sizeof(T) == 2, uint2, uint32_t>>;

// Whether p is aligned for piece loads / stores.
template <typename T>
__host__ __device__ __forceinline__ bool piece_aligned(const T* p) {
  return aligned(p, sizeof(Piece<T>));
}

// The lane's kItems elements of the warp chunk at p, of which `available` exist (zeros past
// them). `vec_ok`: piece_aligned(p); whole pieces then move as one access each.
template <typename T>
__device__ __forceinline__ void load_lane(const T* p, int64_t available, int lane, bool vec_ok, T (&out)[kItems]) {
#pragma unroll
  for (int q = 0; q < kItems / kPieceItems; ++q) {
    const int at = lane_piece_offset(lane, q);
    if (vec_ok && at + kPieceItems <= available) {
      reinterpret_cast<Piece<T>*>(out)[q] = reinterpret_cast<const Piece<T>*>(p + at)[0];
    } else {
#pragma unroll
      for (int t = 0; t < kPieceItems; ++t) out[q * kPieceItems + t] = at + t < available ? p[at + t] : T{};
    }
  }
}

template <typename T>
__device__ __forceinline__ void store_lane(T* p, int64_t available, int lane, bool vec_ok, const T (&in)[kItems]) {
#pragma unroll
  for (int q = 0; q < kItems / kPieceItems; ++q) {
    const int at = lane_piece_offset(lane, q);
    if (vec_ok && at + kPieceItems <= available) {
      reinterpret_cast<Piece<T>*>(p + at)[0] = reinterpret_cast<const Piece<T>*>(in)[q];
    } else {
#pragma unroll
      for (int t = 0; t < kPieceItems; ++t) {
        if (at + t < available) p[at + t] = in[q * kPieceItems + t];
      }
    }
  }
}

// Calls chunk(start) for each kWarpItems chunk of [0, n) this warp takes, grid-stride.
template <typename Chunk>
__device__ __forceinline__ void for_warp_chunks(int64_t n, Chunk&& chunk) {
  const int64_t warps = int64_t(gridDim.x) * blockDim.x / 32;
  for (int64_t start = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) / 32 * kWarpItems; start < n;
       start += warps * kWarpItems) {
    chunk(start);
  }
}

// A run: consecutive elements that share a scale index, (row, group) of a grouped index
// (a row's last group may be shorter) or a channel's `inner` elements. A block per run (or
// per piece of a long run, RunGrid) in the lane layout needs neither a cursor nor a division
// per element; the kernels take that path when every run has at least kMinRunItems elements
// (else 16 consecutive elements a thread with a cursor, which short runs, e.g. channels on
// the last dimension, need).
struct Run {
  int64_t start, length, index;
};
constexpr int64_t kMinRunItems = 128;

__host__ __device__ __forceinline__ Run run_of(const ParamIndex& idx, int64_t r) {
  if (idx.grouped) {
    const int64_t row = r / idx.groups, col = r % idx.groups * idx.group;
    return {row * idx.k + col, min64(idx.group, idx.k - col), r};
  }
  return {r * idx.inner, idx.inner, r % idx.channels};
}

__host__ __device__ __forceinline__ int64_t run_count(const ParamIndex& idx, int64_t n) {
  return idx.grouped ? n / idx.k * idx.groups : n / idx.inner;
}

__host__ __device__ __forceinline__ int64_t shortest_run(const ParamIndex& idx) {
  return idx.grouped ? min64(idx.group, idx.k - (idx.groups - 1) * idx.group) : idx.inner;
}

__host__ __device__ __forceinline__ int64_t longest_run(const ParamIndex& idx) {
  return idx.grouped ? min64(idx.group, idx.k) : idx.inner;
}

// Threads of a block that takes up to `items` elements of a run: enough warps to cover them
// once, at most kThreads.
int run_threads(int64_t items) { return static_cast<int>(min64(kThreads, (items + kWarpItems - 1) / kWarpItems * 32)); }

// The blocks of the element-wise run kernels: each run cut into `segments` pieces of at most
// `segment` elements (a per-tensor scale is one run of every element, which one block would
// otherwise stream alone); block b takes piece b % segments of run b / segments.
struct RunGrid {
  ParamIndex idx;
  int64_t segment, segments;

  // Block b's piece (length <= 0: none, where a row's last group is shorter).
  __host__ __device__ Run block_run(int64_t b) const {
    const Run run = run_of(idx, b / segments);
    const int64_t skip = b % segments * segment;
    return {run.start + skip, min64(segment, run.length - skip), run.index};
  }
  __host__ __device__ int64_t blocks(int64_t n) const { return run_count(idx, n) * segments; }
};

constexpr int64_t kRunSegmentItems = 64 * kWarpItems;

__host__ __device__ __forceinline__ RunGrid run_grid(const ParamIndex& idx, int64_t segment = kRunSegmentItems) {
  return {idx, segment, (longest_run(idx) + segment - 1) / segment};
}

// Whether the element-wise kernels take the run path for idx over n elements (see Run).
bool use_runs(const ParamIndex& idx, int64_t n) {
  return n > 0 && shortest_run(idx) >= kMinRunItems && run_grid(idx).blocks(n) < (int64_t{1} << 31);
}

// Launch shape of the run kernels: blocks and threads.
struct RunLaunch {
  unsigned blocks;
  int threads;
};
RunLaunch run_launch(const RunGrid& grid, int64_t n) {
  return {static_cast<unsigned>(grid.blocks(n)), run_threads(min64(longest_run(grid.idx), grid.segment))};
}

// Calls chunk(start, available) for each kWarpItems chunk of the block's run this warp takes.
template <typename Chunk>
__device__ __forceinline__ void for_run_chunks(const Run& run, Chunk&& chunk) {
  const int64_t warps = blockDim.x / 32;
  for (int64_t offset = threadIdx.x / 32 * int64_t{kWarpItems}; offset < run.length; offset += warps * kWarpItems) {
    chunk(run.start + offset, run.length - offset);
  }
}

// The scale index (ParamIndex, quant.cuh) of consecutive elements from i on: two divisions
// at the start, then a countdown, since the index moves by one only where a channel's run
// of `inner` elements or a group (or a row's last, shorter group) ends. 64-bit divisions are some 70 instructions
// each, too many to pay per element at the HBM rate.
class ParamCursor {
 public:
  __host__ __device__ ParamCursor(const ParamIndex& idx, int64_t i) : idx_(idx) {
    if (idx.grouped) {
      col_ = i % idx.k;
      index_ = i / idx.k * idx.groups + col_ / idx.group;
      run_ = min64(idx.group - col_ % idx.group, idx.k - col_);
    } else {
      index_ = i / idx.inner % idx.channels;
      run_ = idx.inner - i % idx.inner;
    }
    left_ = run_;
  }
  __host__ __device__ int64_t index() const { return index_; }
  // To the next element. The index after a row's last group is the next row's first one,
  // and after the last channel the first: one more either way (mod channels).
  __host__ __device__ void next() {
    if (--left_ > 0) return;
    if (idx_.grouped) {
      col_ += run_;
      if (col_ == idx_.k) col_ = 0;
      ++index_;
      run_ = min64(idx_.group, idx_.k - col_);
    } else {
      index_ = index_ + 1 == idx_.channels ? 0 : index_ + 1;
      run_ = idx_.inner;
    }
    left_ = run_;
  }

 private:
  ParamIndex idx_;
  int64_t index_ = 0, col_ = 0, run_ = 1, left_ = 1;
};

// fp32 and its bits (memcpy: a register move on the device, and it runs on the host for the
// host-side checks).
__host__ __device__ __forceinline__ uint32_t float_bits(float v) {
  uint32_t bits;
  memcpy(&bits, &v, sizeof bits);
  return bits;
}
__host__ __device__ __forceinline__ float bits_float(uint32_t bits) {
  float v;
  memcpy(&v, &bits, sizeof v);
  return v;
}

__host__ __device__ __forceinline__ uint32_t abs_bits(float v) { return float_bits(v) & 0x7FFFFFFFu; }

// Each 16-bit half the larger of a's and b's (__vmaxu2, and its host equivalent).
__host__ __device__ __forceinline__ uint32_t max_halves(uint32_t a, uint32_t b) {
#ifdef __CUDA_ARCH__
  return __vmaxu2(a, b);
#else
  const uint32_t low = (a & 0xFFFFu) > (b & 0xFFFFu) ? a & 0xFFFFu : b & 0xFFFFu;
  return ((a >> 16) > (b >> 16) ? a >> 16 : b >> 16) << 16 | low;
#endif
}

// A lane's kItems elements of T kept as the 32-bit words they were loaded in: 16-bit values
// two to a register, where an array of T was unpacked one value a register (bf16 x in four
// resident chunks: 95 registers as arrays of T, 73 as words).
template <typename T>
union LaneItems {
  T values[kItems];
  uint32_t words[kItems * sizeof(T) / 4];
};

// Item j as fp32, from the words (exact, as to_f32). Host and device (tests/cuda_host/lane_items.cu).
template <typename T>
__host__ __device__ __forceinline__ float item_f32(const LaneItems<T>& items, int j) {
  const uint32_t word = items.words[j * sizeof(T) / 4];
  if constexpr (std::is_same_v<T, float>) {
    return bits_float(word);
  } else if constexpr (std::is_same_v<T, __nv_bfloat16>) {  // a bf16 is the high half of its fp32
    return bits_float(j % 2 == 0 ? word << 16 : word & 0xFFFF0000u);
  } else {
    return __half2float(__ushort_as_half(static_cast<unsigned short>(j % 2 == 0 ? word : word >> 16)));
  }
}

// The largest abs_bits(item_f32(items, j)): 16-bit words compared two magnitudes at a time
// (a 16-bit float's magnitude bits are ordered as its magnitude, NaN above Inf, as fp32's
// are), and only the largest widened.
template <typename T>
__host__ __device__ __forceinline__ uint32_t items_absmax_bits(const LaneItems<T>& items) {
  if constexpr (sizeof(T) == 4) {
    uint32_t bits = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j) {
      const uint32_t item = abs_bits(item_f32(items, j));
      bits = item > bits ? item : bits;
    }
    return bits;
  } else {
    uint32_t pairs = 0;
#pragma unroll
    for (int w = 0; w < kItems / 2; ++w) pairs = max_halves(pairs, items.words[w] & 0x7FFF7FFFu);
    LaneItems<T> largest;
    largest.words[0] = (pairs & 0xFFFFu) > (pairs >> 16) ? pairs & 0xFFFFu : pairs >> 16;
    return abs_bits(item_f32(largest, 0));
  }
}

// scale = absmax / 127; a non-finite absmax gives a NaN scale (documented propagation).
__device__ __forceinline__ float scale_from_bits(uint32_t bits) {
  return bits > kMaxFiniteBits ? __int_as_float(0x7FC00000) : __fdiv_rn(__uint_as_float(bits), 127.0f);
}

// A NaN product (NaN x, or Inf/NaN x times the 0 reciprocal of a non-finite run) gives 0:
// fmaxf would return its other operand, -127.
__device__ __forceinline__ int8_t quantize_value(float x, float inv_scale) {
  const float rounded = rintf(__fmul_rn(x, inv_scale));
  return isnan(rounded) ? 0 : static_cast<int8_t>(fminf(fmaxf(rounded, -127.0f), 127.0f));
}

int grid_for(int64_t n) {
  static const int64_t max_blocks = multiprocessors() * 8;
  const int64_t needed = (n + int64_t(kThreads) * kItems - 1) / (int64_t(kThreads) * kItems);
  return static_cast<int>(needed < 1 ? 1 : (needed < max_blocks ? needed : max_blocks));
}


// ---- run kernels: one block per run or piece of one (see Run, RunGrid), lane layout -------

// The absmax bits of the block's run (every thread returns it).
template <typename T>
__device__ __forceinline__ uint32_t run_absmax_bits(const T* x, const Run& run) {
  const bool vec_ok = piece_aligned(x + run.start);
  const int lane = threadIdx.x % 32;
  uint32_t bits = 0;
  for_run_chunks(run, [&](int64_t start, int64_t available) {
    T v[kItems];
    load_lane(x + start, available, lane, vec_ok, v);  // zeros past the run leave the absmax alone
#pragma unroll
    for (int j = 0; j < kItems; ++j) bits = max(bits, abs_bits(to_f32(v[j])));
  });
  return block_max(bits);
}

// q = quantize_value(x, inv) over the block's run.
template <typename T>
__device__ __forceinline__ void quantize_run(const T* x, const Run& run, float inv, int8_t* q) {
  const bool vec_ok = piece_aligned(x + run.start) && piece_aligned(q + run.start);
  const int lane = threadIdx.x % 32;
  for_run_chunks(run, [&](int64_t start, int64_t available) {
    T v[kItems];
    alignas(16) int8_t out[kItems];
    load_lane(x + start, available, lane, vec_ok, v);
#pragma unroll
    for (int j = 0; j < kItems; ++j) out[j] = quantize_value(to_f32(v[j]), inv);
    store_lane(q + start, available, lane, vec_ok, out);
  });
}

// The run of a block whose warps take at most CHUNKS chunks each, quantized from registers:
// all of the lane's loads are issued before the first is used and x is read once. (Session
// 10 on an H200: per-token bf16 at 50-52% of the copy bandwidth when the quantize pass re-read
// each row from L2 after the absmax pass.) Writes the run's scale.
template <int CHUNKS, typename T>
__device__ __forceinline__ void quantize_resident_run(const T* x, const Run& run, int8_t* q, float* scale) {
  const bool vec_ok = piece_aligned(x + run.start) && piece_aligned(q + run.start);
  const int lane = threadIdx.x % 32;
  const int64_t first = threadIdx.x / 32 * int64_t{kWarpItems}, stride = blockDim.x / 32 * int64_t{kWarpItems};
  LaneItems<T> v[CHUNKS];
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {  // past the run: zeros, which leave the absmax alone
    const int64_t offset = first + c * stride;
    load_lane(x + run.start + offset, run.length - offset, lane, vec_ok, v[c].values);
  }
  uint32_t bits = 0;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) bits = max(bits, items_absmax_bits(v[c]));
  const float s = scale_from_bits(block_max(bits)), inv = symmetric_inverse_scale(s);
  if (threadIdx.x == 0) scale[run.index] = s;
#pragma unroll
  for (int c = 0; c < CHUNKS; ++c) {
    const int64_t offset = first + c * stride;
    if (offset >= run.length) break;
    alignas(16) int8_t out[kItems];
#pragma unroll
    for (int j = 0; j < kItems; ++j) out[j] = quantize_value(item_f32(v[c], j), inv);
    store_lane(q + run.start + offset, run.length - offset, lane, vec_ok, out);
  }
}

// Per (row, group) quantization, a block per run: from registers where its warps take at
// most RESIDENT chunks each (quantize_resident_run); RESIDENT = 0, longer runs: the absmax
// pass, then a second pass (from L2) quantizes.
template <typename T, int RESIDENT>
__device__ __forceinline__ void quantize_block_run(const T* x, const ParamIndex& idx, int8_t* q, float* scale) {
  const Run run = run_of(idx, blockIdx.x);
  if constexpr (RESIDENT > 0) {
    quantize_resident_run<RESIDENT>(x, run, q, scale);
  } else {
    const float s = scale_from_bits(run_absmax_bits(x, run));
    if (threadIdx.x == 0) scale[run.index] = s;
    quantize_run(x, run, symmetric_inverse_scale(s), q);
  }
}

template <typename T, int RESIDENT>
__global__ void quantize_rows_kernel(const T* x, ParamIndex idx, int8_t* q, float* scale) {
  quantize_block_run<T, RESIDENT>(x, idx, q, scale);
}

// 16-bit x in four chunks a warp, capped at 64 registers (ptxas: 73 without the cap; 64 with
// 40 bytes spilled, which stay in L1) so that 1024 threads fit a SM, as with fp32 in two
// chunks: as many bytes of x in flight. (Session 45, H200: per-token bf16 at 56% of the copy
// bandwidth against fp32's 82%, bf16 in two chunks of 256-thread blocks holding half fp32's
// bytes in flight.) A separate kernel: launch bounds on quantize_rows_kernel changed the
// other instances' registers too.
template <typename T>
__global__ void __launch_bounds__(kThreads, 4) quantize_rows_16bit_kernel(const T* x, ParamIndex idx, int8_t* q,
                                                                          float* scale) {
  quantize_block_run<T, 4>(x, idx, q, scale);
}

// Threads of a quantize_rows block: run_threads', halved for 16-bit x where a row fills a
// whole block and its warps then take at most four chunks each, so a thread holds as many
// bytes as an fp32 one (fp32 8192-element rows: 256 threads, two chunks; bf16: 128, four).
template <typename T>
int quantize_rows_threads(int64_t run) {
  const int threads = run_threads(run);
  const int64_t half_span = int64_t{kThreads / 2 / 32} * kWarpItems;
  return sizeof(T) == 2 && threads == kThreads && run <= 4 * half_span ? kThreads / 2 : threads;
}

// Per-channel absmax, one atomic per run (a channel has outer runs).
template <typename T>
__global__ void channel_absmax_run_kernel(const T* x, RunGrid grid, uint32_t* absmax_bits) {
  const Run run = grid.block_run(blockIdx.x);
  const uint32_t bits = run_absmax_bits(x, run);
  if (threadIdx.x == 0) atomicMax(absmax_bits + run.index, bits);
}

template <typename T>
__global__ void quantize_with_scales_run_kernel(const T* x, RunGrid grid, const float* scale, int8_t* q) {
  const Run run = grid.block_run(blockIdx.x);
  quantize_run(x, run, symmetric_inverse_scale(scale[run.index]), q);
}

template <typename Out>
__global__ void dequantize_run_kernel(const int8_t* q, RunGrid grid, const float* scale, Out* y) {
  const Run run = grid.block_run(blockIdx.x);
  const float s = scale[run.index];
  const bool vec_ok = piece_aligned(q + run.start) && piece_aligned(y + run.start);
  const int lane = threadIdx.x % 32;
  for_run_chunks(run, [&](int64_t start, int64_t available) {
    alignas(16) int8_t v[kItems];
    alignas(16) Out out[kItems];
    load_lane(q + start, available, lane, vec_ok, v);
#pragma unroll
    for (int j = 0; j < kItems; ++j) out[j] = from_f32<Out>(__fmul_rn(to_f32(v[j]), s));
    store_lane(y + start, available, lane, vec_ok, out);
  });
}

// ---- per-channel scales ----------------------------------------------------------------
template <typename T>
__global__ void channel_absmax_kernel(const T* x, int64_t n, ParamIndex idx, uint32_t* absmax_bits) {
  const bool vec_ok = aligned(x, 16);
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kItems; base < n;
       base += int64_t(gridDim.x) * blockDim.x * kItems) {
    const int count = chunk_count(n, base);
    T v[kItems];
    load_items(x + base, count, vec_ok, v);
    // Flush one atomic per run of equal channels inside the chunk.
    ParamCursor cursor(idx, base);
    int64_t channel = cursor.index();
    uint32_t bits = 0;
#pragma unroll
    for (int j = 0; j < kItems; ++j, cursor.next()) {
      if (j >= count) break;
      if (cursor.index() != channel) {
        atomicMax(absmax_bits + channel, bits);
        channel = cursor.index();
        bits = 0;
      }
      bits = max(bits, abs_bits(to_f32(v[j])));
    }
    atomicMax(absmax_bits + channel, bits);
  }
}

__global__ void scales_from_bits_kernel(const uint32_t* bits, int64_t channels, float* scale) {
  const int64_t c = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (c < channels) scale[c] = scale_from_bits(bits[c]);
}

// ---- element-wise kernels --------------------------------------------------------------
template <typename T>
__global__ void quantize_with_scales_kernel(const T* x, int64_t n, const float* scale, ParamIndex idx, int8_t* q) {
  const bool vec_ok = aligned(x, 16) && aligned(q, 16);
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kItems; base < n;
       base += int64_t(gridDim.x) * blockDim.x * kItems) {
    const int count = chunk_count(n, base);
    T v[kItems];
    alignas(16) int8_t out[kItems];
    load_items(x + base, count, vec_ok, v);
    ParamCursor cursor(idx, base);
    int64_t channel = -1;
    float inv = 0.0f;
#pragma unroll
    for (int j = 0; j < kItems; ++j, cursor.next()) {
      if (j >= count) break;
      if (cursor.index() != channel) {  // one division per run of a channel, not per element
        channel = cursor.index();
        inv = symmetric_inverse_scale(scale[channel]);
      }
      out[j] = quantize_value(to_f32(v[j]), inv);
    }
    store_items(q + base, count, vec_ok, out);
  }
}

template <typename Out>
__global__ void dequantize_kernel(const int8_t* q, int64_t n, const float* scale, ParamIndex idx, Out* y) {
  const bool vec_ok = aligned(q, 16) && aligned(y, 16);
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kItems; base < n;
       base += int64_t(gridDim.x) * blockDim.x * kItems) {
    const int count = chunk_count(n, base);
    alignas(16) int8_t v[kItems];
    alignas(16) Out out[kItems];
    load_items(q + base, count, vec_ok, v);
    ParamCursor cursor(idx, base);
#pragma unroll
    for (int j = 0; j < kItems; ++j, cursor.next()) {
      if (j < count) out[j] = from_f32<Out>(__fmul_rn(to_f32(v[j]), scale[cursor.index()]));
    }
    store_items(y + base, count, vec_ok, out);
  }
}

struct ElementParams {
  float scale, zero_point;
};


__device__ __forceinline__ ElementParams channel_params(const FakeQuantArgs& a, int64_t c) {
  if (a.scale == nullptr) return {a.scale_value, a.zero_point_value};
  return {a.scale[c], a.zero_point[c]};
}

// PyTorch's fake quantization of one value (the fake_quantize kernels); in_range is the
// gradient mask, from the unclamped value.
__device__ __forceinline__ float fake_quantize_value(float xv, const ElementParams& p, float inv_scale,
                                                     const FakeQuantArgs& a, bool& in_range) {
  const float qval = __fadd_rn(p.zero_point, rintf(__fmul_rn(xv, inv_scale)));
  const float clamped = fminf(fmaxf(qval, a.quant_min), a.quant_max);
  in_range = qval >= a.quant_min && qval <= a.quant_max;
  // NaN input: fminf/fmaxf would drop it, so propagate it explicitly.
  return isnan(xv) ? xv : __fmul_rn(__fsub_rn(clamped, p.zero_point), p.scale);
}

// Fake quantization of one lane's share of the warp chunk at x + start with one scale and
// zero point (p, inv_scale its reciprocal): y and the gradient mask.
template <typename T>
__device__ __forceinline__ void fake_quantize_lane(const T* x, int64_t start, int64_t available, bool vec_ok,
                                                   const ElementParams& p, float inv_scale, const FakeQuantArgs& a,
                                                   T* y, bool* mask) {
  const int lane = threadIdx.x % 32;
  T v[kItems];
  alignas(16) T out[kItems];
  alignas(16) bool in_range[kItems];
  load_lane(x + start, available, lane, vec_ok, v);
#pragma unroll
  for (int j = 0; j < kItems; ++j) {
    out[j] = from_f32<T>(fake_quantize_value(to_f32(v[j]), p, inv_scale, a, in_range[j]));
  }
  store_lane(y + start, available, lane, vec_ok, out);
  store_lane(mask + start, available, lane, vec_ok, in_range);
}

// One scale and zero point (a.scale == nullptr), its reciprocal taken once per thread: no
// scale index to walk per element (the per-element cursor and channel checks cost more than
// the arithmetic at the HBM rate).
template <typename T>
__global__ void fake_quantize_tensor_kernel(const T* x, int64_t n, FakeQuantArgs a, T* y, bool* mask) {
  const bool vec_ok = piece_aligned(x) && piece_aligned(y) && piece_aligned(mask);
  const ElementParams tensor{a.scale_value, a.zero_point_value};
  const float inv_scale = __fdiv_rn(1.0f, tensor.scale);
  for_warp_chunks(n, [&](int64_t chunk) {
    fake_quantize_lane(x, chunk, n - chunk, vec_ok, tensor, inv_scale, a, y, mask);
  });
}

// A scale and zero point per channel, a block per run.
template <typename T>
__global__ void fake_quantize_run_kernel(const T* x, RunGrid grid, FakeQuantArgs a, T* y, bool* mask) {
  const Run run = grid.block_run(blockIdx.x);
  const bool vec_ok = piece_aligned(x + run.start) && piece_aligned(y + run.start) && piece_aligned(mask + run.start);
  const ElementParams p{a.scale[run.index], a.zero_point[run.index]};
  const float inv_scale = __fdiv_rn(1.0f, p.scale);
  for_run_chunks(run, [&](int64_t start, int64_t available) {
    fake_quantize_lane(x, start, available, vec_ok, p, inv_scale, a, y, mask);
  });
}

// A scale and zero point per channel, runs too short for blocks: 16 consecutive elements a
// thread, which mostly share a channel, so a division per channel change.
template <typename T>
__global__ void fake_quantize_channel_kernel(const T* x, int64_t n, FakeQuantArgs a, ParamIndex idx, T* y,
                                             bool* mask) {
  const bool vec_ok = aligned(x, 16) && aligned(y, 16) && aligned(mask, 16);
  for (int64_t base = (int64_t(blockIdx.x) * blockDim.x + threadIdx.x) * kItems; base < n;
       base += int64_t(gridDim.x) * blockDim.x * kItems) {
    const int count = chunk_count(n, base);
    T v[kItems];
    alignas(16) T out[kItems];
    alignas(16) bool in_range[kItems];
    load_items(x + base, count, vec_ok, v);
    ParamCursor cursor(idx, base);
    int64_t channel = -1;
    ElementParams p{};
    float inv_scale = 0.0f;
#pragma unroll
    for (int j = 0; j < kItems; ++j, cursor.next()) {
      if (j >= count) break;
      if (cursor.index() != channel) {
        channel = cursor.index();
        p = {a.scale[channel], a.zero_point[channel]};
        inv_scale = __fdiv_rn(1.0f, p.scale);
      }
      out[j] = from_f32<T>(fake_quantize_value(to_f32(v[j]), p, inv_scale, a, in_range[j]));
    }
    store_items(y + base, count, vec_ok, out);
    store_items(mask + base, count, vec_ok, in_range);
  }
}

template <typename T>
__global__ void mask_grad_kernel(const T* grad, const bool* mask, int64_t n, T* dx) {
  const bool vec_ok = piece_aligned(grad) && piece_aligned(mask) && piece_aligned(dx);
  const int lane = threadIdx.x % 32;
  for_warp_chunks(n, [&](int64_t chunk) {
    T g[kItems];
    alignas(16) bool m[kItems];
    alignas(16) T out[kItems];
    load_lane(grad + chunk, n - chunk, lane, vec_ok, g);
    load_lane(mask + chunk, n - chunk, lane, vec_ok, m);
#pragma unroll
    for (int j = 0; j < kItems; ++j) out[j] = from_f32<T>(__fmul_rn(to_f32(g[j]), m[j] ? 1.0f : 0.0f));
    store_lane(dx + chunk, n - chunk, lane, vec_ok, out);
  });
}

template <typename T>
__global__ void learnable_grad_kernel(const T* dy, const T* x, int64_t n, FakeQuantArgs a, float grad_factor,
                                      ParamIndex idx, T* dx, float* dscale, float* dzp) {
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    const ElementParams p = channel_params(a, a.scale == nullptr ? 0 : ParamCursor(idx, i).index());
    const float inv_scale = __fdiv_rn(1.0f, p.scale), xv = to_f32(x[i]), g = to_f32(dy[i]);
    const float qval = rintf(__fadd_rn(p.zero_point, __fmul_rn(xv, inv_scale)));
    const bool in_range = qval >= a.quant_min && qval <= a.quant_max;
    dx[i] = from_f32<T>(__fmul_rn(g, in_range ? 1.0f : 0.0f));  // PyTorch multiplies: -g * 0 is -0
    if (in_range) {
      const float x_fq = __fmul_rn(__fsub_rn(qval, p.zero_point), p.scale);
      dscale[i] = __fmul_rn(__fmul_rn(__fmul_rn(g, __fsub_rn(x_fq, xv)), inv_scale), grad_factor);
      dzp[i] = 0.0f;
    } else {
      const float bound = qval < a.quant_min ? a.quant_min : a.quant_max;
      dscale[i] = __fmul_rn(__fmul_rn(g, __fsub_rn(bound, p.zero_point)), grad_factor);
      dzp[i] = __fmul_rn(__fmul_rn(-g, p.scale), grad_factor);
    }
  }
}

}  // namespace

cudaError_t quantize_rows(DType dtype, const void* x, int64_t rows, int64_t k, int64_t group, int8_t* q,
                          float* scale, cudaStream_t stream) {
  ParamIndex idx;
  idx.grouped = true, idx.k = k, idx.group = group, idx.groups = (k + group - 1) / group;
  if (rows == 0 || idx.groups == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x);
    const int threads = quantize_rows_threads<T>(longest_run(idx));
    const int64_t warp_span = int64_t{threads / 32} * kWarpItems;  // elements a block's warps take at once
    const int64_t chunks = (longest_run(idx) + warp_span - 1) / warp_span;
    // 1, 2 or 4 chunks a warp in registers; 0 (last, taken beyond 4): the two-pass kernel
    with_rows<1, 2, 4, 0>(chunks, [&](auto resident) {
      if constexpr (sizeof(T) == 2 && resident() == 4) {
        quantize_rows_16bit_kernel<T><<<rows * idx.groups, threads, 0, stream>>>(xs, idx, q, scale);
      } else {
        quantize_rows_kernel<T, resident()><<<rows * idx.groups, threads, 0, stream>>>(xs, idx, q, scale);
      }
    });
  });
}

cudaError_t channel_scales(DType dtype, const void* x, int64_t outer, int64_t channels, int64_t inner,
                           uint32_t* absmax_bits, float* scale, cudaStream_t stream) {
  const int64_t n = outer * channels * inner;
  ParamIndex idx;
  idx.inner = inner;
  idx.channels = channels;
  if (channels == 0) return cudaSuccess;
  const cudaError_t err = with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x);
    if (use_runs(idx, n)) {
      const RunLaunch launch = run_launch(run_grid(idx), n);
      channel_absmax_run_kernel<T><<<launch.blocks, launch.threads, 0, stream>>>(xs, run_grid(idx), absmax_bits);
    } else if (n > 0) {
      channel_absmax_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(xs, n, idx, absmax_bits);
    }
  });
  if (err != cudaSuccess) return err;
  scales_from_bits_kernel<<<(channels + kThreads - 1) / kThreads, kThreads, 0, stream>>>(absmax_bits, channels, scale);
  return cudaGetLastError();
}

cudaError_t quantize_with_scales(DType dtype, const void* x, int64_t n, const float* scale, ParamIndex idx,
                                 int8_t* q, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x);
    if (use_runs(idx, n)) {
      const RunLaunch launch = run_launch(run_grid(idx), n);
      quantize_with_scales_run_kernel<T><<<launch.blocks, launch.threads, 0, stream>>>(xs, run_grid(idx), scale, q);
    } else {
      quantize_with_scales_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(xs, n, scale, idx, q);
    }
  });
}

cudaError_t dequantize(DType out_dtype, const int8_t* q, int64_t n, const float* scale, ParamIndex idx, void* y,
                       cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_dtype(out_dtype, [&](auto tag) {
    using T = decltype(tag);
    if (use_runs(idx, n)) {
      const RunLaunch launch = run_launch(run_grid(idx), n);
      T* ys = static_cast<T*>(y);
      dequantize_run_kernel<T><<<launch.blocks, launch.threads, 0, stream>>>(q, run_grid(idx), scale, ys);
    } else {
      dequantize_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(q, n, scale, idx, static_cast<T*>(y));
    }
  });
}

cudaError_t fake_quantize(DType dtype, const void* x, int64_t n, FakeQuantArgs args, ParamIndex idx, void* y,
                          bool* mask, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    const T* xs = static_cast<const T*>(x);
    T* ys = static_cast<T*>(y);
    if (args.scale == nullptr) {
      fake_quantize_tensor_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(xs, n, args, ys, mask);
    } else if (use_runs(idx, n)) {
      const RunLaunch launch = run_launch(run_grid(idx), n);
      fake_quantize_run_kernel<T><<<launch.blocks, launch.threads, 0, stream>>>(xs, run_grid(idx), args, ys, mask);
    } else {
      fake_quantize_channel_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(xs, n, args, idx, ys, mask);
    }
  });
}

cudaError_t mask_grad(DType dtype, const void* grad, const bool* mask, int64_t n, void* dx, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    mask_grad_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(static_cast<const T*>(grad), mask, n, static_cast<T*>(dx));
  });
}

cudaError_t fake_quantize_learnable_grad(DType dtype, const void* dy, const void* x, int64_t n, FakeQuantArgs args,
                                         float grad_factor, ParamIndex idx, void* dx, float* dscale,
                                         float* dzero_point, cudaStream_t stream) {
  if (n == 0) return cudaSuccess;
  return with_dtype(dtype, [&](auto tag) {
    using T = decltype(tag);
    learnable_grad_kernel<T><<<grid_for(n), kThreads, 0, stream>>>(
        static_cast<const T*>(dy), static_cast<const T*>(x), n, args, grad_factor, idx, static_cast<T*>(dx), dscale,
        dzero_point);
  });
}

}  // namespace effgen::cuda
