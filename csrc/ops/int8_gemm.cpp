// CPU glue of the int8_gemm family: W8A8 (int8_linear, int8_dynamic_linear) and W8A16
// (int8_weight_only_linear). Blocks of the output are computed in parallel; each block
// gets an int32 tile in cache and leaves through the fused epilogue.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include <atomic>
#include <memory>
#include <optional>
#include <tuple>
#include <vector>

#include "../kernels/cpu/int8_gemm.h"
#include "../kernels/cpu/quant.h"
#include "int8_gemm_common.h"
#include "int8_panels.h"
#include "glue.h"
#include "quant.h"
#include "weight_blocks_gemm.h"

namespace effgen::ops {
namespace {

constexpr int64_t kBlockM = 96, kBlockN = 64;
// Up to this many rows W8A16 multiplies in registers (a bandwidth problem); above it the
// weights are dequantized once and the product goes to torch's GEMM (a compute problem).
constexpr int64_t kW8A16DirectMaxM = 16;

static_assert(kBlockN % cpu::kPackCols == 0, "packed column groups must not straddle output blocks");

// Scoped to a thread's run of int8 kernel calls: at its end the kernels' tiles, where they
// keep some configured from call to call (AMX), are released.
struct ReleaseTilesAtExit {
  ~ReleaseTilesAtExit() {
    if (const auto release = cpu::int8_gemm_kernels().release_tiles) release();
  }
};

// The output in blocks of at most kBlockM x kBlockN (int32 scratch of that size per thread,
// row stride kBlockN), made smaller so that a small layer keeps every core busy: rows are
// halved (down to 12, a multiple of every row tile) while there are fewer than 8 blocks
// per thread, which costs little; columns (down to 32) only while there are fewer than 2,
// since narrower tiles reuse each activation less. Blocks are numbered column-block-major:
// consecutive blocks of one thread share their weights.
struct OutputBlocks {
  int64_t m, n, rows = kBlockM, cols = kBlockN;

  OutputBlocks(int64_t m_, int64_t n_) : m(m_), n(n_) {
    const int64_t threads = at::get_num_threads();
    while (count() < 8 * threads && rows > 12 && m > rows / 2) rows /= 2;
    while (count() < 2 * threads && cols > 2 * cpu::kPackCols && n > cols / 2) cols /= 2;
  }
  int64_t blocks_m() const { return (m + rows - 1) / rows; }
  int64_t count() const { return blocks_m() * ((n + cols - 1) / cols); }
  // How many columns after block (i0, mb, j0, nb) a thread most likely computes next, to
  // prefetch where that pays: its blocks run column-block-major, so after a column block's
  // last rows, the next columns.
  int64_t next_cols(int64_t i0, int64_t mb, int64_t j0, int64_t nb) const {
    return cpu::prefetch_next_weights() && i0 + mb == m ? std::min(nb, n - j0 - nb) : 0;
  }

  // f(i0, mb, j0, nb) for every block, in parallel.
  template <typename F>
  void parallel(const F& f) const {
    at::parallel_for(0, count(), 1, [&](int64_t begin, int64_t end) {
      const ReleaseTilesAtExit release_tiles;
      for (int64_t block = begin; block < end; ++block) {
        const int64_t i0 = block % blocks_m() * rows, j0 = block / blocks_m() * cols;
        f(i0, std::min(rows, m - i0), j0, std::min(cols, n - j0));
      }
    });
  }
};

// Where the fused epilogues write: rows of out [m, n] from column j0 on, and the fp32 bias.
struct EpilogueTarget {
  cpu::DType dtype;
  int64_t n, elem;
  char* bytes;
  const float* bias;

  EpilogueTarget(at::Tensor& out, const at::Tensor& bias_f)
      : dtype(cpu_dtype(out.scalar_type())),
        n(out.size(1)),
        elem(out.element_size()),
        bytes(static_cast<char*>(out.data_ptr())),
        bias(bias_f.defined() ? bias_f.data_ptr<float>() : nullptr) {}
  void* row(int64_t i, int64_t j0) const { return bytes + (i * n + j0) * elem; }
  const float* bias_from(int64_t j0) const { return bias == nullptr ? nullptr : bias + j0; }

  // Called before a block's product: asks for the cache lines of its output rows [i0, i0 +
  // rows) x columns [j0, j0 + cols) into L2 (prefetcht1), so that the epilogue's stores do
  // not each wait on L3 or memory where the output is larger than L2. Zen 4, one thread,
  // 1024 x 576 -> 1536 int8 (6 MB fp32 output), against the same GEMM storing to a scratch
  // row: 12-17% slower without, 2-3% with (RESULTS.md, session 55).
  void prefetch_block(int64_t i0, int64_t rows, int64_t j0, int64_t cols) const {
    constexpr int64_t kLine = 64;
    for (int64_t i = i0; i < i0 + rows; ++i) {
      const char* begin = static_cast<const char*>(row(i, j0));
      for (const char* line = begin; line < begin + cols * elem; line += kLine) __builtin_prefetch(line, 0, 2);
    }
  }
};

// Block products: product(a, rows, j0, nb, acc, next_cols) writes the int32 products of
// `rows` activation rows (from a, row stride k) with output columns [j0, j0 + nb) into acc
// (row stride kBlockN); the weights of columns [j0 + nb, j0 + nb + next_cols) come next.
// product.scaled(a, rows, j0, nb, out, next_cols) writes them through the fused epilogue
// instead where the ISA has a kernel for it (gemm_packed_scaled), else returns false.
class CanonicalProduct {
 public:
  CanonicalProduct(const at::Tensor& wq, int64_t k) : b_(wq.data_ptr<int8_t>()), k_(k) {}
  void operator()(const int8_t* a, int64_t rows, int64_t j0, int64_t nb, int32_t* acc, int64_t /*next_cols*/) const {
    kernels_.gemm_s8s8s32(a, k_, b_ + j0 * k_, k_, rows, nb, k_, acc, kBlockN);
  }
  bool scaled(const int8_t*, int64_t, int64_t, int64_t, const cpu::ScaledOutput&, int64_t) const { return false; }

 private:
  const cpu::Int8GemmKernels& kernels_ = cpu::int8_gemm_kernels();
  const int8_t* b_;
  int64_t k_;
};

// For weights packed in cpu::kPackCols x cpu::kPackDepth blocks with their column sums.
class PackedProduct {
 public:
  PackedProduct(const at::Tensor& w_packed, const at::Tensor& w_sum, int64_t k)
      : b_(w_packed.data_ptr<int8_t>()),
        sums_(w_sum.data_ptr<int32_t>()),
        group_stride_(w_packed.size(1) * cpu::kPackBlock),
        k_(k) {}
  void operator()(const int8_t* a, int64_t rows, int64_t j0, int64_t nb, int32_t* acc, int64_t next_cols) const {
    kernels_.gemm_packed(a, k_, rows, k_, panel(j0), group_stride_, sums_ + j0, nb, acc, kBlockN,
                         next(j0, nb, next_cols));
  }
  bool scaled(const int8_t* a, int64_t rows, int64_t j0, int64_t nb, const cpu::ScaledOutput& out,
              int64_t next_cols) const {
    return kernels_.gemm_packed_scaled != nullptr &&
           kernels_.gemm_packed_scaled(a, k_, rows, k_, panel(j0), group_stride_, sums_ + j0, nb, out,
                                       next(j0, nb, next_cols));
  }

 private:
  const int8_t* panel(int64_t j0) const { return b_ + j0 / cpu::kPackCols * group_stride_; }
  cpu::PrefetchRange next(int64_t j0, int64_t nb, int64_t cols) const {
    return cpu::packed_columns(b_, group_stride_, j0 + nb, cols);
  }

  const cpu::Int8GemmKernels& kernels_ = cpu::int8_gemm_kernels();
  const int8_t* b_;
  const int32_t* sums_;
  int64_t group_stride_, k_;
};

// One block of out[m, n] = (acc[m, n] * x_scale[m]) * w_scale[n] + bias[n] for int8 rows a
// ([M, K]; or W8A16's digit rows, `limbs` a token, whose products combine into acc as
// digits_epilogue_row does): through the product's fused kernel where it has one, else acc
// from the block product (above), then the fused epilogue, row by row.
template <typename Product>
struct Int8OutputBlock {
  const Product& product;
  const int8_t* a;
  int64_t k;
  const float* x_scale;
  int64_t x_stride;
  const float* w_scale;
  int64_t w_stride;
  EpilogueTarget target;
  int limbs = 1;

  void operator()(int64_t i0, int64_t mb, int64_t j0, int64_t nb, int64_t next_cols) const {
    const int8_t* rows = a + i0 * limbs * k;
    // The fused kernel stores each register tile as it finishes, spread over the product:
    // no output prefetch (its output lines asked for ahead measured level or slower).
    const cpu::ScaledOutput scaled{x_scale + i0 * x_stride, x_stride, w_scale + j0 * w_stride, w_stride,
                                   target.bias_from(j0), target.dtype, target.row(i0, j0), target.n, limbs};
    if (product.scaled(rows, mb * limbs, j0, nb, scaled, next_cols)) return;
    target.prefetch_block(i0, mb, j0, nb);
    thread_local std::vector<int32_t> acc;  // per thread, kept between calls
    acc.resize(static_cast<size_t>(kBlockM * limbs * kBlockN));
    product(rows, mb * limbs, j0, nb, acc.data(), next_cols);
    const auto& kernels = cpu::int8_gemm_kernels();
    for (int64_t i = 0; i < mb; ++i) {
      const int32_t* sums = acc.data() + i * limbs * kBlockN;
      const float* ws = w_scale + j0 * w_stride;
      void* out_row = target.row(i0 + i, j0);
      if (limbs == 1) {
        kernels.epilogue_row(sums, nb, x_scale[(i0 + i) * x_stride], ws, w_stride, target.bias_from(j0), target.dtype,
                             out_row);
      } else {
        kernels.digits_epilogue_row(sums, kBlockN, limbs, nb, x_scale[(i0 + i) * x_stride], ws,
                                    target.bias_from(j0), target.dtype, out_row);
      }
    }
  }
};

// The m tokens of `a` (int8 rows, or `limbs` digit rows each) times the weights of
// `product` over blocks of the output in parallel.
template <typename Product>
void int8_gemm_into(const int8_t* a, int64_t m, int64_t k, const float* x_scale, int64_t x_stride, int64_t n,
                    const at::Tensor& w_scale, int64_t w_stride, const at::Tensor& bias, at::Tensor& out,
                    const Product& product, int limbs = 1) {
  const Int8OutputBlock<Product> block{
      product, a, k, x_scale, x_stride, w_scale.data_ptr<float>(), w_stride, EpilogueTarget(out, bias), limbs};
  const OutputBlocks blocks(m, n);
  blocks.parallel([&](int64_t i0, int64_t mb, int64_t j0, int64_t nb) {
    block(i0, mb, j0, nb, blocks.next_cols(i0, mb, j0, nb));
  });
}

// xq [M, K] times the weights of `product`.
template <typename Product>
void int8_gemm_into(const at::Tensor& xq, const at::Tensor& x_scale, int64_t x_stride, int64_t n,
                    const at::Tensor& w_scale, int64_t w_stride, const at::Tensor& bias, at::Tensor& out,
                    const Product& product) {
  int8_gemm_into(xq.data_ptr<int8_t>(), xq.size(0), xq.size(1), x_scale.data_ptr<float>(), x_stride, n, w_scale,
                 w_stride, bias, out, product);
}

// Small layers (int8 weights up to kRowSplitMaxWeightBytes, such as all of SmolLM2's) with
// at least kRowSplitMinRows rows per thread split the rows, not the output blocks, between
// threads: each thread quantizes its own rows kBlockM at a time and multiplies each such
// block by all of the weights, which stay in its L2, while the int8 rows are still in L1/L2.
// One fork and join instead of two and no int8 copy of x shared between them, which counts
// where the quantization is a large share of the work (a share of about 1/N). Against the
// two passes, Zen 5 (RESULTS.md, session 25): 576 -> 192 3-15% faster at 48-1024 rows,
// 576 -> 576 4-10% up to 256 rows (level above), 1536 -> 576 0-8%, 1024 -> 1024 level,
// 576 -> 1536 level (8% slower at 512 rows once); Zen 4 (session 41): 576 -> 1536 2-15%
// faster at 48-1024 rows (11-15% at 64), 512 -> 2048 17-19% at 64 rows. Not measured on AMX.
constexpr int64_t kRowSplitMaxWeightBytes = int64_t{1} << 20;
constexpr int64_t kRowSplitMinRows = 24;

bool split_rows(int64_t m, int64_t n, int64_t k) {
  return k > 0 && n * k <= kRowSplitMaxWeightBytes && m >= kRowSplitMinRows * at::get_num_threads();
}

// The smoothing factors as a contiguous fp32 pointer for the quantization (null without).
const float* smoothing_data(const std::optional<at::Tensor>& smoothing, at::Tensor& contiguous) {
  if (!smoothing.has_value()) return nullptr;
  contiguous = smoothing->contiguous();
  return contiguous.data_ptr<float>();
}

// W8A8 with per-token activation quantization: x2 [M, K] (contiguous; times smoothing where
// given) quantized, then multiplied by the weights of `product`, either in two parallel
// passes or, where split_rows says so, in one.
template <typename Product>
void int8_dynamic_gemm_into(const at::Tensor& x2, const float* smoothing, int64_t n, const at::Tensor& w_scale,
                            int64_t w_stride, const at::Tensor& bias, at::Tensor& out, const Product& product) {
  const int64_t m = x2.size(0), k = x2.size(1);
  if (!split_rows(m, n, k)) {
    const auto [xq, x_scale] = quantize_per_token_cpu(x2, smoothing);
    int8_gemm_into(xq, x_scale, 1, n, w_scale, w_stride, bias, out, product);
    return;
  }
  at::Tensor xq = at::empty({m, k}, x2.options().dtype(at::kChar));
  at::Tensor x_scale = at::empty({m}, x2.options().dtype(at::kFloat));
  const Int8OutputBlock<Product> block{product, xq.data_ptr<int8_t>(), k, x_scale.data_ptr<float>(), 1,
                                       w_scale.data_ptr<float>(), w_stride, EpilogueTarget(out, bias)};
  NonFiniteTracker non_finite;
  at::parallel_for(0, m, kRowSplitMinRows, [&](int64_t begin, int64_t end) {
    const ReleaseTilesAtExit release_tiles;
    for (int64_t i0 = begin; i0 < end; i0 += kBlockM) {
      const int64_t mb = std::min(kBlockM, end - i0);
      quantize_row_range(x2, 0, i0, i0 + mb, xq, x_scale, non_finite, smoothing);
      for (int64_t j0 = 0; j0 < n; j0 += kBlockN) block(i0, mb, j0, std::min(kBlockN, n - j0), /*next_cols=*/0);
    }
  });
  // the message of the two-pass path
  non_finite.check("quantize_per_token", quantized_rows_name(smoothing), "row");
}

at::Tensor int8_linear(const at::Tensor& xq, const at::Tensor& x_scale, const at::Tensor& wq,
                       const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  constexpr const char* op = "int8_linear";
  check_cpu(op, "xq", xq);
  const auto [k, n, x_stride, w_stride] = check_int8_linear(xq, x_scale, wq, w_scale, bias, out_dtype);
  at::Tensor out = at::empty(linear_out_shape(xq, n), xq.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  at::Tensor out_2d = out.view({-1, n});
  const at::Tensor w = wq.contiguous();
  int8_gemm_into(as_rows(xq).contiguous(), x_scale.contiguous(), x_stride, n, w_scale.contiguous(), w_stride,
                 float_bias(bias), out_2d, CanonicalProduct(w, k));
  return out;
}

at::Tensor int8_linear_packed(const at::Tensor& xq, const at::Tensor& x_scale, const at::Tensor& w_packed,
                              const at::Tensor& w_sum, const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                              at::ScalarType out_dtype) {
  constexpr const char* op = "int8_linear_packed";
  check_cpu(op, "xq", xq);
  const auto [k, n, x_stride, w_stride] = check_int8_linear_packed(xq, x_scale, w_packed, w_sum, w_scale, bias,
                                                                   out_dtype);
  at::Tensor out = at::empty(linear_out_shape(xq, n), xq.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  at::Tensor out_2d = out.view({-1, n});
  const at::Tensor packed = w_packed.contiguous(), sums = w_sum.contiguous();
  int8_gemm_into(as_rows(xq).contiguous(), x_scale.contiguous(), x_stride, n, w_scale.contiguous(), w_stride,
                 float_bias(bias), out_2d, PackedProduct(packed, sums, k));
  return out;
}

at::Tensor int8_dynamic_linear(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& w_scale,
                               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& smoothing) {
  constexpr const char* op = "int8_dynamic_linear";
  check_cpu(op, "x", x);
  const auto [k, n, x_stride, w_stride] = check_int8_dynamic_linear(x, wq, w_scale, bias, smoothing);
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  at::Tensor out_2d = out.view({-1, n}), factors;
  const at::Tensor w = wq.contiguous();
  int8_dynamic_gemm_into(as_rows(x).contiguous(), smoothing_data(smoothing, factors), n, w_scale.contiguous(),
                         w_stride, float_bias(bias), out_2d, CanonicalProduct(w, k));
  return out;
}

at::Tensor int8_dynamic_linear_packed(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_sum,
                                      const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                      const std::optional<at::Tensor>& smoothing) {
  constexpr const char* op = "int8_dynamic_linear_packed";
  check_cpu(op, "x", x);
  const auto [k, n, x_stride, w_stride] =
      check_int8_dynamic_linear_packed(x, w_packed, w_sum, w_scale, bias, smoothing);
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  at::Tensor out_2d = out.view({-1, n}), factors;
  const at::Tensor packed = w_packed.contiguous(), sums = w_sum.contiguous();
  int8_dynamic_gemm_into(as_rows(x).contiguous(), smoothing_data(smoothing, factors), n, w_scale.contiguous(),
                         w_stride, float_bias(bias), out_2d, PackedProduct(packed, sums, k));
  return out;
}

// W8A16 as an int8 GEMM: the activations as fixed point per token in `limbs` int8 digits
// (split_fixed_point_rows, cpu/int8_gemm.h), so the product streams the weights once, over
// m * limbs rows. With 2 limbs the activations keep 15 bits relative to the row's absmax:
// at least bf16's 8 significant bits for every element above absmax / 2^7 (fp16's 11
// above absmax / 2^4), and an absolute error of at most absmax / 2^16 below; with 3 limbs
// 22 bits (absmax / 2^23).
// On ISAs with gemm_packed_i16 they go as int16 rows instead (split_fixed_point_rows_i16:
// one per token for 16-bit activations, two for fp32): the same integers, the same results.
struct FixedPointRows {
  at::Tensor rows;    // int8 digit rows [m * limbs, k], or int16 rows [m * i16 limbs, ld]
  at::Tensor scales;  // fp32 [m]
  int64_t ld;         // int16 rows: k rounded up to whole packed quads
};

// split(i0, i1) over blocks of x's m rows in parallel; false where any block says false.
template <typename Split>
bool split_in_parallel(int64_t m, int64_t k, const Split& split) {
  std::atomic<bool> representable{true};
  // At least 32K values per task: a decode-sized split runs inline, without a fork and join.
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 15) / std::max<int64_t>(1, k));
  at::parallel_for(0, m, grain, [&](int64_t i0, int64_t i1) {
    if (!split(i0, i1)) representable = false;
  });
  return representable;
}

// x's rows as fixed point: `limbs` int8 digit rows per token, or with int16_rows
// cpu::fixed_point_i16_limbs int16 rows per token, padded to whole packed quads. Nothing when
// a row of x holds Inf or NaN or is too small for fixed point (absmax below 2^-100): the
// float kernel takes those.
std::optional<FixedPointRows> split_activations(const at::Tensor& x2, int limbs, bool int16_rows = false) {
  const int64_t m = x2.size(0), k = x2.size(1);
  const auto dtype = cpu_dtype(x2.scalar_type());
  const int64_t ld = int16_rows ? (k + cpu::kPackDepth - 1) / cpu::kPackDepth * cpu::kPackDepth : k;
  const int64_t rows = m * (int16_rows ? cpu::fixed_point_i16_limbs(dtype) : limbs);
  // Uninitialized (every element is written): a zero fill cost as much as the conversion.
  FixedPointRows fixed{at::empty({rows, ld}, x2.options().dtype(int16_rows ? at::kShort : at::kChar)),
                       at::empty({m}, x2.options().dtype(at::kFloat)), ld};
  const auto& kernels = cpu::int8_gemm_kernels();
  float* scales = fixed.scales.data_ptr<float>();
  const bool representable = split_in_parallel(m, k, [&](int64_t i0, int64_t i1) {
    return int16_rows ? kernels.split_fixed_point_rows_i16(dtype, x2.data_ptr(), k, ld, i0, i1,
                                                           fixed.rows.data_ptr<int16_t>(), scales)
                      : kernels.split_fixed_point_rows(dtype, x2.data_ptr(), k, limbs, i0, i1,
                                                       fixed.rows.data_ptr<int8_t>(), scales);
  });
  if (!representable) return std::nullopt;
  return fixed;
}

// Per-channel scales: `product` is a block product (above) over the digit rows. Returns
// false (nothing written) where split_activations gives nothing.
template <typename Product>
bool w8a16_fixed_point(const at::Tensor& x2, int limbs, int64_t n, const at::Tensor& w_scale, const at::Tensor& bias_f,
                       at::Tensor& out, const Product& product) {
  const auto digits = split_activations(x2, limbs);
  if (!digits) return false;
  int8_gemm_into(digits->rows.data_ptr<int8_t>(), x2.size(0), x2.size(1), digits->scales.data_ptr<float>(), 1, n,
                 w_scale, 1, bias_f, out, product, limbs);
  return true;
}

// Per-channel W8A16 on packed weights where the ISA has gemm_packed_i16: int16 rows (1 per
// token for 16-bit activations, 2 for fp32) holding the integers of w8a16_fixed_point's digit
// rows, summed exactly and rounded once, so the same result bit for bit with fewer
// multiplies. Returns false (nothing written) where split_activations gives nothing.
bool w8a16_fixed_point_i16(const at::Tensor& x2, int limbs, const at::Tensor& w_packed, int64_t n,
                           const at::Tensor& w_scale, const at::Tensor& bias_f, at::Tensor& out) {
  const auto rows = split_activations(x2, limbs, true);
  if (!rows) return false;
  const int64_t m = x2.size(0), k = x2.size(1), lda = rows->ld;
  const int i16_limbs = cpu::fixed_point_i16_limbs(cpu_dtype(x2.scalar_type()));
  const auto& kernels = cpu::int8_gemm_kernels();
  const int16_t* a = rows->rows.data_ptr<int16_t>();
  const float* xs = rows->scales.data_ptr<float>();
  const int8_t* b = w_packed.data_ptr<int8_t>();
  const int64_t group_stride = w_packed.size(1) * cpu::kPackBlock;
  const float* ws = w_scale.data_ptr<float>();
  const EpilogueTarget target(out, bias_f);
  OutputBlocks(m, n).parallel([&](int64_t i0, int64_t mb, int64_t j0, int64_t nb) {
    float dots[kBlockM * kBlockN];
    target.prefetch_block(i0, mb, j0, nb);
    kernels.gemm_packed_i16(a + i0 * i16_limbs * lda, lda, mb, k, i16_limbs, b + j0 / cpu::kPackCols * group_stride,
                            group_stride, nb, dots, kBlockN);
    for (int64_t i = 0; i < mb; ++i) {
      kernels.epilogue_row_float(dots + i * kBlockN, nb, xs[i0 + i], ws + j0, 1, target.bias_from(j0), target.dtype,
                                 target.row(i0 + i, j0));
    }
  });
  return true;
}

// Per-group scales on packed weights (group_size a multiple of cpu::kPackDepth, so groups
// start on block boundaries): per output block, the kernel sums each group's products
// scaled per column; the row epilogue applies the token's scale and the bias. weights(j0,
// nb, next_cols) gives the block's columns: their first packed group, the groups' stride,
// and their column sums per group (GroupedWeights); no weight exceeds weight_bound in
// magnitude.
struct GroupedWeights {
  const int8_t* b;
  int64_t group_stride;
  const int32_t* sums;  // group q's column sums at sums + q * sums_stride
  int64_t sums_stride;
  cpu::PrefetchRange next;
};

template <typename Weights>
bool w8a16_fixed_point_grouped(const at::Tensor& x2, int limbs, int64_t n, const at::Tensor& w_scale,
                               int64_t group_size, int weight_bound, const at::Tensor& bias_f, at::Tensor& out,
                               const Weights& weights) {
  const auto& kernels = cpu::int8_gemm_kernels();
  const bool int16_rows = kernels.w8a16_packed_grouped_i16 != nullptr && group_size <= cpu::kGroupedI16MaxDepth;
  const int i16_limbs = cpu::fixed_point_i16_limbs(cpu_dtype(x2.scalar_type()));
  const auto fixed_point = split_activations(x2, limbs, int16_rows);
  if (!fixed_point) return false;
  const int64_t m = x2.size(0), k = x2.size(1), groups = w_scale.size(1), ld = fixed_point->ld;
  const float* x_scales = fixed_point->scales.data_ptr<float>();
  const float* ws = w_scale.data_ptr<float>();
  const EpilogueTarget target(out, bias_f);
  static const float kOne = 1.0f;
  const OutputBlocks blocks(m, n);
  blocks.parallel([&](int64_t i0, int64_t mb, int64_t j0, int64_t nb) {
    thread_local std::vector<float> totals, scales;  // per thread, kept between calls
    totals.resize(static_cast<size_t>(kBlockM * kBlockN));
    // The block's scales group-major ([groups, kBlockN]), so each group's are contiguous.
    scales.resize(static_cast<size_t>(groups * kBlockN));
    for (int64_t c = 0; c < nb; ++c) {
      for (int64_t g = 0; g < groups; ++g) scales[g * kBlockN + c] = ws[(j0 + c) * groups + g];
    }
    const GroupedWeights w = weights(j0, nb, blocks.next_cols(i0, mb, j0, nb));
    target.prefetch_block(i0, mb, j0, nb);
    cpu::W8A16GroupedArgs args{nullptr, mb, limbs, k, group_size, w.b, w.group_stride, w.sums, w.sums_stride,
                               scales.data(), kBlockN, nb, totals.data(), kBlockN, w.next, weight_bound};
    if (int16_rows) {
      kernels.w8a16_packed_grouped_i16(fixed_point->rows.data_ptr<int16_t>() + i0 * i16_limbs * ld, ld, i16_limbs,
                                       args);
    } else {
      args.a = fixed_point->rows.data_ptr<int8_t>() + i0 * limbs * k;
      kernels.w8a16_packed_grouped(args);
    }
    for (int64_t i = 0; i < mb; ++i) {
      kernels.epilogue_row_float(totals.data() + i * kBlockN, nb, x_scales[i0 + i], &kOne, 0, target.bias_from(j0),
                                 target.dtype, target.row(i0 + i, j0));
    }
  });
  return true;
}

// The same on a packed weight tensor with its column sums (w_sum [groups, N]).
bool w8a16_fixed_point_grouped(const at::Tensor& x2, int limbs, const at::Tensor& w_packed, const at::Tensor& w_sum,
                               const at::Tensor& w_scale, int64_t group_size, const at::Tensor& bias_f,
                               at::Tensor& out) {
  const int8_t* b = w_packed.data_ptr<int8_t>();
  const int64_t group_stride = w_packed.size(1) * cpu::kPackBlock, n = w_sum.size(1);
  const int32_t* sums = w_sum.data_ptr<int32_t>();
  return w8a16_fixed_point_grouped(x2, limbs, n, w_scale, group_size, cpu::kInt8WeightBound, bias_f, out,
                                   [&](int64_t j0, int64_t nb, int64_t next_cols) {
                                     return GroupedWeights{b + j0 / cpu::kPackCols * group_stride, group_stride,
                                                           sums + j0, n,
                                                           cpu::packed_columns(b, group_stride, j0 + nb, next_cols)};
                                   });
}

// Whether W8A16 should run as fixed point on the int8 GEMM rather than on torch's GEMM
// over dequantized weights (w8a16_float_gemm_*; measured on packed weights; the canonical op
// follows it for 16-bit activations with per-channel scales). `grouped`: per-group scales.
// With AMX, fp32 x goes to fixed point at every size: the float path is torch's fp32 GEMM,
// not on the tiles, and took 1.2-6x fixed point's time (64-4096 rows, 576-4096 -> 192-4096,
// per channel and group 128; RESULTS.md, session 65). 16-bit x meets torch's bf16 GEMM on
// the tiles. Per channel the cost that decides is the conversion (digits in, epilogue out,
// per element of x and of the output) against dequantizing the weights: fixed point while
// M (K + N) <= 2 N K (crossings at 1.1-3.4 times N K / (K + N) rows on SmolLM2's layers,
// beyond 1024 rows at 4096^2). Per group, fixed point also folds every group's products
// with their scale, a cost per product as the GEMM's, so the crossing sits near one row
// count whatever the shape: 260-450 rows on 576 -> 1536 / 576 / 192, 1536 -> 576 and
// 4096^2 (0.2-2.3 times N K / (K + N); measured with the float path of 5229bd9, weights
// dequantized straight into x's dtype in 8 MB chunks, since widened to 30 MB; RESULTS.md,
// session 66).
// With AVX-512 VNNI but no AMX, the float path runs 16-bit x widened to fp32
// (weight_blocks_gemm.h), and fixed point won wherever that rule had sent batches to it
// (Zen 4, 2 threads, 128-1024 rows, 576-4096 -> 192-1536, each timed beside torch's
// F.linear; RESULTS.md, session 55): bf16 x 0.38-0.66x the float path's time, per channel
// and group 128; fp32 x per channel 0.62-0.83x. Only per-group fp32 x (3 digit rows and a
// fold per group) lost (1.05-1.5x), so it keeps the conversion rule.
// Without VNNI (AVX2, measured on Zen 4, 2 threads, 576x192 to 4096x4096), fp32 activations
// take 2 int16 rows per token, and torch's fp32 GEMM on blocks of dequantized weights wins
// from about 32 rows (at 64 rows 0.80-0.92x fp32 F.linear against fixed point's 0.54-0.76x;
// at 17 rows 0.62-0.85x against 0.85-1.03x); 16-bit ones take 1, and torch's bf16 GEMM, with
// no native bf16 there, is 2.5-3.9x slower than even the old 2 digit rows at 32-512 rows.
bool w8a16_fixed_point_pays(int64_t m, int64_t k, int64_t n, at::ScalarType dtype, bool grouped) {
  constexpr int64_t kWithoutVnniFp32MaxM = 32, kAmxGroupedMaxM = 320;
  if (m <= kW8A16DirectMaxM) return true;
  const bool converting_pays = m * (k + n) <= n * k;
  switch (cpu::active_isa()) {
    case cpu::Isa::kAmx: return dtype == at::kFloat || (grouped ? m <= kAmxGroupedMaxM : m * (k + n) <= 2 * n * k);
    case cpu::Isa::kAvx512: return dtype != at::kFloat || !grouped || converting_pays;
    default: return dtype != at::kFloat || m <= kWithoutVnniFp32MaxM;
  }
}

// Rows [j0, j1) of int8 weights (k values each, at w_rows) dequantized a group at a time by
// the quant kernel into Out (float, at::BFloat16 or at::Half), as `dequantize` rounds them.
template <typename Out>
void dequantize_rows(const int8_t* w_rows, int64_t j0, int64_t j1, int64_t k, const float* scale, int64_t groups,
                     int64_t group_size, Out* out) {
  const auto& quant = cpu::quant_kernels();
  const cpu::DType dtype = cpu_dtype(c10::CppTypeToScalarType<Out>::value);
  for (int64_t j = j0; j < j1; ++j) {
    for (int64_t g = 0, start = 0; start < k; ++g, start += group_size) {
      quant.dequantize(dtype, w_rows + (j - j0) * k + start, std::min(group_size, k - start), scale + j * groups + g,
                       0, out + (j - j0) * k + start);
    }
  }
}

// W8A16 on torch's float GEMM (weight_blocks_gemm.h), for the batches fixed point does not
// pay for (or cannot hold): the weights rounded as dequantize does, then the GEMM's rounding.
void w8a16_float_gemm_canonical(const at::Tensor& x2, const at::Tensor& wq, int64_t n, const at::Tensor& scale,
                                int64_t groups, int64_t group_size, const std::optional<at::Tensor>& bias,
                                at::Tensor& out_2d) {
  const int8_t* w = wq.data_ptr<int8_t>();
  const int64_t k = x2.size(1);
  gemm_over_weight_blocks(x2, n, bias, out_2d, 1, [&](int64_t j0, int64_t j1, auto* rows) {
    dequantize_rows(w + j0 * k, j0, j1, k, scale.data_ptr<float>(), groups, group_size, rows);
  });
}

// Columns [j0, j1) of packed weights a column group at a time as canonical int8 rows of k
// values, in a buffer small enough to stay in cache: use(j, j_end, rows) for each group.
template <typename Use>
void for_unpacked_column_groups(const at::Tensor& w_packed, int64_t j0, int64_t j1, int64_t k, const Use& use) {
  const int64_t group_stride = w_packed.size(1) * cpu::kPackBlock;
  std::vector<int8_t> rows(static_cast<size_t>(cpu::kPackCols * k));
  for (int64_t j = j0; j < j1; j += cpu::kPackCols) {
    const int64_t j_end = std::min(j + cpu::kPackCols, j1);
    cpu::int8_gemm_kernels().unpack_packed(w_packed.data_ptr<int8_t>(), group_stride, j, j_end, k, rows.data());
    use(j, j_end, rows.data());
  }
}

// The same for packed weights.
void w8a16_float_gemm_packed(const at::Tensor& x2, const at::Tensor& w_packed, int64_t n, const at::Tensor& scale,
                             int64_t groups, int64_t group_size, const std::optional<at::Tensor>& bias,
                             at::Tensor& out_2d) {
  const int64_t k = x2.size(1);
  gemm_over_weight_blocks(x2, n, bias, out_2d, cpu::kPackCols, [&](int64_t j0, int64_t j1, auto* rows) {
    for_unpacked_column_groups(w_packed, j0, j1, k, [&](int64_t j, int64_t j_end, const int8_t* w_rows) {
      dequantize_rows(w_rows, j, j_end, k, scale.data_ptr<float>(), groups, group_size, rows + (j - j0) * k);
    });
  });
}

// The W8A16 kernel (weights converted in registers) on output columns [j0, j0 + nb), whose
// int8 rows of k values are at w_rows.
void w8a16_kernel_block(const at::Tensor& x2, const int8_t* w_rows, int64_t j0, int64_t nb, const at::Tensor& scale,
                        int64_t groups, int64_t group_size, const at::Tensor& bias_f, at::Tensor& out_2d) {
  const int64_t k = x2.size(1);
  const cpu::W8A16Args args{cpu_dtype(x2.scalar_type()),
                            x2.data_ptr(),
                            k,
                            w_rows,
                            k,
                            x2.size(0),
                            nb,
                            k,
                            scale.data_ptr<float>() + j0 * groups,
                            groups,
                            group_size,
                            bias_f.defined() ? bias_f.data_ptr<float>() + j0 : nullptr,
                            static_cast<char*>(out_2d.data_ptr()) + j0 * out_2d.element_size(),
                            out_2d.size(1)};
  cpu::int8_gemm_kernels().w8a16_gemm(args);
}

at::Tensor int8_weight_only_linear(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& w_scale,
                                   const std::optional<at::Tensor>& bias, std::optional<int64_t> group_size) {
  constexpr const char* op = "int8_weight_only_linear";
  check_cpu(op, "x", x);
  const auto [k, n, m, groups, group] = check_int8_weight_only_linear(x, wq, w_scale, bias, group_size);
  // 16-bit activations with per-channel scales as fixed point on the canonical int8 GEMM:
  // decode sizes everywhere, batches by the packed op's rule except with AMX, where the
  // canonical GEMM's batches are unmeasured against torch's bf16 GEMM on the tiles. With
  // AVX-512 VNNI (Zen 4, 2 threads, 64-1024 rows, 576-4096 -> 192-4096, bf16 and fp16 x) they
  // took 0.30-0.84x the float path's time (RESULTS.md, session 55).
  const bool batch_pays =
      cpu::active_isa() != cpu::Isa::kAmx && w8a16_fixed_point_pays(m, k, n, x.scalar_type(), false);
  const bool fixed_point = groups == 1 && k <= cpu::kMaxExactInt8K && x.scalar_type() != at::kFloat &&
                           (m <= kW8A16DirectMaxM || batch_pays);
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  const at::Tensor x2 = x.reshape({m, k}).contiguous(), w = wq.contiguous(), s = w_scale.contiguous();
  const at::Tensor bias_f = float_bias(bias);
  at::Tensor out_2d = out.view({m, n});
  if (fixed_point && w8a16_fixed_point(x2, 2, n, s, bias_f, out_2d, CanonicalProduct(w, k))) return out;
  // (or Inf / NaN in x, or a row too small for fixed point)
  if (m > kW8A16DirectMaxM) {
    w8a16_float_gemm_canonical(x2, w, n, s, groups, group, bias, out_2d);
    return out;
  }
  at::parallel_for(0, (n + kBlockN - 1) / kBlockN, 1, [&](int64_t begin, int64_t end) {
    for (int64_t block = begin; block < end; ++block) {
      const int64_t j0 = block * kBlockN;
      w8a16_kernel_block(x2, w.data_ptr<int8_t>() + j0 * k, j0, std::min(kBlockN, n - j0), s, groups, group, bias_f,
                         out_2d);
    }
  });
  return out;
}

// Decode sizes that fixed point does not take (groups that do not start on packed blocks,
// Inf / NaN in x): the W8A16 kernel on packed weights unpacked a column group at a time
// (unpacking the whole layer first cost 5 ms at 2048 x 2048, for a 0.2 ms product).
void w8a16_kernel_over_unpacked_groups(const at::Tensor& x2, const at::Tensor& w_packed, int64_t n,
                                       const at::Tensor& scale, int64_t groups, int64_t group_size,
                                       const at::Tensor& bias_f, at::Tensor& out_2d) {
  const int64_t k = x2.size(1);
  at::parallel_for(0, at::divup(n, kBlockN), 1, [&](int64_t begin, int64_t end) {
    for_unpacked_column_groups(w_packed, begin * kBlockN, std::min(end * kBlockN, n), k,
                               [&](int64_t j, int64_t j_end, const int8_t* w_rows) {
                                 w8a16_kernel_block(x2, w_rows, j, j_end - j, scale, groups, group_size, bias_f,
                                                    out_2d);
                               });
  });
}

at::Tensor int8_weight_only_linear_packed(const at::Tensor& x, const at::Tensor& w_packed, const at::Tensor& w_sum,
                                          const at::Tensor& w_scale, const std::optional<at::Tensor>& bias,
                                          std::optional<int64_t> group_size) {
  constexpr const char* op = "int8_weight_only_linear_packed";
  check_cpu(op, "x", x);
  const auto [k, n, m, groups, group] =
      check_int8_weight_only_linear_packed(x, w_packed, w_sum, w_scale, bias, group_size);
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  const at::Tensor x2 = x.reshape({m, k}).contiguous(), packed = w_packed.contiguous(), sums = w_sum.contiguous();
  const at::Tensor scale = w_scale.contiguous(), bias_f = float_bias(bias);
  at::Tensor out_2d = out.view({m, n});
  // Groups must start on packed blocks.
  const bool fixed_point = w8a16_fixed_point_pays(m, k, n, x.scalar_type(), group_size.has_value()) &&
                           (!group_size.has_value() || group % cpu::kPackDepth == 0);
  const int limbs = x.scalar_type() == at::kFloat ? 3 : 2;
  auto run_fixed_point = [&] {
    if (group_size.has_value()) return w8a16_fixed_point_grouped(x2, limbs, packed, sums, scale, group, bias_f, out_2d);
    if (cpu::int8_gemm_kernels().gemm_packed_i16 != nullptr) {
      return w8a16_fixed_point_i16(x2, limbs, packed, n, scale, bias_f, out_2d);
    }
    return w8a16_fixed_point(x2, limbs, n, scale, bias_f, out_2d, PackedProduct(packed, sums, k));
  };
  if (fixed_point && run_fixed_point()) return out;
  // (or Inf / NaN in x, which the float kernels propagate, or a row too small for fixed point)
  if (m > kW8A16DirectMaxM) {
    w8a16_float_gemm_packed(x2, packed, n, scale, groups, group, bias, out_2d);
  } else {
    w8a16_kernel_over_unpacked_groups(x2, packed, n, scale, groups, group, bias_f, out_2d);
  }
  return out;
}

// Canonical int8 [N, K] weights into the packed blocks of kernels/cpu/int8_gemm.h, with
// their sums per channel ([N]) or per group of K ([groups, N]), column groups over threads.
std::tuple<at::Tensor, at::Tensor> int8_pack_weight(const at::Tensor& wq_in, std::optional<int64_t> group_size) {
  constexpr const char* op = "int8_pack_weight";
  check_cpu(op, "wq", wq_in);
  TORCH_CHECK_TYPE(wq_in.scalar_type() == at::kChar, op, ": wq must be int8, got ", wq_in.scalar_type());
  TORCH_CHECK_VALUE(wq_in.dim() == 2, op, ": wq must be 2-D [N, K], got shape ", wq_in.sizes());
  TORCH_CHECK_VALUE(!group_size || *group_size > 0, op, ": group_size must be positive or None, got ",
                    group_size.value_or(0));
  const at::Tensor wq = wq_in.stride(1) == 1 ? wq_in : wq_in.contiguous();  // rows may be apart (a slice)
  const int64_t n = wq.size(0), k = wq.size(1);
  const int64_t column_groups = (n + cpu::kPackCols - 1) / cpu::kPackCols;
  at::Tensor packed = at::empty({column_groups, (k + cpu::kPackDepth - 1) / cpu::kPackDepth, cpu::kPackBlock},
                                wq.options());
  const int64_t groups = group_size ? (k + *group_size - 1) / *group_size : 1;
  at::Tensor sums = group_size ? at::empty({groups, n}, wq.options().dtype(at::kInt))
                               : at::empty({n}, wq.options().dtype(at::kInt));
  // Per channel: one group that holds all of K (k + 1: a positive size at K = 0 too)
  const int64_t size = group_size.value_or(k + 1);
  for_row_ranges(column_groups, cpu::kPackCols * k, [&](int64_t jb0, int64_t jb1) {
    cpu::pack_int8_weight(wq.data_ptr<int8_t>(), wq.stride(0), n, k, size, groups, jb0, jb1,
                          packed.data_ptr<int8_t>(), sums.data_ptr<int32_t>());
  });
  return {packed, sums};
}

// int8_pack_weight's blocks back to the canonical int8 [N, K] rows (a new tensor). Torch ops
// only: one definition serves every device, torch.compile and the backward of the packed ops.
at::Tensor int8_unpack_weight(const at::Tensor& w_packed, int64_t n, int64_t k) {
  constexpr const char* op = "int8_unpack_weight";
  TORCH_CHECK_VALUE(n >= 0 && k >= 0, op, ": n and k must be >= 0, got n = ", n, ", k = ", k);
  check_packed_layout(op, w_packed, n, k, w_packed);
  const int64_t blocks = w_packed.size(0), quads = w_packed.size(1);
  // A channel's 4 values of a block as one int32: a transpose of [quads, 16] int32 per
  // column group (a byte-wise permute of the same data took 6-11 times as long). clone, not
  // contiguous(): with one quad the transpose already counts as contiguous, with stride 16.
  return w_packed.contiguous()
      .view(at::kInt)
      .transpose(1, 2)
      .clone(at::MemoryFormat::Contiguous)
      .view(at::kChar)
      .reshape({blocks * cpu::kPackCols, quads * cpu::kPackDepth})
      .slice(0, 0, n)
      .slice(1, 0, k)
      .contiguous();
}

}  // namespace

bool fixed_point_gemm_over_panels(const at::Tensor& x2, int64_t n, const at::Tensor& w_scale, int64_t group_size,
                                  int weight_bound, const at::Tensor& bias_f, at::Tensor& out_2d,
                                  const FillPanel& fill) {
  const int64_t k = x2.size(1), group_stride = (k + cpu::kPackDepth - 1) / cpu::kPackDepth * cpu::kPackBlock;
  const int64_t padded_k = group_stride / cpu::kPackBlock * cpu::kPackDepth;
  const bool grouped = w_scale.dim() == 2;
  const int64_t group = grouped ? group_size : padded_k, groups = (padded_k + group - 1) / group;
  struct Panel {
    std::unique_ptr<int8_t[]> blocks;  // uninitialized: fill writes every byte the GEMM reads
    std::unique_ptr<int32_t[]> sums;   // [groups, kBlockN]
    int64_t j0 = -1;
  };
  // One per thread of this call: a thread's blocks run column-block-major (OutputBlocks), so
  // it fills a panel once for all the row blocks it computes on it.
  std::vector<Panel> panels(static_cast<size_t>(at::get_num_threads()));
  const auto filled = [&](int64_t j0, int64_t nb) -> Panel& {
    Panel& panel = panels[static_cast<size_t>(at::get_thread_num())];
    if (panel.blocks == nullptr) {
      panel.blocks.reset(new int8_t[static_cast<size_t>(kBlockN / cpu::kPackCols * group_stride)]);
      panel.sums.reset(new int32_t[static_cast<size_t>(groups * kBlockN)]);
    }
    if (panel.j0 != j0) {
      fill(j0, nb, cpu::Int8Panel{panel.blocks.get(), group_stride, panel.sums.get(), group, kBlockN});
      panel.j0 = j0;
    }
    return panel;
  };
  // fp16 takes fp32's 3 digits: with 2, its values below absmax / 2^4 lose significant bits,
  // and a product that cancels to near 0 kept errors of 3x fp16's tolerance at K = 4097.
  const int limbs = x2.scalar_type() == at::kBFloat16 ? 2 : 3;
  if (grouped) {
    return w8a16_fixed_point_grouped(x2, limbs, n, w_scale, group, weight_bound, bias_f, out_2d,
                                     [&](int64_t j0, int64_t nb, int64_t /*next_cols*/) {
                                       const Panel& panel = filled(j0, nb);
                                       return GroupedWeights{panel.blocks.get(), group_stride, panel.sums.get(),
                                                             kBlockN, {}};
                                     });
  }
  // A block product (above) on the thread's panel.
  struct PanelProduct {
    const decltype(filled)& panel_at;  // the thread's panel of columns [j0, j0 + nb)
    int64_t k, group_stride;
    const cpu::Int8GemmKernels& kernels = cpu::int8_gemm_kernels();

    void operator()(const int8_t* a, int64_t rows, int64_t j0, int64_t nb, int32_t* acc, int64_t) const {
      const Panel& panel = panel_at(j0, nb);
      kernels.gemm_packed(a, k, rows, k, panel.blocks.get(), group_stride, panel.sums.get(), nb, acc, kBlockN, {});
    }
    bool scaled(const int8_t* a, int64_t rows, int64_t j0, int64_t nb, const cpu::ScaledOutput& out, int64_t) const {
      if (kernels.gemm_packed_scaled == nullptr) return false;
      const Panel& panel = panel_at(j0, nb);
      return kernels.gemm_packed_scaled(a, k, rows, k, panel.blocks.get(), group_stride, panel.sums.get(), nb, out,
                                        {});
    }
  };
  return w8a16_fixed_point(x2, limbs, n, w_scale, bias_f, out_2d, PanelProduct{filled, k, group_stride});
}

TORCH_LIBRARY_IMPL(effgen, CompositeImplicitAutograd, m) {
  m.impl("int8_unpack_weight", &int8_unpack_weight);
}

TORCH_LIBRARY_IMPL(effgen, CPU, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int8_dynamic_linear", &int8_dynamic_linear);
  m.impl("int8_linear_packed", &int8_linear_packed);
  m.impl("int8_dynamic_linear_packed", &int8_dynamic_linear_packed);
  m.impl("int8_pack_weight", &int8_pack_weight);
  m.impl("int8_weight_only_linear", &int8_weight_only_linear);
  m.impl("int8_weight_only_linear_packed", &int8_weight_only_linear_packed);
}

}  // namespace effgen::ops
