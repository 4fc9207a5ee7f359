// AMX int8 GEMM on packed weights: gemm_packed and W8A16's per-group w8a16_packed_grouped
// (every other entry is the AVX-512 kernel's).
// A packed column group is a run of AMX B tiles as it lies: its blocks (jb, kq) of 16
// columns x 4 values of K are 64 bytes each and contiguous along K, so 16 quads (64 values
// of K) are one 16-row x 64-byte B tile (row q = quad q, dword j = column j's 4 values),
// loaded with a 64-byte stride. TDPBSSD multiplies signed by signed bytes, so unlike VNNI
// the activations need no shift and the column sums are not read.
// Tested on an AMX CPU (Xeon, 2026-12-02) through the ops, and on emulated tiles on any CPU
// (amx_tiles.h, EFFGEN_AMX_EMULATE).
#include <algorithm>
#include <cstring>

#include "amx_tiles.h"
#include "int8_gemm.h"

#ifndef EFFGEN_AMX_EMULATE
#pragma GCC push_options
// AVX-512 too for the digit folds (int8_digits.h; DQ converts their int64 sums to float):
// every CPU with AMX has both.
#pragma GCC target("amx-tile,amx-int8,avx512f,avx512bw,avx512vl,avx512dq")
#endif

namespace effgen::cpu {
namespace amx_gemm {
namespace {

using amx::TileConfig;

#include "int8_digits.h"

constexpr int kTileRows = amx::kMaxRows;      // rows of an A and a C tile
constexpr int kTileCols = amx::kMaxRowBytes / 4;  // int32 columns of a C tile
static_assert(kTileCols == kPackCols, "a B tile row is one packed block");
constexpr int64_t kChunk = amx::kMaxRowBytes;  // values of K per A tile row: one B tile
constexpr int64_t kBTileBytes = kChunk / kPackDepth * kPackBlock;
// Calls with fewer rows go to the few-rows kernel. Measured on a Xeon (2 threads, int8 GEMM
// harness, tiles against the AVX-512 kernel, B tiles read ahead): 8 rows 1.13-1.15x faster
// from memory at 4096^2 (1.09x at 576 -> 1536) and 1.8x in cache; 6 rows 1.5x in cache but
// 4% slower from memory, and 4 rows slower still.
constexpr int64_t kMinRows = 8;

#ifdef EFFGEN_AMX_EMULATE
const Int8GemmKernels& few_rows_kernels() { return int8_gemm_kernels_scalar(); }  // runs on any CPU
#else
const Int8GemmKernels& few_rows_kernels() { return int8_gemm_kernels_avx512(); }
#endif

// A block of the output of up to 2 x 2 C tiles. Tile numbers: C(r, c) is tile 2 r + c;
// A row tiles 4 and 5; B column tiles 6 and 7.
struct BlockShape {
  int rows[2], cols[2];  // of row tiles 0 and 1, column tiles 0 and 1 (0: absent)
  bool operator==(const BlockShape&) const = default;
};

// A block's tiles, those it leaves unused configured whole: so blocks of whole tiles share
// one configuration, however many of the tiles they use (48 rows: a pair, then one).
TileConfig config_for(const BlockShape& s) {
  TileConfig config;
  auto use = [&config](int tile, int rows, int bytes) {
    config.rows[tile] = static_cast<uint8_t>(rows);
    config.colsb[tile] = static_cast<uint16_t>(bytes);
  };
  auto or_whole = [](int count, int whole) { return count == 0 ? whole : count; };
  for (int r = 0; r < 2; ++r) {
    const int rows = or_whole(s.rows[r], kTileRows);
    for (int c = 0; c < 2; ++c) use(2 * r + c, rows, 4 * or_whole(s.cols[c], kTileCols));
    use(4 + r, rows, kChunk);
  }
  for (int c = 0; c < 2; ++c) use(6 + c, kChunk / kPackDepth, 4 * or_whole(s.cols[c], kTileCols));
  return config;
}

// Tiles configured for `shape`, with LDTILECFG only where the thread's tiles hold another
// configuration: STTILECFG reads it back in a few ns, where LDTILECFG waits for every tile
// operation in flight (0.2 us on a Xeon, a tenth of the op's 96 x 64 block at K = 576).
// The tiles stay configured after gemm_packed returns, for the thread's next call;
// release_tiles ends such a run.
void configure_for(const BlockShape& shape) {
  const TileConfig wanted = config_for(shape);
  TileConfig current;
  EFFGEN_TILE_STORE_CONFIG(&current);
  if (std::memcmp(&current, &wanted, sizeof wanted) != 0) EFFGEN_TILE_CONFIGURE(wanted);
}

// The shape a call's tiles were last configured for: configure_for only when it changes.
class ConfiguredShape {
 public:
  void ensure(const BlockShape& shape) {
    if (known_ && shape == shape_) return;
    configure_for(shape);
    shape_ = shape;
    known_ = true;
  }

 private:
  BlockShape shape_{};
  bool known_ = false;
};

void release_tiles() {
  EFFGEN_TILE_RELEASE();  // back to the init state: the thread's context switches stay cheap
}

// The operands of one block: A rows from a (row tile 1 is kTileRows rows below), B column
// tile 0's packed group at b (tile 1's group_stride later), `chunks` whole chunks of K,
// then, where K has a partial chunk, its values zero-padded to a whole one: a_tail (2 row
// tiles of kTileRows x kChunk) and b_tail (2 B tiles). The B tiles of `readable_chunks`
// whole chunks from b on may be read ahead (a per-group product reads on past its group).
struct BlockOperands {
  const int8_t* a;
  int64_t lda;
  const int8_t* b;
  int64_t group_stride;
  int64_t chunks;
  const int8_t* a_tail;  // nullptr: K is whole chunks
  const int8_t* b_tail;
  int32_t* c;
  int64_t ldc;
  int64_t readable_chunks;
};

template <bool kTwoRowTiles, bool kTwoColTiles>
void multiply_tiles() {
  EFFGEN_TILE_DPBSSD(0, 4, 6);
  if constexpr (kTwoColTiles) EFFGEN_TILE_DPBSSD(1, 4, 7);
  if constexpr (kTwoRowTiles) EFFGEN_TILE_DPBSSD(2, 5, 6);
  if constexpr (kTwoRowTiles && kTwoColTiles) EFFGEN_TILE_DPBSSD(3, 5, 7);
}

template <bool kTwoRowTiles, bool kTwoColTiles>
void load_and_multiply(const int8_t* a, int64_t lda, const int8_t* b0, const int8_t* b1) {
  EFFGEN_TILE_LOAD(4, a, lda);
  if constexpr (kTwoRowTiles) EFFGEN_TILE_LOAD(5, a + kTileRows * lda, lda);
  EFFGEN_TILE_LOAD(6, b0, kPackBlock);
  if constexpr (kTwoColTiles) EFFGEN_TILE_LOAD(7, b1, kPackBlock);
  multiply_tiles<kTwoRowTiles, kTwoColTiles>();
}

// The B tiles chunk + kAheadChunks of each column tile (1 KB, 16 lines each) are prefetched
// while chunk multiplies: tile loads that miss the caches stall the TDPBSSDs waiting on
// them, and a 32-column pair of groups is only 2 streams for the hardware prefetcher.
// Harness, weights from memory (600 MB of copies), 2 threads: 16 x 4096^2 1.20-1.25x
// faster, 12 rows 1.27x, 64 rows 1.17x; in cache (96 x 576 -> 1536, 256 x 576 -> 192)
// level; 4 chunks ahead did as well, 8 worse.
constexpr int64_t kAheadChunks = 2;

template <bool kTwoColTiles>
void prefetch_b_tiles(const int8_t* b0, int64_t group_stride) {
  for (int64_t line = 0; line < kBTileBytes; line += 64) {
    __builtin_prefetch(b0 + line, 0, 3);  // prefetcht0
    if constexpr (kTwoColTiles) __builtin_prefetch(b0 + group_stride + line, 0, 3);
  }
}

template <bool kTwoRowTiles, bool kTwoColTiles>
void block(const BlockOperands& op) {
  EFFGEN_TILE_ZERO(0);
  if constexpr (kTwoColTiles) EFFGEN_TILE_ZERO(1);
  if constexpr (kTwoRowTiles) EFFGEN_TILE_ZERO(2);
  if constexpr (kTwoRowTiles && kTwoColTiles) EFFGEN_TILE_ZERO(3);
  for (int64_t chunk = 0; chunk < op.chunks; ++chunk) {
    const int8_t* b0 = op.b + chunk * kBTileBytes;
    if (chunk + kAheadChunks < op.readable_chunks) prefetch_b_tiles<kTwoColTiles>(b0 + kAheadChunks * kBTileBytes, op.group_stride);
    load_and_multiply<kTwoRowTiles, kTwoColTiles>(op.a + chunk * kChunk, op.lda, b0, b0 + op.group_stride);
  }
  if (op.a_tail != nullptr) {
    load_and_multiply<kTwoRowTiles, kTwoColTiles>(op.a_tail, kChunk, op.b_tail, op.b_tail + kBTileBytes);
  }
  const int64_t stride = op.ldc * static_cast<int64_t>(sizeof(int32_t));
  EFFGEN_TILE_STORE(0, op.c, stride);
  if constexpr (kTwoColTiles) EFFGEN_TILE_STORE(1, op.c + kTileCols, stride);
  if constexpr (kTwoRowTiles) EFFGEN_TILE_STORE(2, op.c + kTileRows * op.ldc, stride);
  if constexpr (kTwoRowTiles && kTwoColTiles) EFFGEN_TILE_STORE(3, op.c + kTileRows * op.ldc + kTileCols, stride);
}

void run_block(const BlockShape& shape, const BlockOperands& op) {
  if (shape.rows[1] == 0) return shape.cols[1] == 0 ? block<false, false>(op) : block<false, true>(op);
  return shape.cols[1] == 0 ? block<true, false>(op) : block<true, true>(op);
}

// `count` rows or columns over up to 2 tiles of `size`: out = what each tile gets (0: none).
void split_in_two(int64_t count, int size, int* out) {
  out[0] = static_cast<int>(std::min<int64_t>(count, size));
  out[1] = static_cast<int>(std::clamp<int64_t>(count - size, 0, size));
}

// K's last partial chunk (k % kChunk values), zero-padded to a whole one for a block's
// tiles: A rows copied (a tile row must not read past K, nor past the last row), B tiles
// copied (16 quads past K would be the next group's).
class PartialChunk {
 public:
  explicit PartialChunk(int64_t k) : whole_chunks_(k / kChunk), values_(k % kChunk) {}
  int64_t whole_chunks() const { return whole_chunks_; }
  // b: the packed group of the block's column tile 0, at the start of K.
  void stage_b(const int8_t* b, int64_t group_stride, const BlockShape& shape) {
    if (values_ == 0) return;
    const int64_t quad_bytes = (values_ + kPackDepth - 1) / kPackDepth * kPackBlock;
    std::memset(b_, 0, sizeof b_);
    for (int t = 0; t < 2 && shape.cols[t] > 0; ++t) {
      std::memcpy(b_ + t * kBTileBytes, b + t * group_stride + whole_chunks_ * kBTileBytes, quad_bytes);
    }
  }
  // a: the block's first row, at the start of K.
  void stage_a(const int8_t* a, int64_t lda, const BlockShape& shape) {
    if (values_ == 0) return;
    std::memset(a_, 0, sizeof a_);
    for (int r = 0; r < shape.rows[0] + shape.rows[1]; ++r) {
      std::memcpy(a_ + r * kChunk, a + r * lda + whole_chunks_ * kChunk, values_);
    }
  }
  const int8_t* a() const { return values_ > 0 ? a_ : nullptr; }
  const int8_t* b() const { return b_; }

 private:
  int64_t whole_chunks_, values_;
  alignas(64) int8_t a_[2 * kTileRows * kChunk];
  alignas(64) int8_t b_[2 * kBTileBytes];
};

void gemm_packed(const int8_t* a, int64_t lda, int64_t m, int64_t k, const int8_t* b, int64_t group_stride,
                 const int32_t* col_sums, int64_t n, int32_t* c, int64_t ldc, PrefetchRange next) {
  if (m < kMinRows) {
    few_rows_kernels().gemm_packed(a, lda, m, k, b, group_stride, col_sums, n, c, ldc, next);
    return;
  }
  PartialChunk tail(k);
  ConfiguredShape configured;
  for (int64_t j0 = 0; j0 < n; j0 += 2 * kTileCols) {
    BlockShape shape{};
    split_in_two(n - j0, kTileCols, shape.cols);
    const int8_t* group = b + j0 / kPackCols * group_stride;
    tail.stage_b(group, group_stride, shape);
    for (int64_t i0 = 0; i0 < m; i0 += 2 * kTileRows) {
      split_in_two(m - i0, kTileRows, shape.rows);
      tail.stage_a(a + i0 * lda, lda, shape);
      configured.ensure(shape);
      run_block(shape, {a + i0 * lda, lda, group, group_stride, tail.whole_chunks(), tail.a(), tail.b(),
                        c + i0 * ldc + j0, ldc, tail.whole_chunks()});
    }
  }
}

// Per-group W8A16 (W8A16GroupedArgs) on tiles, where the digit rows are enough for them
// and groups are whole chunks (group 128: 2). Blocks of up to 2 x 2 tiles as in
// gemm_packed, of whole tokens (each token's digit rows in one block); per group, the
// block's int32 products go to a scratch tile in L1 and fold into the totals as the
// composed kernel folds them (digits_group_accumulate), so the result is the same bit for
// bit. The B tiles are read ahead across groups.
void w8a16_packed_grouped(const W8A16GroupedArgs& p) {
  const int64_t block_tokens = 2 * kTileRows / p.limbs;
  if (p.tokens * p.limbs < kMinRows || p.group_size % kChunk != 0 || block_tokens == 0 || p.k == 0) {
    few_rows_kernels().w8a16_packed_grouped(p);
    return;
  }
  constexpr int64_t ldc = 2 * kTileCols;
  alignas(64) int32_t products[2 * kTileRows * ldc];
  const int64_t groups = (p.k + p.group_size - 1) / p.group_size, k_last = (groups - 1) * p.group_size;
  const int64_t group_chunks = p.group_size / kChunk, k_chunks = p.k / kChunk;
  PartialChunk tail(p.k - k_last);  // of the last group
  ConfiguredShape configured;
  for (int64_t j0 = 0; j0 < p.n; j0 += 2 * kTileCols) {
    BlockShape shape{};
    split_in_two(p.n - j0, kTileCols, shape.cols);
    const int64_t nc = shape.cols[0] + shape.cols[1];
    const int8_t* column_group = p.b + j0 / kPackCols * p.group_stride;
    tail.stage_b(column_group + k_last / kChunk * kBTileBytes, p.group_stride, shape);
    for (int64_t t0 = 0; t0 < p.tokens; t0 += block_tokens) {
      const int64_t tokens = std::min(block_tokens, p.tokens - t0);
      split_in_two(tokens * p.limbs, kTileRows, shape.rows);
      const int8_t* a = p.a + t0 * p.limbs * p.k;
      tail.stage_a(a + k_last, p.k, shape);
      configured.ensure(shape);
      for (int64_t t = 0; t < tokens; ++t) std::fill_n(p.totals + (t0 + t) * p.ldt + j0, nc, 0.0f);
      for (int64_t q = 0, k0 = 0; q < groups; ++q, k0 += p.group_size) {
        const bool last = q + 1 == groups;
        run_block(shape, {a + k0, p.k, column_group + k0 / kChunk * kBTileBytes, p.group_stride,
                          last ? tail.whole_chunks() : group_chunks, last ? tail.a() : nullptr, tail.b(), products,
                          ldc, k_chunks - k0 / kChunk});
        const int64_t depth = std::min(p.group_size, p.k - k0);
        digits_group_accumulate(products, ldc, p.limbs, tokens, depth, nc, p.scale + q * p.scale_stride + j0,
                                p.totals + t0 * p.ldt + j0, p.ldt, p.weight_bound);
      }
    }
  }
}

Int8GemmKernels make_table() {
  Int8GemmKernels table = few_rows_kernels();
  table.gemm_packed = gemm_packed;
  table.gemm_packed_scaled = nullptr;  // the AVX-512 one is VNNI's, not the tiles'
  table.w8a16_packed_grouped = w8a16_packed_grouped;
  table.release_tiles = release_tiles;
  return table;
}

}  // namespace
}  // namespace amx_gemm

const Int8GemmKernels& int8_gemm_kernels_amx() {
  static const Int8GemmKernels table = amx_gemm::make_table();
  return table;
}

}  // namespace effgen::cpu

#ifndef EFFGEN_AMX_EMULATE
#pragma GCC pop_options
#endif
