#include "isa.h"

#include <atomic>
#include <cstdlib>
#include <iterator>
#include <stdexcept>

#ifdef EFFGEN_X86
#include <cpuid.h>
#include <sys/syscall.h>
#include <unistd.h>
#elif defined(EFFGEN_AARCH64) && defined(__linux__)
#include <asm/hwcap.h>
#include <sys/auxv.h>
#endif

namespace effgen::cpu {
namespace {

// This build's levels, lowest first (isa.h).
#ifdef EFFGEN_X86
constexpr Isa kLevels[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAmx};
#elif defined(EFFGEN_AARCH64)
constexpr Isa kLevels[] = {Isa::kScalar, Isa::kNeon};
#else
constexpr Isa kLevels[] = {Isa::kScalar};
#endif
constexpr Isa kAllIsas[] = {Isa::kScalar, Isa::kAvx2, Isa::kAvx512, Isa::kAmx, Isa::kNeon};

// isa's place in kLevels, or -1 where this build has no kernels for it.
int level(Isa isa) {
  for (int i = 0; i < static_cast<int>(std::size(kLevels)); ++i) {
    if (kLevels[i] == isa) return i;
  }
  return -1;
}

bool supported(Isa isa) { return level(isa) >= 0 && level(isa) <= level(best_supported_isa()); }

#ifdef EFFGEN_X86
struct CpuidLeaf7 {
  unsigned ebx = 0, ecx = 0, edx = 0;
};

CpuidLeaf7 cpuid_leaf7() {
  CpuidLeaf7 r;
  unsigned eax = 0;
  if (__get_cpuid_max(0, nullptr) >= 7) __cpuid_count(7, 0, eax, r.ebx, r.ecx, r.edx);
  return r;
}

unsigned long long xgetbv0() {
  unsigned eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<unsigned long long>(edx) << 32) | eax;
}

bool os_saves_avx512_state() {
  unsigned eax = 0, ebx = 0, ecx = 0, edx = 0;
  __cpuid(1, eax, ebx, ecx, edx);
  const bool osxsave = (ecx >> 27) & 1;
  // XCR0 bits 1,2 (SSE, AVX) and 5,6,7 (opmask, ZMM_Hi256, Hi16_ZMM).
  return osxsave && (xgetbv0() & 0xE6) == 0xE6;
}

// Linux keeps the 8 KB AMX tile state off until a process asks for it.
bool request_amx_permission() {
  constexpr long kArchReqXcompPerm = 0x1023;
  constexpr long kXfeatureXtiledata = 18;
  return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
}
#endif

Isa detect_best() {
#ifdef EFFGEN_X86
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
                    __builtin_cpu_supports("f16c");
  if (!avx2) return Isa::kScalar;
  const bool avx512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni") &&
                      os_saves_avx512_state();
  if (!avx512) return Isa::kAvx2;
  const CpuidLeaf7 leaf7 = cpuid_leaf7();
  const bool amx_tile = (leaf7.edx >> 24) & 1, amx_int8 = (leaf7.edx >> 25) & 1;
  if (amx_tile && amx_int8 && request_amx_permission()) return Isa::kAmx;
  return Isa::kAvx512;
#elif defined(EFFGEN_AARCH64) && defined(__linux__)
  // Advanced SIMD is part of every aarch64 CPU; the NEON kernels also need SDOT (ARMv8.2's
  // optional dotprod, in every Neoverse, Graviton 2 on, Apple M1 on, Cortex-A76 on).
  return (getauxval(AT_HWCAP) & HWCAP_ASIMDDP) != 0 ? Isa::kNeon : Isa::kScalar;
#else
  return Isa::kScalar;
#endif
}

Isa initial_isa() {
  const Isa best = best_supported_isa();
  const char* env = std::getenv("EFFGEN_CPU_ISA");
  if (env == nullptr || *env == '\0') return best;
  const Isa wanted = isa_from_name(env);
  if (!supported(wanted)) {
    throw std::invalid_argument(std::string("EFFGEN_CPU_ISA=") + env + " but this CPU supports at most " +
                                isa_name(best));
  }
  return wanted;
}

std::atomic<int>& active_slot() {
  static std::atomic<int> slot{static_cast<int>(initial_isa())};
  return slot;
}

}  // namespace

bool prefetch_next_weights() {
#ifdef EFFGEN_X86
  static const bool amd = [] {
    __builtin_cpu_init();
    return __builtin_cpu_is("amd") != 0;
  }();
  return amd;
#else
  return false;
#endif
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case Isa::kScalar: return "scalar";
    case Isa::kAvx2: return "avx2";
    case Isa::kAvx512: return "avx512";
    case Isa::kAmx: return "amx";
    case Isa::kNeon: return "neon";
  }
  return "unknown";
}

Isa isa_from_name(const std::string& name) {
  for (Isa isa : kAllIsas) {
    if (name == isa_name(isa)) return isa;
  }
  throw std::invalid_argument("unknown CPU ISA '" + name + "' (expected scalar, avx2, avx512, amx or neon)");
}

Isa best_supported_isa() {
  static const Isa best = detect_best();
  return best;
}

bool cpu_has_avx512_vpopcntdq() {
#ifdef EFFGEN_X86
  static const bool has = runs_avx512(best_supported_isa()) && __builtin_cpu_supports("avx512vpopcntdq");
  return has;
#else
  return false;
#endif
}

std::vector<std::string> supported_isa_names() {
  std::vector<std::string> names;
  for (int i = 0; i <= level(best_supported_isa()); ++i) names.push_back(isa_name(kLevels[i]));
  return names;
}

Isa active_isa() { return static_cast<Isa>(active_slot().load(std::memory_order_relaxed)); }

void set_active_isa(Isa isa) {
  if (!supported(isa)) {
    throw std::invalid_argument(std::string("cannot use CPU ISA '") + isa_name(isa) + "': this CPU supports at most " +
                                isa_name(best_supported_isa()));
  }
  active_slot().store(static_cast<int>(isa), std::memory_order_relaxed);
}

}  // namespace effgen::cpu
