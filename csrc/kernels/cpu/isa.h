// CPU instruction-set levels and the run-time choice between them. Torch-free.
#pragma once
#include <string>
#include <vector>

// The AVX2 / AVX-512 / AMX kernels exist only in x86-64 builds, the NEON ones only in
// aarch64 builds (setup.py leaves the other architecture's sources out); the portable
// scalar kernels are built everywhere.
#if defined(__x86_64__) || defined(_M_X64)
#define EFFGEN_X86 1
#elif defined(__aarch64__)
#define EFFGEN_AARCH64 1
#endif

namespace effgen::cpu {

// The levels of one architecture, each implying the ones before it: scalar, avx2, avx512,
// amx on x86-64; scalar, neon (Advanced SIMD with the dot product instructions, ARMv8.2's
// dotprod) on aarch64. Compare levels only through the helpers below.
enum class Isa { kScalar, kAvx2, kAvx512, kAmx, kNeon };

// AVX-512 tables run (kAvx512, and kAmx for the families without AMX kernels).
inline bool runs_avx512(Isa isa) { return isa == Isa::kAvx512 || isa == Isa::kAmx; }

const char* isa_name(Isa isa);
// Throws std::invalid_argument for an unknown name.
Isa isa_from_name(const std::string& name);

// The best level this CPU and OS support (cpuid + xgetbv; AMX also needs the Linux
// permission request for the tile data state, made here once).
Isa best_supported_isa();
std::vector<std::string> supported_isa_names();
// AVX-512 VPOPCNTDQ, an extension within the avx512 level (the XNOR kernel uses it).
bool cpu_has_avx512_vpopcntdq();
// Whether the int8 GEMMs prefetch the next block's weights while a block computes
// (PrefetchRange): measured faster on AMD Zen 5 (+11-24% at 24-32 rows, weights from
// memory) but 10-30% slower on an Intel Xeon with AMX at 1-16 rows, whose own prefetchers
// already keep the current block's streams busy; so on AMD CPUs only.
bool prefetch_next_weights();

// The level kernels dispatch on: EFFGEN_CPU_ISA if set (an unsupported or unknown value
// is an error), else best_supported_isa(). Decided once, changeable by set_active_isa
// so tests and benchmarks can run every path in one process.
Isa active_isa();
// Throws std::invalid_argument if the CPU cannot run `isa`.
void set_active_isa(Isa isa);

// The kernel table of the active ISA; AMX machines run the AVX-512 tables of the families
// without AMX kernels. It takes the tables' getters and calls only the chosen one: a getter
// is compiled for its own ISA and may run its instructions (a static table built with
// AVX-512 moves, say), which a CPU without that ISA traps as illegal.
template <typename Table>
using TableGetter = const Table& (*)();

template <typename Table>
const Table& for_active_isa(TableGetter<Table> scalar, TableGetter<Table> avx2, TableGetter<Table> avx512) {
  switch (active_isa()) {
    case Isa::kAmx:
    case Isa::kAvx512: return avx512();
    case Isa::kAvx2: return avx2();
    case Isa::kScalar:
    case Isa::kNeon: break;
  }
  return scalar();
}

// The same for a family with AMX kernels.
template <typename Table>
const Table& for_active_isa(TableGetter<Table> scalar, TableGetter<Table> avx2, TableGetter<Table> avx512,
                            TableGetter<Table> amx) {
  return active_isa() == Isa::kAmx ? amx() : for_active_isa(scalar, avx2, avx512);
}

}  // namespace effgen::cpu
