// The CPU int8 GEMM on packed weights alone (Int8GemmKernels::gemm_packed of the dispatched
// ISA), without torch, the op's glue or Python: how the numbers of RESULTS.md "Session 23"
// were taken. It computes the output in 64-column blocks split over threads the way
// csrc/ops/int8_gemm.cpp does, and times every call twice, alternately: without and with
// the next block's weights prefetched (PrefetchRange), so both see the same machine noise.
// The result is checked against the scalar kernel on canonical weights before timing (exit
// 1 on mismatch).
//
// Build (from the repository root, the extension's flags; the kernels are torch-free), with
// S=csrc/kernels/cpu:
//   g++ -O3 -std=c++20 -ffp-contract=off -fopenmp -I$S benchmarks/kernels/int8_gemm_bench.cpp
//       $S/int8_gemm_{avx2,avx512,scalar}.cpp $S/int8_pack.cpp $S/isa.cpp -o build/int8_gemm_bench
// Run: build/int8_gemm_bench [m=64] [copies=1] [n=4096] [k=4096] [threads=1] [calls=100]
// (copies > 1 rotates that many copies of the packed weights, e.g. 30 x 16 MB to stream
// 4096 x 4096 from memory; EFFGEN_CPU_ISA picks the ISA).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <random>
#include <vector>

#include "int8_gemm.h"
#include "isa.h"

using namespace effgen::cpu;

namespace {

int64_t arg(int argc, char** argv, int i, int64_t fallback) { return argc > i ? std::atoll(argv[i]) : fallback; }

double seconds() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// 64-byte aligned like torch's CPU tensors: a packed block straddling two cache lines would
// cost the kernel a split load per vector.
struct Free {
  void operator()(int8_t* p) const { std::free(p); }
};
using AlignedBytes = std::unique_ptr<int8_t, Free>;
AlignedBytes aligned_bytes(int64_t bytes) {
  return AlignedBytes(static_cast<int8_t*>(std::aligned_alloc(64, static_cast<size_t>((bytes + 63) / 64 * 64))));
}

constexpr int64_t kBlockCols = 64;  // the op's kBlockN

double median(std::vector<double> times) {
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t m = arg(argc, argv, 1, 64), copies = arg(argc, argv, 2, 1);
  const int64_t n = arg(argc, argv, 3, 4096), k = arg(argc, argv, 4, 4096);
  const int threads = static_cast<int>(arg(argc, argv, 5, 1)), calls = static_cast<int>(arg(argc, argv, 6, 100));
  if (m < 1 || copies < 1 || n < 1 || k < 1 || k > kMaxExactInt8K || threads < 1 || calls < 1) {
    std::fprintf(stderr, "usage: %s [m] [copies] [n] [k <= %ld] [threads] [calls]\n", argv[0],
                 static_cast<long>(kMaxExactInt8K));
    return 2;
  }
  // dispatch.cpp's choice, without linking every kernel family
  const Int8GemmKernels& kernels =
      for_active_isa(int8_gemm_kernels_scalar(), int8_gemm_kernels_avx2(), int8_gemm_kernels_avx512());
  std::mt19937 rng(0);
  std::uniform_int_distribution<int> byte(-128, 127);
  std::vector<int8_t> w(static_cast<size_t>(n * k));
  for (int8_t& v : w) v = static_cast<int8_t>(byte(rng));
  const AlignedBytes a = aligned_bytes(m * k);
  for (int64_t i = 0; i < m * k; ++i) a.get()[i] = static_cast<int8_t>(byte(rng));

  const int64_t group_stride = (k + kPackDepth - 1) / kPackDepth * kPackBlock, groups = (n + kPackCols - 1) / kPackCols;
  std::vector<int32_t> sums(static_cast<size_t>(n));
  std::vector<AlignedBytes> packed;
  for (int64_t c = 0; c < copies; ++c) {
    packed.push_back(aligned_bytes(groups * group_stride));
    pack_int8_weight(w.data(), k, n, k, k, 1, 0, groups, packed.back().get(), sums.data());
  }

  const int64_t blocks = (n + kBlockCols - 1) / kBlockCols;
  std::vector<int32_t> out(static_cast<size_t>(m * n));
  auto run = [&](const int8_t* b, bool prefetch) {
#pragma omp parallel for num_threads(threads)
    for (int t = 0; t < threads; ++t) {
      std::vector<int32_t> acc(static_cast<size_t>(m * kBlockCols));
      const int64_t last = blocks * (t + 1) / threads;
      for (int64_t block = blocks * t / threads; block < last; ++block) {
        const int64_t j0 = block * kBlockCols, nb = std::min(kBlockCols, n - j0);
        const int64_t next_cols = prefetch ? std::min(nb, n - j0 - nb) : 0;
        const PrefetchRange next{b + (j0 + nb) / kPackCols * group_stride,
                                 (next_cols + kPackCols - 1) / kPackCols * group_stride};
        kernels.gemm_packed(a.get(), k, m, k, b + j0 / kPackCols * group_stride, group_stride, sums.data() + j0, nb,
                            acc.data(), kBlockCols, next);
        for (int64_t i = 0; i < m; ++i) std::copy_n(acc.data() + i * kBlockCols, nb, out.data() + i * n + j0);
      }
    }
  };
  std::vector<int32_t> expected(out.size());
  int8_gemm_kernels_scalar().gemm_s8s8s32(a.get(), k, w.data(), k, m, n, k, expected.data(), n);
  for (bool prefetch : {false, true}) {
    run(packed[0].get(), prefetch);
    if (out != expected) {
      std::printf("mismatch with the scalar kernel (prefetch %d)\n", prefetch);
      return 1;
    }
  }

  std::vector<double> times[2];
  for (int call = 0; call < calls; ++call) {
    for (bool prefetch : {false, true}) {
      const double begin = seconds();
      run(packed[static_cast<size_t>((2 * call + prefetch) % copies)].get(), prefetch);
      times[prefetch].push_back(seconds() - begin);
    }
  }
  const double ops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  std::printf("isa %s, %ld x %ld x %ld, %ld copies, %d threads: median %.1f us (%.0f GOP/s) without prefetch, "
              "%.1f us (%.0f GOP/s) with\n",
              isa_name(active_isa()), static_cast<long>(m), static_cast<long>(n), static_cast<long>(k),
              static_cast<long>(copies), threads, median(times[0]) * 1e6, ops / median(times[0]) / 1e9,
              median(times[1]) * 1e6, ops / median(times[1]) / 1e9);
  return 0;
}
