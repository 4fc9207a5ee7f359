// Host-side check of the CUDA quant kernels' index math (csrc/kernels/cuda/quant.cu): the
// ParamCursor against the closed-form scale index of quant.cuh's ParamIndex, from every
// start, the lane layout (lane_piece_offset) and the runs (run_of) against the same
// closed form, and the run kernels' blocks (RunGrid: runs cut into pieces) likewise.
// It runs on the CPU (both are __host__ __device__), so CI checks it without a GPU; built
// and run by tests/test_quant.py. Exits 1 with the first mismatch.
#include <cstdio>

#include "../../csrc/kernels/cuda/quant.cu"

using effgen::cuda::kItems;
using effgen::cuda::kPieceItems;
using effgen::cuda::kWarpItems;
using effgen::cuda::lane_piece_offset;
using effgen::cuda::run_count;
using effgen::cuda::run_grid;
using effgen::cuda::run_of;
using effgen::cuda::shortest_run;
using effgen::cuda::ParamCursor;
using effgen::cuda::ParamIndex;

namespace {

int64_t closed_form(const ParamIndex& idx, int64_t i) {
  if (idx.grouped) return (i / idx.k) * idx.groups + (i % idx.k) / idx.group;
  return (i / idx.inner) % idx.channels;
}

// Walks a cursor from every start in [0, n) to n; returns false at the first mismatch.
bool walk(const ParamIndex& idx, int64_t n, const char* what) {
  for (int64_t start = 0; start < n; ++start) {
    ParamCursor cursor(idx, start);
    for (int64_t i = start; i < n; ++i, cursor.next()) {
      if (cursor.index() != closed_form(idx, i)) {
        std::printf("%s: from %lld, element %lld: cursor %lld, expected %lld\n", what, (long long)start,
                    (long long)i, (long long)cursor.index(), (long long)closed_form(idx, i));
        return false;
      }
    }
  }
  return true;
}

}  // namespace

// The lanes' pieces tile a warp's chunk: every element in exactly one piece.
bool lane_layout() {
  int owners[kWarpItems] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int q = 0; q < kItems / kPieceItems; ++q) {
      for (int t = 0; t < kPieceItems; ++t) {
        const int at = lane_piece_offset(lane, q) + t;
        if (at < 0 || at >= kWarpItems) {
          std::printf("lane %d piece %d item %d at %d, outside the chunk\n", lane, q, t, at);
          return false;
        }
        ++owners[at];
      }
    }
  }
  for (int i = 0; i < kWarpItems; ++i) {
    if (owners[i] != 1) {
      std::printf("chunk element %d lies in %d lane pieces\n", i, owners[i]);
      return false;
    }
  }
  return true;
}

// The runs of idx over n elements cover [0, n) in order, each element once, with the closed
// form's scale index, and none is shorter than shortest_run; so do the pieces of a RunGrid
// with `segment` elements a piece (empty pieces allowed).
bool runs(const ParamIndex& idx, int64_t n, int64_t segment, const char* what) {
  int64_t next = 0;
  for (int64_t r = 0; r < run_count(idx, n); ++r) {
    const auto run = run_of(idx, r);
    if (run.length < shortest_run(idx)) {
      std::printf("%s: run %lld has %lld elements, below shortest_run\n", what, (long long)r, (long long)run.length);
      return false;
    }
  }
  const auto grid = run_grid(idx, segment);
  for (int64_t b = 0; b < grid.blocks(n); ++b) {
    const auto piece = grid.block_run(b);
    for (int64_t i = piece.start; i < piece.start + piece.length; ++i) {
      if (i != next++ || piece.index != closed_form(idx, i)) {
        std::printf("%s, pieces of %lld: block %lld (start %lld, length %lld, index %lld) at element %lld\n", what,
                    (long long)segment, (long long)b, (long long)piece.start, (long long)piece.length,
                    (long long)piece.index, (long long)i);
        return false;
      }
    }
  }
  if (next != n) {
    std::printf("%s, pieces of %lld: blocks end at %lld of %lld\n", what, (long long)segment, (long long)next,
                (long long)n);
    return false;
  }
  return true;
}

int main() {
  if (!lane_layout()) return 1;
  for (int64_t inner : {1, 2, 3, 7, 16}) {
    for (int64_t channels : {1, 2, 5}) {
      ParamIndex idx;
      idx.inner = inner, idx.channels = channels;
      if (!walk(idx, inner * channels * 3 + 5, "per channel")) return 1;
      for (int64_t segment : {1, 3, 16, 1 << 20}) {
        if (!runs(idx, inner * channels * 3, segment, "per-channel runs")) return 1;
      }
    }
  }
  for (int64_t k : {1, 5, 16, 17, 100}) {
    for (int64_t group : {1, 3, 16, 64, 128}) {
      ParamIndex idx;
      idx.grouped = true, idx.k = k, idx.group = group, idx.groups = (k + group - 1) / group;
      if (!walk(idx, 4 * k, "per group")) return 1;
      for (int64_t segment : {1, 3, 16, 1 << 20}) {
        if (!runs(idx, 4 * k, segment, "per-group runs")) return 1;
      }
    }
  }
  std::printf("ok\n");
  return 0;
}
