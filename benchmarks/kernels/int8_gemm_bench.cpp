// The CPU int8 GEMM on packed weights alone (Int8GemmKernels::gemm_packed of the dispatched
// ISA, or w8a16_packed_grouped), without torch, the op's glue or Python: how the numbers of RESULTS.md "Session 23"
// were taken. It computes the output in 64-column blocks split over threads the way
// csrc/ops/int8_gemm.cpp does, and times every call twice, alternately: without and with
// the next block's weights prefetched (PrefetchRange), so both see the same machine noise.
// The result is checked bit for bit against the scalar kernels before timing (exit 1 on
// mismatch), and so is gemm_packed_scaled's (products through the fused epilogue).
//
// Build (from the repository root, the extension's flags; the kernels are torch-free), with
// S=csrc/kernels/cpu:
//   g++ -O3 -std=c++20 -ffp-contract=off -fopenmp -I$S benchmarks/kernels/int8_gemm_bench.cpp
//       $S/int8_gemm_{amx,avx2,avx512,scalar}.cpp $S/int8_pack.cpp $S/isa.cpp -o build/int8_gemm_bench
// With -DEFFGEN_AMX_EMULATE it runs the AMX kernel on emulated tiles (amx_tiles.h) on any
// CPU, the other ISAs' kernels not needed: only for checking, its times mean nothing.
// Run: build/int8_gemm_bench [m=64] [copies=1] [n=4096] [k=4096] [threads=1] [calls=100]
//   [group=0]
// (copies > 1 rotates that many copies of the packed weights, e.g. 30 x 16 MB to stream
// 4096 x 4096 from memory; group > 0 times W8A16's per-group kernel, w8a16_packed_grouped,
// on m tokens of 2 digit rows instead; EFFGEN_CPU_ISA picks the ISA).
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <random>
#include <string>
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

// The blocks [block0, block1) of the output with `kernels`: int32 products (group 0) or
// W8A16 per-group totals of 2-limb digit rows (group > 0), the next block prefetched or not.
struct Problem {
  int64_t m, n, k, group;
  const int8_t* a;           // m rows, or 2 m digit rows for W8A16
  std::vector<int32_t> sums;  // column sums, group-major for W8A16
  std::vector<float> scales;  // W8A16: [groups, kBlockCols], the same for every block
  int64_t group_stride() const { return (k + kPackDepth - 1) / kPackDepth * kPackBlock; }

  void blocks(const Int8GemmKernels& kernels, const int8_t* b, bool prefetch, int64_t block0, int64_t block1,
              int32_t* products, float* totals) const {
    std::vector<int32_t> acc(static_cast<size_t>(m * kBlockCols));
    std::vector<float> block_totals(acc.size());
    for (int64_t block = block0; block < block1; ++block) {
      const int64_t j0 = block * kBlockCols, nb = std::min(kBlockCols, n - j0);
      const PrefetchRange next = packed_columns(b, group_stride(), j0 + nb, prefetch ? std::min(nb, n - j0 - nb) : 0);
      const int8_t* panel = b + j0 / kPackCols * group_stride();
      if (group == 0) {
        kernels.gemm_packed(a, k, m, k, panel, group_stride(), sums.data() + j0, nb, acc.data(), kBlockCols, next);
        for (int64_t i = 0; i < m; ++i) std::copy_n(acc.data() + i * kBlockCols, nb, products + i * n + j0);
      } else {
        const W8A16GroupedArgs args{a, m, 2, k, group, panel, group_stride(), sums.data() + j0, n, scales.data(),
                                    kBlockCols, nb, block_totals.data(), kBlockCols, next};
        kernels.w8a16_packed_grouped(args);
        for (int64_t i = 0; i < m; ++i) std::copy_n(block_totals.data() + i * kBlockCols, nb, totals + i * n + j0);
      }
    }
    if (kernels.release_tiles != nullptr) kernels.release_tiles();  // as the op does after a thread's blocks
  }
};

// gemm_packed_scaled over the whole output (where the ISA has one), for rows taken as
// tokens of 1, 2 or 3 digit rows (W8A8, W8A16's fixed point), fp32 out with a bias, against
// the scalar epilogue of the scalar products: bit for bit.
bool scaled_matches(const Int8GemmKernels& kernels, const Problem& p, const int8_t* b,
                    const std::vector<int32_t>& expected_products) {
  if (kernels.gemm_packed_scaled == nullptr || p.group != 0) return true;
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> value(0.5f, 2.0f);
  std::vector<float> a_scale(static_cast<size_t>(p.m)), b_scale(static_cast<size_t>(p.n)), bias(b_scale.size());
  for (std::vector<float>* v : {&a_scale, &b_scale, &bias}) {
    std::generate(v->begin(), v->end(), [&] { return value(rng); });
  }
  const Int8GemmKernels& scalar = int8_gemm_kernels_scalar();
  for (int limbs = 1; limbs <= 3; ++limbs) {
    if (p.m % limbs != 0) continue;
    const int64_t tokens = p.m / limbs;
    std::vector<float> out(static_cast<size_t>(tokens * p.n)), expected(out.size());
    const ScaledOutput scaled{a_scale.data(), 1, b_scale.data(), 1, bias.data(), DType::kF32, out.data(), p.n, limbs};
    if (!kernels.gemm_packed_scaled(p.a, p.k, p.m, p.k, b, p.group_stride(), p.sums.data(), p.n, scaled, {})) continue;
    for (int64_t t = 0; t < tokens; ++t) {
      const int32_t* products = expected_products.data() + t * limbs * p.n;
      float* row = expected.data() + t * p.n;
      if (limbs == 1) {
        scalar.epilogue_row(products, p.n, a_scale[t], b_scale.data(), 1, bias.data(), DType::kF32, row);
      } else {
        scalar.digits_epilogue_row(products, p.n, limbs, p.n, a_scale[t], b_scale.data(), bias.data(), DType::kF32,
                                   row);
      }
    }
    if (std::memcmp(out.data(), expected.data(), out.size() * sizeof(float)) != 0) return false;
  }
  if (kernels.release_tiles != nullptr) kernels.release_tiles();
  return true;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t m = arg(argc, argv, 1, 64), copies = arg(argc, argv, 2, 1);
  const int64_t n = arg(argc, argv, 3, 4096), k = arg(argc, argv, 4, 4096);
  const int threads = static_cast<int>(arg(argc, argv, 5, 1)), calls = static_cast<int>(arg(argc, argv, 6, 100));
  const int64_t group = arg(argc, argv, 7, 0);
  if (m < 1 || copies < 1 || n < 1 || k < 1 || k > kMaxExactInt8K || threads < 1 || calls < 1 || group < 0 ||
      group % kPackDepth != 0) {
    std::fprintf(stderr, "usage: %s [m] [copies] [n] [k <= %ld] [threads] [calls] [W8A16 group, a multiple of 4]\n",
                 argv[0], static_cast<long>(kMaxExactInt8K));
    return 2;
  }
#ifdef EFFGEN_AMX_EMULATE
  const Int8GemmKernels& kernels = int8_gemm_kernels_amx();
  const std::string isa = "amx (emulated tiles)";
#else
  // dispatch.cpp's choice, without linking every kernel family
  const Int8GemmKernels& kernels = for_active_isa(int8_gemm_kernels_scalar, int8_gemm_kernels_avx2,
                                                  int8_gemm_kernels_avx512, int8_gemm_kernels_amx);
  const std::string isa = isa_name(active_isa());
#endif
  std::mt19937 rng(0);
  std::uniform_int_distribution<int> byte(-127, 127);  // as the library's symmetric quantizers give (-128 sends AVX2's few-row sign trick to its exact fallback)
  std::vector<int8_t> w(static_cast<size_t>(n * k));
  for (int8_t& v : w) v = static_cast<int8_t>(byte(rng));
  const int64_t rows = group == 0 ? m : 2 * m, k_groups = group == 0 ? 1 : (k + group - 1) / group;
  const AlignedBytes a = aligned_bytes(rows * k);
  for (int64_t i = 0; i < rows * k; ++i) a.get()[i] = static_cast<int8_t>(byte(rng));
  Problem problem{m, n, k, group, a.get(), std::vector<int32_t>(static_cast<size_t>(k_groups * n)), {}};
  std::uniform_real_distribution<float> scale(0.5f, 1.0f);
  for (int64_t i = 0; i < (group == 0 ? 0 : k_groups * kBlockCols); ++i) problem.scales.push_back(scale(rng));

  std::vector<AlignedBytes> packed;
  for (int64_t c = 0; c < copies; ++c) {
    packed.push_back(aligned_bytes((n + kPackCols - 1) / kPackCols * problem.group_stride()));
    pack_int8_weight(w.data(), k, n, k, group == 0 ? k : group, k_groups, 0, (n + kPackCols - 1) / kPackCols,
                     packed.back().get(), problem.sums.data());
  }

  const int64_t blocks = (n + kBlockCols - 1) / kBlockCols;
  std::vector<int32_t> products(static_cast<size_t>(m * n)), expected_products(products.size());
  std::vector<float> totals(products.size()), expected_totals(products.size());
  auto run = [&](const Int8GemmKernels& table, const int8_t* b, bool prefetch, int32_t* products_out,
                 float* totals_out) {
#pragma omp parallel for num_threads(threads)
    for (int t = 0; t < threads; ++t) {
      problem.blocks(table, b, prefetch, blocks * t / threads, blocks * (t + 1) / threads, products_out, totals_out);
    }
  };
  run(int8_gemm_kernels_scalar(), packed[0].get(), false, expected_products.data(), expected_totals.data());
  for (bool prefetch : {false, true}) {
    run(kernels, packed[0].get(), prefetch, products.data(), totals.data());
    // Bit for bit: the int32 products exactly, the W8A16 totals by the same float operations.
    if (products != expected_products || std::memcmp(totals.data(), expected_totals.data(), totals.size() * 4) != 0) {
      std::printf("mismatch with the scalar kernel (prefetch %d)\n", prefetch);
      return 1;
    }
  }
  if (!scaled_matches(kernels, problem, packed[0].get(), expected_products)) {
    std::printf("gemm_packed_scaled: mismatch with the scalar kernel's products and epilogue\n");
    return 1;
  }

  std::vector<double> times[2];
  for (int call = 0; call < calls; ++call) {
    for (bool prefetch : {false, true}) {
      const double begin = seconds();
      run(kernels, packed[static_cast<size_t>((2 * call + prefetch) % copies)].get(), prefetch, products.data(),
          totals.data());
      times[prefetch].push_back(seconds() - begin);
    }
  }
  const double ops = 2.0 * static_cast<double>(m) * static_cast<double>(n) * static_cast<double>(k);
  std::printf("isa %s, %ld x %ld x %ld, %s, %ld copies, %d threads: median %.1f us (%.0f GOP/s) without prefetch, "
              "%.1f us (%.0f GOP/s) with\n",
              isa.c_str(), static_cast<long>(m), static_cast<long>(n), static_cast<long>(k),
              group == 0 ? "W8A8" : ("W8A16 group " + std::to_string(group)).c_str(), static_cast<long>(copies),
              threads, median(times[0]) * 1e6, ops / median(times[0]) / 1e9, median(times[1]) * 1e6,
              ops / median(times[1]) / 1e9);
  return 0;
}
