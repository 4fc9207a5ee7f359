// The CPU XNOR kernels alone (BinaryGemmKernels::xor_popcount), without torch, the op's glue
// or Python, every one this CPU runs in one process: AVX2, AVX-512 with popcounts by byte
// lookup, and AVX-512 with vpopcntq (binary_gemm_vpopcntdq.cpp) where the CPU has VPOPCNTDQ
// (the dispatched table holds only one of the last two). Every call is timed with each,
// in turn, so all see the same machine noise; each is checked bit for bit against the
// scalar kernel before timing (exit 1 on a mismatch). How the numbers of RESULTS.md
// "Session 24" were taken.
//
// Build (from the repository root, the extension's flags; the kernels are torch-free), with
// S=csrc/kernels/cpu:
//   g++ -O3 -std=c++20 -ffp-contract=off -fopenmp -I$S benchmarks/kernels/xnor_popcount_bench.cpp
//       $S/binary_gemm_{avx2,avx512,vpopcntdq,scalar}.cpp $S/binary_pack.cpp $S/isa.cpp -o build/xnor_popcount_bench
// Run: build/xnor_popcount_bench [m=8] [copies=1] [n=4096] [k=4096] [threads=1] [calls=200]
// (k in bits; copies > 1 rotates that many copies of the weight bits, e.g. 300 x 2 MB to
// stream 4096 x 4096 from memory; threads split 64-column blocks as the op does). Exit 3
// where the CPU has no AVX2.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include "binary_gemm.h"
#include "isa.h"

using namespace effgen::cpu;

namespace {

using XorPopcount = decltype(BinaryGemmKernels::xor_popcount);

int64_t arg(int argc, char** argv, int i, int64_t fallback) { return argc > i ? std::atoll(argv[i]) : fallback; }

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double median(std::vector<double> times) {
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

constexpr int64_t kBlockCols = 64;  // the op's column block

}  // namespace

int main(int argc, char** argv) {
  const int64_t m = arg(argc, argv, 1, 8), copies = arg(argc, argv, 2, 1);
  const int64_t n = arg(argc, argv, 3, 4096), k = arg(argc, argv, 4, 4096);
  const int threads = static_cast<int>(arg(argc, argv, 5, 1)), calls = static_cast<int>(arg(argc, argv, 6, 200));
  if (m < 1 || copies < 1 || n < 1 || k < 1 || threads < 1 || calls < 1) {
    std::fprintf(stderr, "usage: %s [m] [copies] [n] [k bits] [threads] [calls]\n", argv[0]);
    return 2;
  }
  if (best_supported_isa() < Isa::kAvx2) {
    std::printf("this CPU has no AVX2\n");
    return 3;
  }
  const int64_t row_bytes = packed_row_bytes(k);
  std::mt19937 rng(0);
  std::uniform_int_distribution<int> byte(0, 255);
  // Zero past k bits in every row, as pack_signs leaves them (they xor to zero).
  auto random_rows = [&](int64_t rows) {
    std::vector<uint8_t> bits(static_cast<size_t>(rows * row_bytes));
    for (int64_t r = 0; r < rows; ++r) {
      for (int64_t b = 0; b < row_bytes; ++b) {
        const int64_t valid = std::min<int64_t>(8, k - 8 * b);
        bits[r * row_bytes + b] = static_cast<uint8_t>(byte(rng) & ((1 << valid) - 1));
      }
    }
    return bits;
  };
  const std::vector<uint8_t> a = random_rows(m);
  std::vector<std::vector<uint8_t>> weights;
  for (int64_t c = 0; c < copies; ++c) weights.push_back(random_rows(n));

  const int64_t blocks = (n + kBlockCols - 1) / kBlockCols;
  std::vector<int32_t> out(static_cast<size_t>(m * n)), expected(out.size());
  auto run = [&](XorPopcount kernel, const std::vector<uint8_t>& b, std::vector<int32_t>& c) {
#pragma omp parallel for num_threads(threads)
    for (int t = 0; t < threads; ++t) {
      for (int64_t block = blocks * t / threads; block < blocks * (t + 1) / threads; ++block) {
        const int64_t j0 = block * kBlockCols;
        kernel(a.data(), row_bytes, b.data() + j0 * row_bytes, row_bytes, m, std::min(kBlockCols, n - j0), row_bytes,
               c.data() + j0, n);
      }
    }
  };
  struct Variant {
    const char* name;
    XorPopcount kernel;
    std::vector<double> times;
  };
  std::vector<Variant> variants{{"avx2", binary_gemm_kernels_avx2().xor_popcount, {}}};
  if (best_supported_isa() >= Isa::kAvx512) {
    variants.push_back({"avx512 byte lookup", binary_gemm_kernels_avx512_lookup().xor_popcount, {}});
  }
  if (cpu_has_avx512_vpopcntdq()) variants.push_back({"avx512 vpopcntq", xor_popcount_avx512_vpopcntdq, {}});
  run(binary_gemm_kernels_scalar().xor_popcount, weights[0], expected);
  for (Variant& v : variants) {
    std::fill(out.begin(), out.end(), -1);
    run(v.kernel, weights[0], out);
    if (out != expected) {
      std::printf("%s: mismatch with the scalar kernel\n", v.name);
      return 1;
    }
  }

  for (int call = 0; call < calls; ++call) {
    for (size_t i = 0; i < variants.size(); ++i) {
      const double begin = seconds();
      run(variants[i].kernel, weights[static_cast<size_t>((call * variants.size() + i) % copies)], out);
      variants[i].times.push_back(seconds() - begin);
    }
  }
  std::printf("%ld x %ld x %ld bits, %ld copies, %d threads:", static_cast<long>(m), static_cast<long>(n),
              static_cast<long>(k), static_cast<long>(copies), threads);
  for (const Variant& v : variants) {
    const double t = median(v.times);
    std::printf(" %s %.1f us (%.1f G weight bits/s);", v.name, t * 1e6, static_cast<double>(n * k) / t / 1e9);
  }
  std::printf("\n");
  return 0;
}
