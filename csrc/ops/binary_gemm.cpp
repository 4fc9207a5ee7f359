// CPU glue of the binary_gemm family: pack / unpack, real-activation binary and ternary
// products (lookup tables or masked sums for few rows; for many, the int8 GEMM on panels
// expanded from the tables, or dequantize + torch's GEMM), and XNOR-popcount.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <limits>
#include <memory>
#include <numeric>
#include <vector>

#include "../kernels/cpu/binary_gemm.h"
#include "binary_gemm_common.h"
#include "glue.h"
#include "int8_panels.h"
#include "weight_blocks_gemm.h"

namespace effgen::ops {
namespace {



constexpr int64_t kBlockN = 64;
// Without a lookup table: up to this many rows the weights are streamed as bits; above it
// they are expanded once and the product goes to torch's GEMM (the masked adds cost as much
// as FMAs). With one, the table kernel takes every M (one vpermps does 64 multiply-adds)
// but the batches bits_on_int8_gemm takes (AMX) and those expanded_gemm_pays gives to
// torch's GEMM.
constexpr int64_t kDirectMaxM = 16;
// Without AVX-512 the table kernel loses batches to torch's GEMM over expanded weights
// (linear_with_expanded), except where the AVX2 kernel holds activation rows in its lanes
// (cpu::kLutLanesMinTiles tiles of 16 weight rows per thread: 64+ columns), and there for
// ternary weights only up to kLanesTernaryMaxM rows. Measured on Zen 4 (AVX2), 2 threads,
// tables in lanes / expanded time: binary 0.43-0.75x at 33-64 rows on 384-4096 columns
// (12-48 tiles a thread), 0.63-0.91x at 128-256; on 128-256 columns 0.46-0.81x at 33-64,
// 0.59-0.88x at 128. Per-group alphas (group 128): 4096 x 4096 0.42-0.53x at 64-256 rows,
// 384-1536 columns 0.56-0.84x at 64 (up to level at 256), 128-256 columns 0.55-0.93x at
// 33-64, 0.73-1.06x at 128.
// Ternary 0.54-0.87x at 40 rows, 0.79-0.93x at 48, 0.88-1.01x at 64 on 384+ columns; on
// 128-256, 0.64-0.97x at 33 rows, 0.78-1.20x at 64 (the slower at K <= 1536); on 2048-4096
// columns 1.1-1.3x at 128. The permutes (a row at a time) took 1.2-1.7x (binary) and
// 1.6-1.8x (ternary) the expanded GEMM's time at 64 rows. AVX-512's 16-entry tables were
// measured ahead of fp32 at 64 rows.
constexpr int64_t kExpandMinM = 32, kLanesTernaryMaxM = 64;

bool expanded_gemm_pays(int64_t m, int64_t n, int planes) {
  const cpu::Isa isa = cpu::active_isa();
  if (m <= kExpandMinM || cpu::runs_avx512(isa)) return false;
  // Only AVX2 has the lanes kernels; the scalar and NEON tables look up one row at a time.
  const bool lanes = isa == cpu::Isa::kAvx2 && n >= cpu::kLutLanesMinTiles * cpu::kLutTileRows * at::get_num_threads();
  return !lanes || (planes == 2 && m > kLanesTernaryMaxM);
}

// Output elements per task below which an epilogue runs on one thread.
constexpr int64_t kEpilogueGrain = 1 << 15;

// f(i) for rows i in [0, m) of n outputs each, in parallel once a batch makes it worth it.
template <typename F>
void for_each_row(int64_t m, int64_t n, const F& f) {
  at::parallel_for(0, m, std::max<int64_t>(1, kEpilogueGrain / std::max<int64_t>(n, 1)), [&](int64_t i0, int64_t i1) {
    for (int64_t i = i0; i < i1; ++i) f(i);
  });
}

// ---- pack / unpack ---------------------------------------------------------------------

at::Tensor pack_binary(const at::Tensor& w_in) {
  constexpr const char* op = "pack_binary";
  check_float_input(op, "w", w_in);
  check_cpu(op, "w", w_in);
  TORCH_CHECK_VALUE(w_in.dim() == 2, op, ": w must be 2-D [N, K], got shape ", w_in.sizes());
  const at::Tensor w = w_in.contiguous();
  const int64_t k = w.size(1), row_bytes = packed_row_bytes(k), in_row_bytes = k * w.element_size();
  at::Tensor out = at::empty({w.size(0), row_bytes}, w.options().dtype(at::kByte));
  const auto* in = static_cast<const char*>(w.data_ptr());
  for_row_ranges(w.size(0), k, [&](int64_t r0, int64_t r1) {
    cpu::pack_signs(cpu_dtype(w.scalar_type()), in + r0 * in_row_bytes, r1 - r0, k,
                    out.data_ptr<uint8_t>() + r0 * row_bytes);
  });
  return out;
}

// Packed rows of `planes` bit planes -> int8 rows [N, k], by unpack_rows(packed, rows, k, out).
template <typename UnpackRows>
at::Tensor unpack_rows(const char* op, const at::Tensor& packed_in, int64_t k, int64_t planes,
                       UnpackRows unpack_rows) {
  TORCH_CHECK_VALUE(k >= 0, op, ": k must be >= 0, got ", k);
  check_cpu(op, "packed", packed_in);
  check_packed(op, packed_in, k, planes, packed_in);
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor out = at::empty({packed.size(0), k}, packed.options().dtype(at::kChar));
  for_row_ranges(packed.size(0), k, [&](int64_t r0, int64_t r1) {
    unpack_rows(packed.data_ptr<uint8_t>() + r0 * packed.size(1), r1 - r0, k, out.data_ptr<int8_t>() + r0 * k);
  });
  return out;
}

at::Tensor unpack_binary(const at::Tensor& packed, int64_t k) {
  return unpack_rows("unpack_binary", packed, k, 1, cpu::unpack_binary_rows);
}

at::Tensor pack_ternary(const at::Tensor& q_in) {
  constexpr const char* op = "pack_ternary";
  TORCH_CHECK_TYPE(q_in.scalar_type() == at::kChar, op, ": q must be int8 in {-1, 0, 1}, got ", q_in.scalar_type());
  check_cpu(op, "q", q_in);
  TORCH_CHECK_VALUE(q_in.dim() == 2, op, ": q must be 2-D [N, K], got shape ", q_in.sizes());
  const at::Tensor q = q_in.contiguous();
  const int64_t k = q.size(1);
  at::Tensor out = at::empty({q.size(0), 2 * packed_row_bytes(k)}, q.options().dtype(at::kByte));
  std::atomic<bool> valid{true};
  for_row_ranges(q.size(0), k, [&](int64_t r0, int64_t r1) {
    if (!cpu::pack_ternary_rows(q.data_ptr<int8_t>() + r0 * k, r1 - r0, k, out.data_ptr<uint8_t>() + r0 * out.size(1))) {
      valid = false;
    }
  });
  TORCH_CHECK_VALUE(valid, op, ": q must hold only -1, 0 and 1");
  return out;
}

at::Tensor unpack_ternary(const at::Tensor& packed, int64_t k) {
  return unpack_rows("unpack_ternary", packed, k, 2, cpu::unpack_ternary_rows);
}

// ---- float weights -> packed bits and their scales --------------------------------------

// Sum of |w| over each row's `groups` runs of `group` weights (the last one ragged), in
// double, rows over threads; [N * groups], row-major. NaN or Inf in w is an error.
std::vector<double> abs_group_sums(const char* op, const at::Tensor& w, int64_t groups, int64_t group) {
  const int64_t n = w.size(0), k = w.size(1), elem = w.element_size();
  const auto dtype = cpu_dtype(w.scalar_type());
  const auto* bytes = static_cast<const char*>(w.data_ptr());
  std::vector<double> sums(static_cast<size_t>(n * groups));
  for_row_ranges(n, k, [&](int64_t r0, int64_t r1) {
    for (int64_t r = r0; r < r1; ++r) {
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t start = r * k + g * group;
        sums[r * groups + g] = cpu::abs_sum(dtype, bytes + start * elem, std::min(group, k - g * group));
      }
    }
  });
  const auto bad = std::find_if(sums.begin(), sums.end(), [](double v) { return !std::isfinite(v); });
  check_finite_rows(op, bad == sums.end() ? -1 : (bad - sums.begin()) / groups);
  return sums;
}

// One fp32 rounding of the double mean (a count of 0 gives NaN, as torch's mean of nothing).
float mean_of(double sum, int64_t count) { return static_cast<float>(sum / static_cast<double>(count)); }

std::tuple<at::Tensor, at::Tensor> binarize_weight(const at::Tensor& w_in, std::optional<int64_t> group_size) {
  constexpr const char* op = "binarize_weight";
  check_weight_to_quantize(op, w_in);
  check_cpu(op, "w", w_in);
  if (group_size) check_group_size(op, *group_size);
  const at::Tensor w = w_in.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const int64_t group = group_size.value_or(k), groups = group_size ? num_groups(k, group) : 1;
  const std::vector<double> sums = abs_group_sums(op, w, groups, group);
  at::Tensor alpha = group_size ? at::empty({n, groups}, w.options().dtype(at::kFloat))
                                : at::empty({n}, w.options().dtype(at::kFloat));
  float* alpha_ptr = alpha.data_ptr<float>();
  for (int64_t i = 0; i < n * groups; ++i) {
    alpha_ptr[i] = mean_of(sums[i], std::min(group, k - i % groups * group));
  }
  return {pack_binary(w), alpha};
}

std::tuple<at::Tensor, at::Tensor> ternarize_weight(const at::Tensor& w_in, bool per_channel) {
  constexpr const char* op = "ternarize_weight";
  check_weight_to_quantize(op, w_in);
  check_cpu(op, "w", w_in);
  const at::Tensor w = w_in.contiguous();
  const int64_t n = w.size(0), k = w.size(1), elem = w.element_size();
  const std::vector<double> sums = abs_group_sums(op, w, 1, k);
  at::Tensor scale = at::empty({per_channel ? n : 1}, w.options().dtype(at::kFloat));
  float* scale_ptr = scale.data_ptr<float>();
  if (per_channel) {
    for (int64_t r = 0; r < n; ++r) scale_ptr[r] = mean_of(sums[r], k);
  } else {
    scale_ptr[0] = mean_of(std::accumulate(sums.begin(), sums.end(), 0.0), n * k);
  }
  at::Tensor out = at::empty({n, 2 * packed_row_bytes(k)}, w.options().dtype(at::kByte));
  const auto* bytes = static_cast<const char*>(w.data_ptr());
  for_row_ranges(n, k, [&](int64_t r0, int64_t r1) {
    cpu::ternarize_rows(cpu_dtype(w.scalar_type()), bytes + r0 * k * elem, r1 - r0, k,
                        scale_ptr + (per_channel ? r0 : 0), per_channel ? 1 : 0,
                        out.data_ptr<uint8_t>() + r0 * out.size(1));
  });
  return {out, scale};
}

// ---- products --------------------------------------------------------------------------
// Sums of x over the set bits of each weight row, per group: [M, n_block * groups] per
// 64-row block of weights, handed to `epilogue(j0, nb, sums)` in parallel; groups and
// group as the caller's checks counted them, so the epilogue reads what was written.
template <typename Epilogue>
void for_masked_sum_blocks(const Rows& r, const uint8_t* bits, int64_t ldb, int64_t n, int64_t groups, int64_t group,
                           Epilogue&& epilogue) {
  const auto& kernels = cpu::binary_gemm_kernels();
  at::parallel_for(0, (n + kBlockN - 1) / kBlockN, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> sums(static_cast<size_t>(r.m * kBlockN * groups));
    for (int64_t block = begin; block < end; ++block) {
      const int64_t j0 = block * kBlockN, nb = std::min(kBlockN, n - j0);
      kernels.masked_sums(cpu_dtype(r.x.scalar_type()), r.x.data_ptr(), r.k, bits + j0 * ldb, ldb, r.m, nb, r.k,
                          group, sums.data(), nb * groups);
      epilogue(j0, nb, sums.data());
    }
  });
}

// row[kk] *= scale[kk / group] over a row of k values.
void scale_row(float* row, int64_t k, const float* scale, int64_t group) {
  for (int64_t k0 = 0, g = 0; k0 < k; k0 += group, ++g) {
    const int64_t end = std::min(k, k0 + group);
    for (int64_t kk = k0; kk < end; ++kk) row[kk] *= scale[g];
  }
}

// Many rows without a lookup table: torch's GEMM over blocks of expanded weights
// (weight_blocks_gemm.h), w[j][kk] = value * scale[j * scale_stride + kk / group] (exact in
// fp32: the values are +-1 and 0).
at::Tensor linear_with_expanded(const Rows& r, const at::Tensor& x, const at::Tensor& packed_in, int planes,
                                const at::Tensor& scale_in, int64_t scale_stride, int64_t group,
                                const std::optional<at::Tensor>& bias) {
  const at::Tensor packed = packed_in.contiguous(), scale = scale_in.contiguous();
  const int64_t n = packed.size(0), row_bytes = packed.size(1);
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  at::Tensor out_2d = out.view({r.m, n});
  const auto& kernels = cpu::binary_gemm_kernels();
  const uint8_t* bits = packed.data_ptr<uint8_t>();
  const float* s = scale.data_ptr<float>();
  gemm_over_weight_blocks(r.x, n, bias, out_2d, 1, [&](int64_t j0, int64_t j1, float* rows) {
    kernels.expand(bits + j0 * row_bytes, j1 - j0, r.k, planes, rows);
    for (int64_t j = j0; j < j1; ++j) scale_row(rows + (j - j0) * r.k, r.k, s + j * scale_stride, group);
  });
  return out;
}

// Per row of x and group of `group` values, the sum of x (binary products take it; it is
// not finite exactly where the row holds Inf or NaN, or overflows).
std::vector<float> row_totals(const Rows& r, int64_t group, int64_t groups) {
  std::vector<float> totals(static_cast<size_t>(r.m * groups));
  const std::vector<uint8_t> ones(static_cast<size_t>(packed_row_bytes(r.k)), 0xFF);
  cpu::binary_gemm_kernels().masked_sums(cpu_dtype(r.x.scalar_type()), r.x.data_ptr(), r.k, ones.data(), 0, r.m, 1,
                                         r.k, group, totals.data(), groups);
  return totals;
}

// The masked sums and lookup tables skip zero weights and take a binary product as
// 2 * (sum over +1 weights) - total, so Inf and NaN in x do not give what IEEE products
// give (Inf * 0 = NaN, Inf - Inf after a +1 weight): a call whose totals are not all finite
// runs on torch's GEMM over expanded weights instead (linear_with_expanded), as the
// reference does.
bool all_finite(const std::vector<float>& totals) {
  return std::all_of(totals.begin(), totals.end(), [](float t) { return std::isfinite(t); });
}

// The results' destination and the bias as raw pointers, looked up once: tensor accessors
// per element (dtype checks) cost more than the arithmetic at decode sizes (88 us of a
// 0.3 ms ternary GEMV with N = 4096).
class OutputRows {
 public:
  OutputRows(const at::Tensor& out_2d, const at::Tensor& bias_f)
      : dtype_(out_2d.scalar_type()), base_(out_2d.data_ptr()), ld_(out_2d.size(1)),
        bias_(bias_f.defined() ? bias_f.data_ptr<float>() : nullptr) {}

  // out[i][j0 + j] = value(j) + bias[j0 + j] for j < count, in the output dtype; the dtype
  // is looked at once a run, so the loop inlines value (per element, the switch and the
  // call were 6-8% of a 1 x 576 x 1536 ternary product).
  template <typename Value>
  void put_run(int64_t i, int64_t j0, int64_t count, const Value& value) const {
    switch (dtype_) {
      case at::kBFloat16: return put_run_as<at::BFloat16>(i, j0, count, value);
      case at::kHalf: return put_run_as<at::Half>(i, j0, count, value);
      default: return put_run_as<float>(i, j0, count, value);
    }
  }

 private:
  template <typename T, typename Value>
  void put_run_as(int64_t i, int64_t j0, int64_t count, const Value& value) const {
    T* row = static_cast<T*>(base_) + i * ld_ + j0;
    const float* bias = bias_ == nullptr ? nullptr : bias_ + j0;
    for (int64_t j = 0; j < count; ++j) row[j] = static_cast<T>(bias == nullptr ? value(j) : value(j) + bias[j]);
  }

  at::ScalarType dtype_;
  void* base_;
  int64_t ld_;
  const float* bias_;
};

// A lut tensor's dtype says its layout: uint8 for 4-bit fields, int32 lanes for 3-bit ones.
at::ScalarType lut_dtype(cpu::LutLayout layout) { return layout.width == 4 ? at::kByte : at::kInt; }

// Elements of a lut tensor's row: one tile of `layout`.
int64_t lut_row_elements(cpu::LutLayout layout, int64_t k, int planes) {
  return layout.tile_bytes(k, planes) / static_cast<int64_t>(c10::elementSize(lut_dtype(layout)));
}

at::Tensor lut_tiles(const at::Tensor& packed_in, int64_t k, int64_t planes, std::optional<int64_t> group_size) {
  constexpr const char* op = "lut_tiles";
  TORCH_CHECK_VALUE(planes == 1 || planes == 2, op, ": planes must be 1 (binary) or 2 (ternary), got ", planes);
  TORCH_CHECK_VALUE(k >= 0, op, ": k must be >= 0, got ", k);
  TORCH_CHECK_VALUE(!group_size.has_value() || planes == 1, op,
                    ": group_size is for binary weights' per-group alphas (planes = 1), got planes = ", planes);
  TORCH_CHECK_VALUE(!group_size.has_value() || *group_size > 0, op, ": group_size must be positive, got ",
                    group_size.value_or(0));
  check_cpu(op, "packed", packed_in);
  check_packed(op, packed_in, k, planes, packed_in);
  const at::Tensor packed = packed_in.contiguous();
  const auto& kernels = cpu::binary_gemm_kernels();
  const cpu::LutLayout layout = group_size.has_value() ? kernels.alpha_layout : kernels.lut_layout;
  const at::ScalarType dtype = lut_dtype(layout);
  const int64_t tiles = (packed.size(0) + cpu::kLutTileRows - 1) / cpu::kLutTileRows;
  at::Tensor out = at::empty({tiles, lut_row_elements(layout, k, static_cast<int>(planes))},
                             packed.options().dtype(dtype));
  const int64_t tile_bytes = layout.tile_bytes(k, static_cast<int>(planes)), n = packed.size(0);
  for_row_ranges(tiles, tile_bytes, [&](int64_t t0, int64_t t1) {
    const int64_t r0 = t0 * cpu::kLutTileRows, r1 = std::min(t1 * cpu::kLutTileRows, n);
    cpu::tile_for_lut(layout, packed.data_ptr<uint8_t>() + r0 * packed.size(1), r1 - r0, k, static_cast<int>(planes),
                      static_cast<uint8_t*>(out.data_ptr()) + t0 * tile_bytes);
  });
  return out;
}

// The layout of a lut tensor from lut_tiles (of any ISA), checked against the weight's shape.
cpu::LutLayout checked_lut_layout(const at::Tensor& lut, int64_t n, int64_t k, int planes, const char* op) {
  const cpu::LutLayout layout = lut.scalar_type() == at::kInt ? cpu::kLutTriples : cpu::kLutNibbles;
  const int64_t tiles_n = (n + cpu::kLutTileRows - 1) / cpu::kLutTileRows;
  const int64_t row_elements = lut_row_elements(layout, k, planes);
  TORCH_CHECK_VALUE((lut.scalar_type() == at::kByte || lut.scalar_type() == at::kInt) && lut.dim() == 2 &&
                        lut.size(0) == tiles_n && lut.size(1) == row_elements,
                    op, ": lut must come from lut_tiles(packed, K = ", k, ", planes = ", planes,
                    ") of this packed weight ([", tiles_n, ", ", row_elements, "] ", lut_dtype(layout), "), got ",
                    lut.scalar_type(), " of shape ", lut.sizes());
  return layout;
}

// What lut_product gives: row i's value for output j at data[i * padded + j].
struct LutSums {
  std::unique_ptr<float[]> data;
  int64_t padded;  // outputs per row, rounded up to whole tiles
  float at(int64_t i, int64_t j) const { return data[i * padded + j]; }
};

// The lookup-table product: raw sums [m, tiles * 16] (binary: over the +1 weights; ternary:
// positive minus negative), or with `alphas` (binary, per group; the lut in the layout of the
// dispatched ISA's lut_alpha_sums, alpha_tables_fit) the rows' results before the bias
// (lut_alpha_sums). Without alphas, a lut in another layout than the dispatched ISA's (made
// before set_cpu_isa) runs on the portable kernel, its tables built by the portable builder.
LutSums lut_product(const Rows& r, int64_t n, const at::Tensor& lut, int planes, const char* op,
                    const cpu::LutAlphaGroups* alphas = nullptr) {
  const cpu::LutLayout layout = checked_lut_layout(lut, n, r.k, planes, op);
  const at::Tensor x32 = r.x.to(at::kFloat).contiguous(), tiles = lut.contiguous();
  const auto* tile_data = static_cast<const uint8_t*>(tiles.data_ptr());
  const int64_t padded = tiles.size(0) * cpu::kLutTileRows;
  const int64_t table_floats = layout.table_floats(r.k);  // per activation row
  // Uninitialized: the kernels store every sum of every tile (zeroing took 10% of a 64 x
  // 1536 -> 576 product on Zen 4).
  LutSums sums{std::make_unique_for_overwrite<float[]>(static_cast<size_t>(r.m * padded)), padded};
  const auto& kernels = cpu::binary_gemm_kernels();
  const bool native = kernels.lut_layout.width == layout.width;
  // The ISA's table builder for the layouts its kernels read, else the portable one.
  const auto build_tables = alphas != nullptr && kernels.alpha_layout.width == layout.width ? kernels.build_alpha_tables
                            : native                                                       ? kernels.build_tables
                                                                                           : nullptr;
  // Each thread builds the tables of kLutMaxM rows at a time itself, into a buffer of its
  // own that stays in its L2 (8 rows: 192 KB for K = 1536, 512 KB for 4096), and looks
  // them up over its tiles. Building each row's tables once and sharing them (parts built
  // on the other core, 4 MB for 64 rows of K = 4096) was 1.1-1.4x slower on Zen 4 at 1-256
  // rows, 2x in the VM's slow spells; the repeated build costs a thread about
  // 1 / (its tiles) of its lookups.
  at::parallel_for(0, tiles.size(0), 4, [&](int64_t begin, int64_t end) {
    thread_local std::vector<float> tables;  // kept between calls: no page faults per call
    const auto table_size = static_cast<size_t>(cpu::kLutMaxM * table_floats);
    if (tables.size() < table_size) tables.resize(table_size);
    for (int64_t i0 = 0; i0 < r.m; i0 += cpu::kLutMaxM) {
      const int64_t rows = std::min(cpu::kLutMaxM, r.m - i0);
      const float* x_rows = x32.data_ptr<float>() + i0 * r.k;
      float* row_sums = sums.data.get() + i0 * padded;
      if (build_tables != nullptr) {
        build_tables(x_rows, rows, r.k, tables.data());
      } else {
        cpu::build_lut_tables(layout, x_rows, rows, r.k, tables.data());
      }
      if (alphas != nullptr) {
        cpu::LutAlphaGroups rows_alphas = *alphas;
        rows_alphas.totals += i0 * alphas->groups;
        kernels.lut_alpha_sums(tables.data(), rows, r.k, tile_data, begin, end, rows_alphas, row_sums, padded);
      } else if (native) {
        kernels.lut_sums(tables.data(), rows, r.k, tile_data, begin, end, planes, row_sums, padded);
      } else {
        cpu::lut_sums_portable(layout, tables.data(), rows, r.k, tile_data, begin, end, planes, row_sums, padded);
      }
    }
  });
  return sums;
}

// Batches of at least kInt8GemmMinM rows go from the lookup tiles to the int8 GEMM where it
// runs on AMX tiles (some with VNNI alone, below): activations as fixed point (W8A16's) times
// int8 panels of +1 / -1 / 0 weights expanded in cache (int8_panels.h), where the tables cost
// one vpermps per 16 weights and row. Xeon (AMX), 2 threads, binary / ternary with fp32 and
// bf16 x, against the tables (RESULTS.md, session 31): 4096 x 4096 at 64 rows 1.1-1.6 ms for
// 3.4-5.7, at 16 rows 0.42-0.71 for 0.88-1.5; at 8 rows level to 1.4x faster on every shape
// but binary 4096 -> 11008 (12% slower once); at 4 rows the tables win (binary 0.24 against
// 0.39-0.55 ms). With VNNI but no AMX (the Xeon's AVX-512 path) the int8 GEMM lost to the
// tables on binary weights at 8-64 rows (0.9 against 0.44 ms at 8 rows, 4096 x 4096) and tied
// on ternary ones. On Zen 4, whose tables run at half Zen 5's rate (0.74 table lookups and
// adds a cycle), it wins ternary batches (session 41, tables / int8 GEMM time, 4096 x 4096,
// 4096 -> 11008 and SmolLM2's 576 -> 1536 / 1536 -> 576): fp32 x 0.94x at 8 rows, 1.06-1.25x
// at 16-32, 1.11-1.73x at 64-1024; bf16 x 1.40-1.91x from 8 rows. Binary weights with bf16 x
// (2 digit rows a token) too from 32 rows (1.12-1.68x at 32-256, level at 1024; 0.97-1.17x at
// 8-16); with fp32 or fp16 x (3 digit rows) they stay on the tables (0.73-0.94x at 16-256).
constexpr int64_t kInt8GemmMinM = 8;
constexpr int64_t kVnniTernaryMinM = 16, kVnniTernaryMinMBf16 = 8, kVnniBinaryMinMBf16 = 32;

// Per-group alphas run on the tables where the lut is in the layout the dispatched ISA's
// lut_alpha_sums reads (lut_tiles with group_size) and the groups are whole lanes of it.
bool alpha_tables_fit(const at::Tensor& lut, int64_t n, int64_t k, int64_t group) {
  const cpu::LutLayout layout = cpu::binary_gemm_kernels().alpha_layout;
  return group % layout.lane_inputs(1) == 0 && checked_lut_layout(lut, n, k, 1, "binary_linear").width == layout.width;
}

// Where per-group alphas start on the int8 GEMM. Against masked adds (groups the tables
// cannot take) from kInt8GemmOverMaskedMinM rows: 1.3-1.6x faster at 2 rows (4096^2: 0.55
// against 0.82 ms), at one row level or slower. Against the tables with per-group alphas
// (rotated weights, the two taking turns first; RESULTS.md, session 32), int8 / tables
// time on 4096 -> 4096 / 11008 and SmolLM2's 576 -> 1536 / 1536 -> 576: bf16 x (2 digits)
// at 4 rows 0.90-1.73, at 8 0.66-1.07, at 16 0.55-0.68; fp32 x (3 digits) at 4 rows
// 1.03-1.82, at 8 0.82-1.23, at 16 0.74-0.91, at 32 0.57-0.75.
constexpr int64_t kInt8GemmOverMaskedMinM = 2;
int64_t grouped_int8_gemm_min_m(const Rows& r, const at::Tensor& lut, int64_t n, int64_t group) {
  if (!alpha_tables_fit(lut, n, r.k, group)) return kInt8GemmOverMaskedMinM;
  return r.x.scalar_type() == at::kBFloat16 ? 8 : 16;
}

// The fewest rows from which the int8 GEMM takes a product; none where the tables keep all.
int64_t int8_gemm_min_m(const Rows& r, const at::Tensor& lut, int64_t n, int planes, int64_t groups, int64_t group) {
  const cpu::Isa isa = cpu::active_isa();
  if (isa == cpu::Isa::kAmx) return groups == 1 ? kInt8GemmMinM : grouped_int8_gemm_min_m(r, lut, n, group);
  if (isa != cpu::Isa::kAvx512) return std::numeric_limits<int64_t>::max();
  const bool bf16_x = r.x.scalar_type() == at::kBFloat16;
  if (planes == 2) return bf16_x ? kVnniTernaryMinMBf16 : kVnniTernaryMinM;
  return bf16_x && groups == 1 ? kVnniBinaryMinMBf16 : std::numeric_limits<int64_t>::max();
}

// out = x @ (w * scale)^T (+ bias) on the int8 GEMM where it pays and x is representable as
// its fixed point (no Inf or NaN); nothing otherwise. scale: per channel or tensor (groups
// = 1: [N], [N, 1] or one element) or [N, groups] per group of `group` values of K. The
// lut must be in the dispatched ISA's layout (a lut made before set_cpu_isa runs elsewhere).
std::optional<at::Tensor> bits_on_int8_gemm(const Rows& r, const at::Tensor& x, int64_t n, const at::Tensor& lut,
                                            int planes, const at::Tensor& scale, int64_t groups, int64_t group,
                                            const std::optional<at::Tensor>& bias, const char* op) {
  const auto& kernels = cpu::binary_gemm_kernels();
  if (kernels.lut_tiles_to_int8 == nullptr || r.m < int8_gemm_min_m(r, lut, n, planes, groups, group) ||
      r.k > cpu::kMaxExactInt8K ||
      checked_lut_layout(lut, n, r.k, planes, op).width != kernels.lut_layout.width) {
    return std::nullopt;
  }
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  at::Tensor out_2d = out.view({r.m, n});
  const at::Tensor tiles = lut.contiguous();
  const auto* tile_data = static_cast<const uint8_t*>(tiles.data_ptr());
  const at::Tensor w_scale = groups == 1 ? scale.reshape({-1}).expand({n}).contiguous() : scale.contiguous();
  constexpr int kBitsWeightBound = 1;  // the panels hold +1 / -1 / 0
  const bool done = fixed_point_gemm_over_panels(
      r.x, n, w_scale, group, kBitsWeightBound, float_bias(bias), out_2d,
      [&](int64_t j0, int64_t nb, const cpu::Int8Panel& panel) {
        kernels.lut_tiles_to_int8(tile_data, r.k, planes, j0 / cpu::kLutTileRows,
                                  (j0 + nb + cpu::kLutTileRows - 1) / cpu::kLutTileRows, panel);
      });
  return done ? std::optional<at::Tensor>(out) : std::nullopt;
}

// Whether or not this call's route reads it (that depends on the rows, the CPU and the
// groups), a lut that does not belong to the weight is refused, on every machine alike.
void check_lut_if_given(const std::optional<at::Tensor>& lut, const BitsProduct& p, int planes, const char* op) {
  if (lut.has_value()) checked_lut_layout(*lut, p.n, p.r.k, planes, op);
}

at::Tensor binary_linear(const at::Tensor& x, const at::Tensor& packed_in, const at::Tensor& alpha_in,
                         const std::optional<at::Tensor>& bias, std::optional<int64_t> group_size,
                         const std::optional<at::Tensor>& lut) {
  constexpr const char* op = "binary_linear";
  check_cpu(op, "x", x);
  const BitsProduct p = check_bits_product(op, x, packed_in, 1, "alpha", alpha_in, bias, true, group_size);
  check_lut_if_given(lut, p, 1, op);
  if (p.r.k == 0) return empty_sum_product(x, p.n, x.options(), bias);
  const Rows& r = p.r;
  const int64_t n = p.n, groups = p.groups, group = p.group;
  const bool lut_pays = lut.has_value() && !expanded_gemm_pays(r.m, n, 1);
  if (lut_pays) {
    if (auto out = bits_on_int8_gemm(r, x, n, *lut, 1, alpha_in, groups, group, bias, op)) return *out;
  }
  const bool with_lut = lut_pays && (groups == 1 || alpha_tables_fit(*lut, n, r.k, group));
  if (r.m > kDirectMaxM && !with_lut) return linear_with_expanded(r, x, packed_in, 1, alpha_in, groups, group, bias);
  // y = alpha * (2 * sum over +1 weights - total), per row and group.
  const std::vector<float> totals = row_totals(r, group, groups);
  if (!all_finite(totals)) return linear_with_expanded(r, x, packed_in, 1, alpha_in, groups, group, bias);
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  const at::Tensor packed = packed_in.contiguous(), alpha = alpha_in.contiguous();
  const at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const OutputRows rows(out.view({r.m, n}), bias_f);
  const float* a = alpha.data_ptr<float>();
  if (with_lut && groups > 1) {
    const cpu::LutAlphaGroups alphas{a, n, groups, group, totals.data()};
    const LutSums results = lut_product(r, n, *lut, 1, op, &alphas);
    for_each_row(r.m, n, [&](int64_t i) { rows.put_run(i, 0, n, [&](int64_t j) { return results.at(i, j); }); });
    return out;
  }
  if (with_lut) {
    const LutSums sums = lut_product(r, n, *lut, 1, op);
    for_each_row(r.m, n, [&](int64_t i) {
      rows.put_run(i, 0, n, [&](int64_t j) { return a[j] * (2.0f * sums.at(i, j) - totals[i]); });
    });
    return out;
  }
  for_masked_sum_blocks(r, packed.data_ptr<uint8_t>(), packed.size(1), n, groups, group,
                        [&](int64_t j0, int64_t nb, const float* sums) {
                          for (int64_t i = 0; i < r.m; ++i) {
                            rows.put_run(i, j0, nb, [&](int64_t j) {
                              float y = 0.0f;
                              for (int64_t g = 0; g < groups; ++g) {
                                const float plus = sums[(i * nb + j) * groups + g];
                                y += a[(j0 + j) * groups + g] * (2.0f * plus - totals[i * groups + g]);
                              }
                              return y;
                            });
                          }
                        });
  return out;
}

at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed_in, const at::Tensor& scale_in,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& lut) {
  constexpr const char* op = "ternary_linear";
  check_cpu(op, "x", x);
  const BitsProduct p = check_bits_product(op, x, packed_in, 2, "scale", scale_in, bias, false);
  check_lut_if_given(lut, p, 2, op);
  if (p.r.k == 0) return empty_sum_product(x, p.n, x.options(), bias);
  const Rows& r = p.r;
  const int64_t n = p.n, scale_stride = p.scale_stride;
  const bool with_lut = lut.has_value() && !expanded_gemm_pays(r.m, n, 2);
  if (with_lut) {
    if (auto out = bits_on_int8_gemm(r, x, n, *lut, 2, scale_in, 1, r.k, bias, op)) return *out;
  }
  const int64_t plane = packed_row_bytes(r.k), group = r.k;  // one group: the whole row
  if ((r.m > kDirectMaxM && !with_lut) || !all_finite(row_totals(r, group, 1))) {
    return linear_with_expanded(r, x, packed_in, 2, scale_in, scale_stride, group, bias);
  }
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  const at::Tensor packed = packed_in.contiguous(), scale = scale_in.contiguous();
  const at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const float* s = scale.data_ptr<float>();
  const OutputRows rows(out.view({r.m, n}), bias_f);
  if (with_lut) {
    const LutSums sums = lut_product(r, n, *lut, 2, "ternary_linear");
    for_each_row(r.m, n, [&](int64_t i) {
      rows.put_run(i, 0, n, [&](int64_t j) { return s[j * scale_stride] * sums.at(i, j); });
    });
    return out;
  }
  const auto& kernels = cpu::binary_gemm_kernels();
  at::parallel_for(0, (n + kBlockN - 1) / kBlockN, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> plus(static_cast<size_t>(r.m * kBlockN)), minus(plus.size());
    for (int64_t block = begin; block < end; ++block) {
      const int64_t j0 = block * kBlockN, nb = std::min(kBlockN, n - j0);
      const uint8_t* weight_rows = packed.data_ptr<uint8_t>() + j0 * 2 * plane;
      const auto dtype = cpu_dtype(r.x.scalar_type());
      kernels.masked_sums(dtype, r.x.data_ptr(), r.k, weight_rows, 2 * plane, r.m, nb, r.k, group, plus.data(), nb);
      kernels.masked_sums(dtype, r.x.data_ptr(), r.k, weight_rows + plane, 2 * plane, r.m, nb, r.k, group, minus.data(),
                          nb);
      for (int64_t i = 0; i < r.m; ++i) {
        rows.put_run(i, j0, nb,
                     [&](int64_t j) { return s[(j0 + j) * scale_stride] * (plus[i * nb + j] - minus[i * nb + j]); });
      }
    }
  });
  return out;
}

// The set bits past K of a packed row (of packed_row_bytes(k) bytes).
int32_t set_bits_past_k(const uint8_t* row, int64_t k) {
  return k % 8 == 0 ? 0 : __builtin_popcount(static_cast<unsigned>(row[k / 8]) >> (k % 8));
}

at::Tensor xnor_linear(const at::Tensor& x, const at::Tensor& packed_in, const at::Tensor& alpha_in,
                       const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "xnor_linear";
  check_cpu(op, "x", x);
  const BitsProduct p = check_bits_product(op, x, packed_in, 1, "alpha", alpha_in, bias, false);
  const Rows& r = p.r;
  const int64_t n = p.n, alpha_stride = p.scale_stride;
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  // The same ATen mean as reference.xnor_linear, so the scales agree to the bit.
  const at::Tensor x_scale = r.k == 0 ? at::zeros({r.m}, x.options().dtype(at::kFloat))
                                      : at::mean(r.x.to(at::kFloat).abs(), {1}).contiguous();
  const int64_t row_bytes = packed_row_bytes(r.k);
  std::vector<uint8_t> x_bits(static_cast<size_t>(r.m * row_bytes));
  cpu::pack_signs(cpu_dtype(r.x.scalar_type()), r.x.data_ptr(), r.m, r.k, x_bits.data());
  const at::Tensor packed = packed_in.contiguous(), alpha = alpha_in.contiguous();
  const at::Tensor bias_f = bias.has_value() ? bias->to(at::kFloat).contiguous() : at::Tensor();
  const OutputRows rows(out.view({r.m, n}), bias_f);
  const float *xs = x_scale.data_ptr<float>(), *a = alpha.data_ptr<float>();
  const auto& kernels = cpu::binary_gemm_kernels();
  at::parallel_for(0, (n + kBlockN - 1) / kBlockN, 1, [&](int64_t begin, int64_t end) {
    std::vector<int32_t> disagree(static_cast<size_t>(r.m * kBlockN));
    for (int64_t block = begin; block < end; ++block) {
      const int64_t j0 = block * kBlockN, nb = std::min(kBlockN, n - j0);
      const uint8_t* weight_rows = packed.data_ptr<uint8_t>() + j0 * row_bytes;
      kernels.xor_popcount(x_bits.data(), row_bytes, weight_rows, row_bytes, r.m, nb, row_bytes, disagree.data(), nb);
      // x's pad bits are 0, so each set pad bit of a weight row (K comes from x; those bits
      // hold no weight) counted as a disagreement.
      for (int64_t j = 0; j < nb; ++j) {
        const int32_t pad_ones = set_bits_past_k(weight_rows + j * row_bytes, r.k);
        for (int64_t i = 0; pad_ones != 0 && i < r.m; ++i) disagree[i * nb + j] -= pad_ones;
      }
      for (int64_t i = 0; i < r.m; ++i) {
        rows.put_run(i, j0, nb, [&](int64_t j) {
          // The sign dot product is K - 2 * disagreements.
          const float dot = static_cast<float>(r.k - 2 * int64_t{disagree[i * nb + j]});
          return dot * xs[i] * a[(j0 + j) * alpha_stride];
        });
      }
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, CPU, m) {
  m.impl("pack_binary", &pack_binary);
  m.impl("unpack_binary", &unpack_binary);
  m.impl("pack_ternary", &pack_ternary);
  m.impl("unpack_ternary", &unpack_ternary);
  m.impl("binarize_weight", &binarize_weight);
  m.impl("ternarize_weight", &ternarize_weight);
  m.impl("binary_linear", &binary_linear);
  m.impl("ternary_linear", &ternary_linear);
  m.impl("xnor_linear", &xnor_linear);
  m.impl("lut_tiles", &lut_tiles);
}

}  // namespace effgen::ops
