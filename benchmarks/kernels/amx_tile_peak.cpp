// The AMX tiles' arithmetic limit on this machine: TDPBSSD (int8) and, where the CPU has
// AMX-BF16, TDPBF16PS (bf16) on tiles that stay loaded (no memory operands), 4 independent
// accumulators a thread (the 2 x 2 block of int8_gemm_amx.cpp's kernel), on every thread at
// once. No GEMM on the tiles can beat it: the yardstick for the tile kernels' efficiency
// (RESULTS.md, session 66), where `effgen bench`'s "int8 limit" is the best GEMM at hand.
//
// Build (from the repository root), with S=csrc/kernels/cpu:
//   g++ -O2 -std=c++20 -fopenmp -I$S benchmarks/kernels/amx_tile_peak.cpp $S/isa.cpp
//       -o build/amx_tile_peak
// Run: build/amx_tile_peak [threads=1] [rounds=500000]
// Prints one line per data type; exits 3 where the CPU or OS has no AMX.
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>

#include "amx_tiles.h"
#include "isa.h"

#pragma GCC target("amx-tile,amx-int8,amx-bf16")

namespace {

using effgen::cpu::amx::TileConfig;

// Tiles 0-3 accumulate, 4-5 are A, 6-7 are B, all 16 rows x 64 bytes.
void configure_whole_tiles() {
  TileConfig config;
  for (int t = 0; t < effgen::cpu::amx::kTiles; ++t) {
    config.rows[t] = effgen::cpu::amx::kMaxRows;
    config.colsb[t] = effgen::cpu::amx::kMaxRowBytes;
  }
  EFFGEN_TILE_CONFIGURE(config);  // amx_tiles.h's macros: GCC could drop the stores they read
  alignas(64) static const int8_t ones[effgen::cpu::amx::kMaxRows * effgen::cpu::amx::kMaxRowBytes] = {1};
  EFFGEN_TILE_LOAD(4, ones, 64);
  EFFGEN_TILE_LOAD(5, ones, 64);
  EFFGEN_TILE_LOAD(6, ones, 64);
  EFFGEN_TILE_LOAD(7, ones, 64);
}

bool has_amx_bf16() {
  unsigned eax, ebx, ecx, edx;
  return __get_cpuid_count(7, 0, &eax, &ebx, &ecx, &edx) && (edx >> 22 & 1) != 0;  // CPUID.(7,0):EDX[22]
}

// Seconds for `rounds` rounds of 4 tile products on each of `threads` threads.
template <bool kBf16>
double time_products(int threads, long rounds) {
  const auto begin = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads)
  {
    configure_whole_tiles();
    for (long i = 0; i < rounds; ++i) {
      if constexpr (kBf16) {
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(1, 4, 7);
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      } else {
        EFFGEN_TILE_DPBSSD(0, 4, 6);
        EFFGEN_TILE_DPBSSD(1, 4, 7);
        EFFGEN_TILE_DPBSSD(2, 5, 6);
        EFFGEN_TILE_DPBSSD(3, 5, 7);
      }
    }
    EFFGEN_TILE_RELEASE();
  }
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - begin).count();
}

// The best of three timings, as ops (2 per multiply-add) per second.
template <bool kBf16>
void report(int threads, long rounds) {
  constexpr double kMultiplyAdds = 16.0 * 16 * (kBf16 ? 32 : 64);  // one TDP on whole tiles
  double best = 1e300;
  for (int trial = 0; trial < 3; ++trial) best = std::min(best, time_products<kBf16>(threads, rounds));
  const double gops = 2 * kMultiplyAdds * 4 * static_cast<double>(rounds) * threads / best / 1e9;
  std::printf("amx %s tile peak, %d threads: %.0f GOP/s (%.0f a thread, %.2f ns a product)\n", kBf16 ? "bf16" : "int8",
              threads, gops, gops / threads, best / (4.0 * static_cast<double>(rounds)) * 1e9);
}

}  // namespace

int main(int argc, char** argv) {
  const int threads = argc > 1 ? std::atoi(argv[1]) : 1;
  const long rounds = argc > 2 ? std::atol(argv[2]) : 500000;
  if (threads < 1 || rounds < 1) {
    std::fprintf(stderr, "usage: %s [threads >= 1] [rounds >= 1]\n", argv[0]);
    return 2;
  }
  if (effgen::cpu::best_supported_isa() != effgen::cpu::Isa::kAmx) {  // also asks Linux for the tile state
    std::printf("no AMX on this CPU or OS\n");
    return 3;
  }
  report<false>(threads, rounds);
  if (has_amx_bf16()) report<true>(threads, rounds);
  return 0;
}
