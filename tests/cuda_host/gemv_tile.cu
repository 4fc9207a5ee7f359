// Host-side check of the few-row tensor-core kernels' operand mapping (int8_gemm.cu's W8A8
// GEMV and skinny_mma.cuh's 16-bit skeleton): one warp step is emulated with the kernels'
// own operand and output functions (a_operand; skinny_weights, skinny_x, skinny_output) and
// their conventions under the PTX ISA's fragment rules
// (tile_check.h: mma m16n8k32 s8, and m16n8k16 with integers standing in for bf16/fp16),
// and must give the dot products of the step's K, at general_accumulator_position. The K
// order inside a step is the kernels' own (lane t's piece at 16 t, or kLaneElements t);
// only that a and b agree on it matters. No GPU needed; built and run by tests. Exits 1 with
// the first mismatch.
#include <cstring>

#include "../../csrc/kernels/cuda/int8_gemm.cu"
#include "int8_gemm_stubs.h"
#include "tile_check.h"

using namespace effgen::cuda;

namespace {

std::mt19937 rng(7);

int4 piece_of(const void* bytes) {
  int4 p;
  std::memcpy(&p, bytes, 16);
  return p;
}

bool check(int lane, int e, int64_t got, int64_t want, const char* what) {
  if (got == want) return true;
  std::printf("%s: lane %d accumulator %d: %lld, expected %lld\n", what, lane, e, static_cast<long long>(got),
              static_cast<long long>(want));
  return false;
}

// int8_gemv_kernel: lane (g, t) holds bytes 16 t.. of a's rows g, g + 8 and b's channel g;
// a_operand half h with b words 2h, 2h + 1.
bool int8_step() {
  std::uniform_int_distribution<int> byte(-128, 127);
  int8_t a[16][64], b[8][64];
  for (auto& row : a) for (auto& v : row) v = static_cast<int8_t>(byte(rng));
  for (auto& row : b) for (auto& v : row) v = static_cast<int8_t>(byte(rng));
  int64_t d[32][4] = {};
  for (int half = 0; half < 2; ++half) {
    int32_t fa[32][4], b0[32], b1[32];
    for (int l = 0; l < 32; ++l) {
      const int g = l / 4, t = l % 4;
      const int4 lo = piece_of(&a[g][16 * t]), hi = piece_of(&a[g + 8][16 * t]), w = piece_of(&b[g][16 * t]);
      const AOperand op = a_operand(lo, hi, half);
      for (int q = 0; q < 4; ++q) fa[l][q] = static_cast<int32_t>(op.regs[q]);
      b0[l] = half == 0 ? w.x : w.z;
      b1[l] = half == 0 ? w.y : w.w;
    }
    int64_t part[32][4];
    tile_check::mma(fa, b0, b1, part);
    for (int l = 0; l < 32; ++l) for (int e = 0; e < 4; ++e) d[l][e] += part[l][e];
  }
  for (int l = 0; l < 32; ++l) {
    for (int e = 0; e < 4; ++e) {
      const TilePosition at = general_accumulator_position(0, l, 0, e);
      int64_t want = 0;
      for (int k = 0; k < 64; ++k) want += int64_t{a[at.row][k]} * b[at.col][k];
      if (!check(l, e, d[l][e], want, "int8 GEMV step")) return false;
    }
  }
  return true;
}

// skinny_mma with two channel tiles: lane (g, t) decodes the weights of its 4 channels
// (skinny_channel) at LANE t.. and holds x's rows g and g + 8 there in LANE / 8 pieces;
// piece q, half h makes each tile's A operand of the decoders' pairs 4q + 2h and + 1
// (skinny_weights) and the B operand of its words 2h, 2h + 1 (skinny_x), one mma per tile
// and 8 rows of x; the sums land at skinny_output.
template <int LANE>
bool skinny_step() {
  constexpr int kTiles = 2, kChannels = 16 * kTiles;
  std::uniform_int_distribution<int> value(-300, 300);
  int16_t x[16][4 * LANE], w[kChannels][4 * LANE];
  for (auto& row : x) for (auto& v : row) v = static_cast<int16_t>(value(rng));
  for (auto& row : w) for (auto& v : row) v = static_cast<int16_t>(value(rng));
  auto pair = [&](int l, int d, int i) {  // decoder d's pair: weights 2i, 2i + 1, lower k low
    const int channel = skinny_channel(l, d), t = l % 4;
    const uint32_t low = uint16_t(w[channel][LANE * t + 2 * i]), high = uint16_t(w[channel][LANE * t + 2 * i + 1]);
    return low | high << 16;
  };
  int64_t d[32][8 * kTiles] = {};  // a lane's accumulators, flat as skinny_mma keeps them
  for (int q = 0; q < LANE / 8; ++q) {
    for (int half = 0; half < 2; ++half) {
      const int i = 4 * q + 2 * half;
      for (int c = 0; c < kTiles; ++c) {
        for (int tile = 0; tile < 2; ++tile) {
          int32_t fa[32][4], b0[32], b1[32];
          for (int l = 0; l < 32; ++l) {
            const AOperand op = skinny_weights(pair(l, 2 * c, i), pair(l, 2 * c + 1, i), pair(l, 2 * c, i + 1),
                                               pair(l, 2 * c + 1, i + 1));
            for (int r = 0; r < 4; ++r) fa[l][r] = static_cast<int32_t>(op.regs[r]);
            const uint2 b = skinny_x(piece_of(&x[8 * tile + l / 4][LANE * (l % 4) + 8 * q]), half);
            b0[l] = static_cast<int32_t>(b.x), b1[l] = static_cast<int32_t>(b.y);
          }
          int64_t part[32][4];
          tile_check::mma_of<2>(fa, b0, b1, part);
          for (int l = 0; l < 32; ++l) for (int e = 0; e < 4; ++e) d[l][8 * c + 4 * tile + e] += part[l][e];
        }
      }
    }
  }
  int writes[16][kChannels] = {};
  for (int l = 0; l < 32; ++l) {
    for (int e = 0; e < 8 * kTiles; ++e) {
      const SkinnyOutput at = skinny_output(l, e);
      ++writes[at.row][at.channel];
      int64_t want = 0;
      for (int k = 0; k < 4 * LANE; ++k) want += int64_t{x[at.row][k]} * w[at.channel][k];
      if (!check(l, e, d[l][e], want, LANE == 16 ? "skinny step, 16 per lane" : "skinny step, 32 per lane")) {
        return false;
      }
    }
  }
  for (int r = 0; r < 16; ++r) {
    for (int c = 0; c < kChannels; ++c) {
      if (writes[r][c] != 1) {
        std::printf("skinny step: x row %d, channel %d written %d times\n", r, c, writes[r][c]);
        return false;
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  for (int trial = 0; trial < 20; ++trial) {
    if (!int8_step() || !skinny_step<16>() || !skinny_step<32>()) return 1;
  }
  std::printf("ok\n");
  return 0;
}
