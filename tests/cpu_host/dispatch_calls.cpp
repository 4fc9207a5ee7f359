// dispatch.cpp's choice of kernel tables, built against stand-in getters that count their
// calls: with each level this CPU runs active, each family must call its getter for that
// level and no other. A getter of a level the CPU lacks is compiled for that level and may
// run its instructions (int8_gemm_kernels_amx's static table was built with AVX-512 moves),
// which such a CPU traps as illegal. Prints one line per level and exits 0, or names the
// first wrong call and exits 1. x86-64 only.
#include <cstdio>
#include <map>
#include <string>

#include "binary_gemm.h"
#include "compress.h"
#include "int8_gemm.h"
#include "isa.h"
#include "quant.h"

namespace effgen::cpu {

std::map<std::string, int> calls;  // "family level" -> calls since the last check

#define STAND_IN_GETTERS(Table, family)                                                  \
  const Table& family##_kernels_scalar() { return count<Table>(#family " scalar"); }    \
  const Table& family##_kernels_avx2() { return count<Table>(#family " avx2"); }        \
  const Table& family##_kernels_avx512() { return count<Table>(#family " avx512"); }

template <typename Table>
const Table& count(const char* name) {
  static const Table table{};
  ++calls[name];
  return table;
}

STAND_IN_GETTERS(QuantKernels, quant)
STAND_IN_GETTERS(Int8GemmKernels, int8_gemm)
STAND_IN_GETTERS(CompressKernels, compress)
STAND_IN_GETTERS(BinaryGemmKernels, binary_gemm)
const Int8GemmKernels& int8_gemm_kernels_amx() { return count<Int8GemmKernels>("int8_gemm amx"); }

}  // namespace effgen::cpu

using namespace effgen::cpu;

// The level whose table a family runs: AMX machines run the AVX-512 tables of the families
// without AMX kernels.
std::string table_level(const std::string& family, Isa isa) {
  if (isa == Isa::kAmx && family != "int8_gemm") return "avx512";
  return isa_name(isa);
}

int main() {
  for (const std::string& name : supported_isa_names()) {
    const Isa isa = isa_from_name(name);
    set_active_isa(isa);
    calls.clear();
    quant_kernels();
    int8_gemm_kernels();
    compress_kernels();
    binary_gemm_kernels();
    for (const char* family : {"quant", "int8_gemm", "compress", "binary_gemm"}) {
      const std::string expected = std::string(family) + " " + table_level(family, isa);
      for (const auto& [called, count] : calls) {
        const bool family_call = called.rfind(std::string(family) + " ", 0) == 0;
        if (family_call && (called != expected || count != 1)) {
          std::printf("%s active: %s called %d times (expected only %s, once)\n", name.c_str(), called.c_str(),
                      count, expected.c_str());
          return 1;
        }
      }
      if (calls[expected] != 1) {
        std::printf("%s active: %s not called\n", name.c_str(), expected.c_str());
        return 1;
      }
    }
    std::printf("%s: each family called its own table's getter, once\n", name.c_str());
  }
  return 0;
}
