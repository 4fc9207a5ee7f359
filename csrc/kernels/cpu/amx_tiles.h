// The AMX tile operations of the int8 GEMM (int8_gemm_amx.cpp), as statement macros: the
// intrinsics paste the tile number into the instruction, so it must be a literal.
// Built with EFFGEN_AMX_EMULATE they run on a scalar model of the tiles instead, which also
// enforces the architecture's rules (configured shapes, TDPBSSD's operand shapes: where the
// hardware faults, the model aborts). benchmarks/kernels/int8_gemm_bench.cpp is built that
// way by its test, so the kernel's logic is checked on CPUs without AMX.
#pragma once
#include <cstdint>

namespace effgen::cpu::amx {

constexpr int kTiles = 8;           // palette 1
constexpr int kMaxRows = 16;        // rows of a tile
constexpr int kMaxRowBytes = 64;    // bytes of a tile row

// LDTILECFG's 64-byte operand, palette 1: tile t has rows[t] rows of colsb[t] bytes; an
// unused tile has neither.
struct alignas(64) TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};
static_assert(sizeof(TileConfig) == 64, "LDTILECFG reads exactly 64 bytes");

}  // namespace effgen::cpu::amx

#ifdef EFFGEN_AMX_EMULATE
#include <cstdio>
#include <cstdlib>
#include <cstring>

namespace effgen::cpu::amx {

class EmulatedTiles {
 public:
  void configure(const TileConfig& config) {
    require(config.palette == 1 && config.start_row == 0, "palette 1, starting at row 0");
    for (int t = 0; t < 16; ++t) {
      require(config.rows[t] <= kMaxRows && config.colsb[t] <= kMaxRowBytes, "tile within 16 rows x 64 bytes");
      require((config.rows[t] == 0) == (config.colsb[t] == 0), "a tile has rows and bytes, or neither");
      require(t < kTiles || config.rows[t] == 0, "palette 1 has 8 tiles");
    }
    config_ = config;
    configured_ = true;
    std::memset(data_, 0, sizeof data_);  // LDTILECFG zeroes every tile
  }
  void zero(int t) {
    usable(t);
    std::memset(data_[t], 0, sizeof data_[t]);
  }
  void load(int t, const void* base, int64_t stride) {
    zero(t);
    for (int r = 0; r < config_.rows[t]; ++r) {
      std::memcpy(data_[t][r], static_cast<const char*>(base) + r * stride, config_.colsb[t]);
    }
  }
  void store(int t, void* base, int64_t stride) const {
    usable(t);
    for (int r = 0; r < config_.rows[t]; ++r) {
      std::memcpy(static_cast<char*>(base) + r * stride, data_[t][r], config_.colsb[t]);
    }
  }
  // TDPBSSD c, a, b: c[i] dword j += sum over dwords q of a's row i and 4 bytes p:
  //   a[i][4q + p] * b[q][4j + p], signed bytes, int32 wrapping.
  void dpbssd(int c, int a, int b) {
    usable(c), usable(a), usable(b);
    require(c != a && c != b && a != b, "three different tiles");
    require(config_.colsb[a] % 4 == 0 && config_.colsb[b] % 4 == 0 && config_.colsb[c] % 4 == 0, "whole dwords");
    require(config_.colsb[c] == config_.colsb[b], "c has b's columns");
    require(config_.rows[c] == config_.rows[a], "c has a's rows");
    require(config_.colsb[a] / 4 == config_.rows[b], "a's dwords are b's rows");
    for (int i = 0; i < config_.rows[c]; ++i) {
      for (int j = 0; j < config_.colsb[c] / 4; ++j) {
        uint32_t sum = dword(c, i, j);
        for (int q = 0; q < config_.colsb[a] / 4; ++q) {
          for (int p = 0; p < 4; ++p) {
            const int32_t x = static_cast<int8_t>(data_[a][i][4 * q + p]), y = static_cast<int8_t>(data_[b][q][4 * j + p]);
            sum += static_cast<uint32_t>(x * y);
          }
        }
        std::memcpy(&data_[c][i][4 * j], &sum, 4);
      }
    }
  }
  void release() { configured_ = false; }
  // STTILECFG: the configuration in force, or all zeros (palette 0) after a release.
  void store_config(TileConfig* out) const {
    if (configured_) {
      *out = config_;
    } else {
      std::memset(static_cast<void*>(out), 0, sizeof *out);
    }
  }

 private:
  uint32_t dword(int t, int row, int j) const {
    uint32_t v;
    std::memcpy(&v, &data_[t][row][4 * j], 4);
    return v;
  }
  void usable(int t) const { require(configured_ && t >= 0 && t < kTiles && config_.rows[t] != 0, "a configured tile"); }
  static void require(bool ok, const char* rule) {
    if (ok) return;
    std::fprintf(stderr, "AMX emulation: broken rule: %s\n", rule);
    std::abort();
  }

  TileConfig config_;
  bool configured_ = false;
  uint8_t data_[kTiles][kMaxRows][kMaxRowBytes];
};

inline EmulatedTiles& emulated_tiles() {
  thread_local EmulatedTiles tiles;  // the tile state is per thread, as in hardware
  return tiles;
}

}  // namespace effgen::cpu::amx

#define EFFGEN_TILE_CONFIGURE(config) ::effgen::cpu::amx::emulated_tiles().configure(config)
#define EFFGEN_TILE_ZERO(t) ::effgen::cpu::amx::emulated_tiles().zero(t)
#define EFFGEN_TILE_LOAD(t, base, stride) ::effgen::cpu::amx::emulated_tiles().load(t, base, stride)
#define EFFGEN_TILE_STORE(t, base, stride) ::effgen::cpu::amx::emulated_tiles().store(t, base, stride)
#define EFFGEN_TILE_DPBSSD(c, a, b) ::effgen::cpu::amx::emulated_tiles().dpbssd(c, a, b)
#define EFFGEN_TILE_RELEASE() ::effgen::cpu::amx::emulated_tiles().release()
#define EFFGEN_TILE_STORE_CONFIG(out) ::effgen::cpu::amx::emulated_tiles().store_config(out)

#else
#include <immintrin.h>

namespace effgen::cpu::amx {

// GCC's LDTILECFG, STTILECFG and TILELOADD intrinsics name no memory operand (only the
// pointer, or the config's first 8 bytes), so the compiler could drop or delay the stores
// that fill what they read (the config, a staged K tail), or keep values of what STTILECFG
// wrote: hand it the pointer and make it assume memory is read and written.
inline void memory_touched_by_tiles(const void* p) { __asm__ volatile("" : : "r"(p) : "memory"); }

}  // namespace effgen::cpu::amx

#define EFFGEN_TILE_CONFIGURE(config)                    \
  do {                                                   \
    ::effgen::cpu::amx::memory_touched_by_tiles(&(config)); \
    _tile_loadconfig(&(config));                         \
  } while (0)
#define EFFGEN_TILE_ZERO(t) _tile_zero(t)
#define EFFGEN_TILE_LOAD(t, base, stride)              \
  do {                                                 \
    ::effgen::cpu::amx::memory_touched_by_tiles(base);    \
    _tile_loadd(t, base, stride);                      \
  } while (0)
#define EFFGEN_TILE_STORE(t, base, stride) _tile_stored(t, base, stride)
#define EFFGEN_TILE_DPBSSD(c, a, b) _tile_dpbssd(c, a, b)
#define EFFGEN_TILE_RELEASE() _tile_release()
#define EFFGEN_TILE_STORE_CONFIG(out)              \
  do {                                              \
    _tile_storeconfig(out);                         \
    ::effgen::cpu::amx::memory_touched_by_tiles(out); \
  } while (0)

#endif
