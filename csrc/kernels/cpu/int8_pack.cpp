#include <algorithm>
#include <cstring>

#include "int8_gemm.h"

namespace effgen::cpu {
namespace {

// Channel j's row into its column group's blocks: value kk goes to byte 4 (j % 16) + kk % 4
// of block kk / 4, i.e. 4 bytes at a time, 64 bytes apart.
void scatter_row(const int8_t* row, int64_t k, int64_t channel, int8_t* blocks) {
  int8_t* out = blocks + kPackDepth * channel;
  const int64_t whole = k / kPackDepth;
  for (int64_t kq = 0; kq < whole; ++kq) std::memcpy(out + kq * kPackBlock, row + kq * kPackDepth, kPackDepth);
  for (int64_t kk = whole * kPackDepth; kk < k; ++kk) out[whole * kPackBlock + kk % kPackDepth] = row[kk];
}

void sum_groups(const int8_t* row, int64_t k, int64_t group_size, int64_t groups, int64_t n, int32_t* sums) {
  for (int64_t g = 0; g < groups; ++g) {
    const int64_t end = std::min(k, (g + 1) * group_size);
    int32_t total = 0;
    for (int64_t kk = g * group_size; kk < end; ++kk) total += row[kk];
    sums[g * n] = total;
  }
}

}  // namespace

void pack_int8_weight(const int8_t* w, int64_t ldw, int64_t n, int64_t k, int64_t group_size, int64_t groups,
                      int64_t jb0, int64_t jb1, int8_t* packed, int32_t* sums) {
  const int64_t group_bytes = (k + kPackDepth - 1) / kPackDepth * kPackBlock;
  for (int64_t jb = jb0; jb < jb1; ++jb) {
    int8_t* blocks = packed + jb * group_bytes;
    const int64_t channels = std::min(kPackCols, n - jb * kPackCols);
    // The zeros past N and K (no memset through an empty tensor's null data at K = 0)
    if (group_bytes > 0 && (channels < kPackCols || k % kPackDepth)) std::memset(blocks, 0, group_bytes);
    for (int64_t c = 0; c < channels; ++c) {
      const int64_t j = jb * kPackCols + c;
      scatter_row(w + j * ldw, k, c, blocks);
      sum_groups(w + j * ldw, k, group_size, groups, n, sums + j);
    }
  }
}

}  // namespace effgen::cpu
