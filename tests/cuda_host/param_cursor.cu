// Host-side check of the CUDA quant kernels' index math (csrc/kernels/cuda/quant.cu): the
// ParamCursor against the closed-form scale index of quant.cuh's ParamIndex, from every
// start, and the lane layout (lane_item_offset) against the pieces the vector loads move.
// It runs on the CPU (both are __host__ __device__), so CI checks it without a GPU; built
// and run by tests/test_quant.py. Exits 1 with the first mismatch.
#include <cstdio>

#include "../../csrc/kernels/cuda/quant.cu"

using effgen::cuda::kItems;
using effgen::cuda::kPieceItems;
using effgen::cuda::kWarpItems;
using effgen::cuda::lane_item_offset;
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

// Every element of a warp's chunk belongs to one lane's item, and item j of a lane is where
// load_lane's piece j / kPieceItems (number q * 32 + lane of the chunk's pieces) puts it.
bool lane_layout() {
  int owners[kWarpItems] = {};
  for (int lane = 0; lane < 32; ++lane) {
    for (int j = 0; j < kItems; ++j) {
      const int at = lane_item_offset(lane, j), piece = j / kPieceItems * 32 + lane;
      if (at / kPieceItems != piece || at % kPieceItems != j % kPieceItems) {
        std::printf("lane %d item %d at %d, not in piece %d position %d\n", lane, j, at, piece, j % kPieceItems);
        return false;
      }
      ++owners[at];
    }
  }
  for (int i = 0; i < kWarpItems; ++i) {
    if (owners[i] != 1) {
      std::printf("chunk element %d belongs to %d lane items\n", i, owners[i]);
      return false;
    }
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
    }
  }
  for (int64_t k : {1, 5, 16, 17, 100}) {
    for (int64_t group : {1, 3, 16, 64, 128}) {
      ParamIndex idx;
      idx.grouped = true, idx.k = k, idx.group = group, idx.groups = (k + group - 1) / group;
      if (!walk(idx, 4 * k, "per group")) return 1;
    }
  }
  std::printf("ok\n");
  return 0;
}
