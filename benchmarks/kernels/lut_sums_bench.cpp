// The CPU lookup-table kernel alone (BinaryGemmKernels::lut_sums of the dispatched ISA),
// without torch, the op's glue or Python: how the numbers of RESULTS.md "Session 20" and
// "Session 22" were taken. Tables and tiles are built by the library's own build_tables /
// tile_for_lut, and the result is checked against lut_sums_portable before timing (exit 1 on
// mismatch), as are the same ISA's build_tables against build_lut_tables and its
// lut_tiles_to_int8 (AVX-512 only) against the weights it stands for.
//
// Build (from the repository root, the extension's flags; the kernels are torch-free), with
// S=csrc/kernels/cpu:
//   g++ -O3 -std=c++20 -ffp-contract=off -fopenmp -I$S benchmarks/kernels/lut_sums_bench.cpp
//       $S/binary_gemm_{avx2,avx512,vpopcntdq,scalar}.cpp $S/binary_pack.cpp $S/isa.cpp -o build/lut_sums_bench
// Run: build/lut_sums_bench [m=1] [planes=1] [copies=1] [n=4096] [k=4096] [threads=1] [calls=400]
// (copies > 1 rotates that many copies of the tiles, e.g. 300 x 2.2 MB to stream binary
// 4096 x 4096 from memory; threads split the tiles as the op does; EFFGEN_CPU_ISA picks the ISA).
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <vector>

#include "binary_gemm.h"
#include "int8_gemm.h"
#include "isa.h"

using namespace effgen::cpu;

namespace {

int64_t arg(int argc, char** argv, int i, int64_t fallback) { return argc > i ? std::atoll(argv[i]) : fallback; }

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// n rows of canonical packed weights from normal values: their signs, or their BitNet
// ternarization at the per-tensor mean |w| (the library's own conversion kernels).
std::vector<uint8_t> random_packed(int64_t n, int64_t k, int planes, std::mt19937& rng) {
  std::normal_distribution<float> normal;
  std::vector<float> w(static_cast<size_t>(n * k));
  for (float& v : w) v = normal(rng);
  std::vector<uint8_t> packed(static_cast<size_t>(n * planes * packed_row_bytes(k)));
  if (planes == 1) {
    pack_signs(DType::kF32, w.data(), n, k, packed.data());
  } else {
    const float scale = static_cast<float>(abs_sum(DType::kF32, w.data(), n * k) / static_cast<double>(n * k));
    ternarize_rows(DType::kF32, w.data(), n, k, &scale, 0, packed.data());
  }
  return packed;
}

// lut_tiles_to_int8 of tiles [0, tiles) against the canonical packed rows they came from
// (bit order of binary_gemm.h): every block byte (zeros past n and K included) and every
// column sum of rows below n over K groups of `group` values (a multiple of 4; >= K: one
// per row). Returns whether all match.
bool int8_blocks_match(const BinaryGemmKernels& kernels, const std::vector<uint8_t>& packed, const uint8_t* lut,
                       int64_t n, int64_t k, int planes, int64_t tiles, int64_t group) {
  const int64_t group_stride = (k + kPackDepth - 1) / kPackDepth * kPackBlock, plane = packed_row_bytes(k);
  const int64_t padded_k = group_stride / kPackBlock * kPackDepth, groups = (padded_k + group - 1) / group;
  const int64_t sums_stride = tiles * kLutTileRows;
  std::vector<int8_t> blocks(static_cast<size_t>(tiles * group_stride));
  std::vector<int32_t> sums(static_cast<size_t>(groups * sums_stride));
  kernels.lut_tiles_to_int8(lut, k, planes, 0, tiles, Int8Panel{blocks.data(), group_stride, sums.data(), group,
                                                                sums_stride});
  for (int64_t j = 0; j < n; ++j) {
    const uint8_t* row = packed.data() + j * planes * plane;
    const auto bit = [&](int64_t kk, int p) { return (row[p * plane + kk / 8] >> (kk % 8)) & 1; };
    std::vector<int32_t> expected_sums(static_cast<size_t>(groups), 0);
    for (int64_t kk = 0; kk < padded_k; ++kk) {
      const int value = kk >= k ? 0 : planes == 1 ? 2 * bit(kk, 0) - 1 : bit(kk, 0) - bit(kk, 1);
      const int64_t at = j / kPackCols * group_stride + kk / kPackDepth * kPackBlock + j % kPackCols * kPackDepth +
                         kk % kPackDepth;
      if (blocks[static_cast<size_t>(at)] != value) {
        std::printf("int8 block mismatch at row %ld, k %ld: %d, expected %d\n", static_cast<long>(j),
                    static_cast<long>(kk), blocks[static_cast<size_t>(at)], value);
        return false;
      }
      expected_sums[static_cast<size_t>(kk / group)] += value;
    }
    for (int64_t q = 0; q < groups; ++q) {
      const int32_t got = sums[static_cast<size_t>(q * sums_stride + j)];
      if (got != expected_sums[static_cast<size_t>(q)]) {
        std::printf("int8 column sum mismatch at row %ld, group %ld of %ld values: %d, expected %d\n",
                    static_cast<long>(j), static_cast<long>(q), static_cast<long>(group), got,
                    expected_sums[static_cast<size_t>(q)]);
        return false;
      }
    }
  }
  return true;
}

// The ISA's build_tables and build_alpha_tables against build_lut_tables, bit for bit, on x
// and on x with -0, -Inf and NaN among its values (the tables are the same, not just close).
bool tables_match(const BinaryGemmKernels& kernels, std::vector<float> x, int64_t m, int64_t k) {
  for (const bool special : {false, true}) {
    if (special) {
      for (size_t i = 0; i < x.size(); i += 5) x[i] = -0.0f;
      x[x.size() / 3] = -INFINITY;
      x[x.size() / 2] = NAN;
    }
    for (const bool alpha : {false, true}) {
      const LutLayout layout = alpha ? kernels.alpha_layout : kernels.lut_layout;
      const size_t floats = static_cast<size_t>(m * layout.table_floats(k));
      std::vector<float> built(floats), expected(floats);
      (alpha ? kernels.build_alpha_tables : kernels.build_tables)(x.data(), m, k, built.data());
      build_lut_tables(layout, x.data(), m, k, expected.data());
      if (std::memcmp(built.data(), expected.data(), floats * sizeof(float)) != 0) {
        std::printf("%s differs from build_lut_tables (special values: %d)\n",
                    alpha ? "build_alpha_tables" : "build_tables", special);
        return false;
      }
    }
  }
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t m = arg(argc, argv, 1, 1), planes = arg(argc, argv, 2, 1), copies = arg(argc, argv, 3, 1);
  const int64_t n = arg(argc, argv, 4, 4096), k = arg(argc, argv, 5, 4096);
  const int threads = static_cast<int>(arg(argc, argv, 6, 1)), calls = static_cast<int>(arg(argc, argv, 7, 400));
  if (m < 1 || m > kLutMaxM || (planes != 1 && planes != 2) || copies < 1 || n < 1 || k < 1 || threads < 1 ||
      calls < 1) {
    std::fprintf(stderr, "usage: %s [m 1-%ld] [planes 1|2] [copies] [n] [k] [threads] [calls]\n", argv[0],
                 static_cast<long>(kLutMaxM));
    return 2;
  }
  // dispatch.cpp's choice, without linking every kernel family
  const BinaryGemmKernels& kernels =
      for_active_isa(binary_gemm_kernels_scalar, binary_gemm_kernels_avx2, binary_gemm_kernels_avx512);
  const LutLayout layout = kernels.lut_layout;
  const int p = static_cast<int>(planes);
  std::mt19937 rng(0);
  const std::vector<uint8_t> packed = random_packed(n, k, p, rng);
  const int64_t tiles = (n + kLutTileRows - 1) / kLutTileRows, tile_bytes = layout.tile_bytes(k, p);
  std::vector<std::vector<uint8_t>> luts(static_cast<size_t>(copies), std::vector<uint8_t>(tiles * tile_bytes));
  for (auto& lut : luts) tile_for_lut(layout, packed.data(), n, k, p, lut.data());

  std::normal_distribution<float> normal;
  std::vector<float> x(static_cast<size_t>(m * k)), tables(static_cast<size_t>(m * layout.table_floats(k)));
  for (float& v : x) v = normal(rng);
  if (!tables_match(kernels, x, m, k)) return 1;
  kernels.build_tables(x.data(), m, k, tables.data());

  const int64_t padded = tiles * kLutTileRows;
  std::vector<float> sums(static_cast<size_t>(m * padded)), expected(sums.size());
  auto run = [&](const uint8_t* lut) {
#pragma omp parallel for num_threads(threads)
    for (int t = 0; t < threads; ++t) {
      kernels.lut_sums(tables.data(), m, k, lut, tiles * t / threads, tiles * (t + 1) / threads, p, sums.data(),
                       padded);
    }
  };
  lut_sums_portable(layout, tables.data(), m, k, luts[0].data(), 0, tiles, p, expected.data(), padded);
  run(luts[0].data());
  // The kernels sum the same table entries in another order: fp32 rounding apart, equal.
  const double tolerance = 1e-4 * std::sqrt(static_cast<double>(k));
  for (size_t i = 0; i < sums.size(); ++i) {
    if (!(std::abs(sums[i] - expected[i]) <= tolerance * (1.0 + std::abs(expected[i])))) {
      std::printf("mismatch at %zu: %g, portable %g\n", i, sums[i], expected[i]);
      return 1;
    }
  }

  // One sum per row, then per groups of 16 and 128 values (binary_linear's group sizes);
  // not on the ISAs whose batches stay on the tables (no lut_tiles_to_int8).
  for (const int64_t group : {(k + kPackDepth - 1) / kPackDepth * kPackDepth, int64_t{16}, int64_t{128}}) {
    if (kernels.lut_tiles_to_int8 != nullptr &&
        !int8_blocks_match(kernels, packed, luts[0].data(), n, k, p, tiles, group)) {
      return 1;
    }
  }

  std::vector<double> times;
  for (int call = 0; call < calls; ++call) {
    const double begin = seconds();
    run(luts[static_cast<size_t>(call % copies)].data());
    times.push_back(seconds() - begin);
  }
  std::sort(times.begin(), times.end());
  const double median = times[times.size() / 2];
  std::printf("isa %s, m %ld, planes %d, %ld x %ld, %ld copies, %d threads: median %.1f us (min %.1f), %.2f G weights/s\n",
              isa_name(active_isa()), static_cast<long>(m), p, static_cast<long>(n), static_cast<long>(k),
              static_cast<long>(copies), threads, median * 1e6, times[0] * 1e6, n * k / median / 1e9);
  return 0;
}
