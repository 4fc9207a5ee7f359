// Host-side check of the index math of the 128x128 wgmma GEMM (int8_gemm_wgmma.cu): one
// block is emulated with the kernel's own functions (staging offsets, descriptor encoding,
// operand offsets, accumulator positions) and the PTX ISA's rules written out here (the
// matrix descriptor's bit fields; a K-major, no-swizzle operand's element (row, k) at
// start + (row / 8) stride + (k / 16) leading + (row % 8) 16 + k % 16; the m64nN result
// fragment), and must give a @ b^T, every output written once. No GPU needed; built and
// run by tests/test_int8_gemm.py. Exits 1 with the first mismatch.
#include <cstdio>
#include <cstring>
#include <random>
#include <vector>

#include "../../csrc/kernels/cuda/int8_gemm_wgmma.cu"

using namespace effgen::cuda;

namespace {

using Matrix = std::vector<int8_t>;  // row-major [rows, k]

// A descriptor's fields (PTX ISA): address, leading and stride byte offsets (>> 4 in bits
// 0-13, 16-29, 32-45) and the swizzle mode (bits 62-63).
struct Descriptor {
  uint32_t address, leading, stride, swizzle;
};

Descriptor decode(uint64_t bits) {
  return {uint32_t(bits & 0x3FFF) << 4, uint32_t(bits >> 16 & 0x3FFF) << 4, uint32_t(bits >> 32 & 0x3FFF) << 4,
          uint32_t(bits >> 62)};
}

// Element (row, kk) of a K-major, no-swizzle operand of 32 bytes of K.
int8_t operand(const int8_t* shared, const Descriptor& d, int row, int kk) {
  return shared[d.address + row / 8 * d.stride + kk / 16 * d.leading + row % 8 * 16 + kk % 16];
}

void stage(const Matrix& src, int64_t rows, int64_t k, int64_t row0, int64_t t, int8_t* tile) {
  for (int idx = 0; idx < kBlockRows * kPieces; ++idx) {
    const int r = idx / kPieces, piece = idx % kPieces;
    const int64_t row = row0 + r, col = t * kBlockK + 16 * piece;
    for (int x = 0; x < 16; ++x) {
      tile[core_matrix_offset(r, piece) + x] = row < rows && col < k ? src[row * k + col + x] : 0;
    }
  }
}

bool check(int64_t m, int64_t n, int64_t k, std::mt19937& rng) {
  Matrix a(m * k), b(n * k);
  std::uniform_int_distribution<int> value(-128, 127);
  for (auto& v : a) v = static_cast<int8_t>(value(rng));
  for (auto& v : b) v = static_cast<int8_t>(value(rng));
  std::vector<int64_t> out(m * n, 0);
  std::vector<int> writes(m * n, 0);
  // one stage as shared memory: a at 0, b after it (descriptor addresses are offsets here)
  std::vector<int8_t> shared(sizeof(Stage));
  const uint32_t a_base = offsetof(Stage, a), b_base = offsetof(Stage, b);
  for (int64_t row0 = 0; row0 < m; row0 += kBlockRows) {
    for (int64_t col0 = 0; col0 < n; col0 += kBlockRows) {
      static int64_t d[2][kWarpgroupRows][kBlockRows];  // per warpgroup: its m64n128 result
      std::memset(d, 0, sizeof(d));
      for (int64_t t = 0; t * kBlockK < k; ++t) {
        stage(a, m, k, row0, t, shared.data() + a_base);
        stage(b, n, k, col0, t, shared.data() + b_base);
        for (int warpgroup = 0; warpgroup < 2; ++warpgroup) {
          for (int half = 0; half < kBlockK / 32; ++half) {
            const Descriptor da = decode(encode_descriptor(a_base + a_operand_offset(warpgroup, half)));
            const Descriptor db = decode(encode_descriptor(b_base + b_operand_offset(half)));
            if (da.swizzle != 0 || db.swizzle != 0) return std::printf("swizzle mode set\n"), false;
            for (int row = 0; row < kWarpgroupRows; ++row) {
              for (int col = 0; col < kBlockRows; ++col) {
                for (int kk = 0; kk < 32; ++kk) {
                  d[warpgroup][row][col] +=
                      int64_t{operand(shared.data(), da, row, kk)} * operand(shared.data(), db, col, kk);
                }
              }
            }
          }
        }
      }
      // m64nN result fragment (PTX): d[v] of warp w, lane 4 g + t is row 16 w + g + 8 (v / 2 % 2),
      // column 8 (v / 4) + 2 t + v % 2 of the warpgroup's result.
      for (int warpgroup = 0; warpgroup < 2; ++warpgroup) {
        for (int warp = 0; warp < 4; ++warp) {
          for (int l = 0; l < 32; ++l) {
            for (int v = 0; v < kAccumulators; ++v) {
              const int64_t value_v =
                  d[warpgroup][16 * warp + l / 4 + v / 2 % 2 * 8][8 * (v / 4) + 2 * (l % 4) + v % 2];
              const TilePosition at = wgmma_accumulator_position(warpgroup, warp, l, v);
              const int64_t row = row0 + at.row, col = col0 + at.col;
              if (row < m && col < n) out[row * n + col] = value_v, ++writes[row * n + col];
            }
          }
        }
      }
    }
  }
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t j = 0; j < n; ++j) {
      int64_t expected = 0;
      for (int64_t kk = 0; kk < k; ++kk) expected += int64_t{a[i * k + kk]} * b[j * k + kk];
      if (writes[i * n + j] != 1 || out[i * n + j] != expected) {
        std::printf("%lldx%lldx%lld: out[%lld][%lld] = %lld written %d times, expected %lld\n", (long long)m,
                    (long long)n, (long long)k, (long long)i, (long long)j, (long long)out[i * n + j],
                    writes[i * n + j], (long long)expected);
        return false;
      }
    }
  }
  return true;
}

}  // namespace

int main() {
  std::mt19937 rng(7);
  // partial row and column tiles, K within one stage, across stages, and a partial K tile
  const int64_t shapes[][3] = {{17, 9, 16}, {130, 129, 80}, {40, 200, 192}, {128, 128, 64}};
  for (const auto& shape : shapes) {
    if (!check(shape[0], shape[1], shape[2], rng)) return 1;
  }
  std::printf("ok\n");
  return 0;
}
