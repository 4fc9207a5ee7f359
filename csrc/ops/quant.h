// Entry points of the quant family that other op families' CPU glue reuses directly.
#pragma once
#include <ATen/core/Tensor.h>

#include <atomic>
#include <cstdint>
#include <limits>
#include <tuple>

namespace effgen::ops {

// Remembers the first item (row, channel) whose values were not all finite, as items run in
// parallel; check() raises the error that names it.
class NonFiniteTracker {
 public:
  void note(int64_t item, uint32_t absmax_bits);
  void check(const char* op, const char* name, const char* item_kind) const;

 private:
  static constexpr int64_t kNone = std::numeric_limits<int64_t>::max();
  std::atomic<int64_t> first_{kNone};
};

// Rows [begin, end) of x (contiguous, a float dtype, rows along its last dim) quantized in
// groups of group_size values (0: one group per row, per token) into q (int8, x's shape) and
// scale (fp32, [rows, groups]) as quantize_per_token / quantize_per_group do: absmax, scale
// and codes while a group is in cache. Rows holding NaN or Inf go to non_finite. With
// smoothing (fp32, one factor per element of a row), the rows quantized are x * smoothing,
// multiplied in fp32 (SmoothQuant; see reference.int8_dynamic_linear).
void quantize_row_range(const at::Tensor& x, int64_t group_size, int64_t begin, int64_t end, at::Tensor& q,
                        at::Tensor& scale, NonFiniteTracker& non_finite, const float* smoothing = nullptr);

// What quantize_row_range's errors call the rows it quantized: x, or x * smoothing.
inline const char* quantized_rows_name(const float* smoothing) {
  return smoothing == nullptr ? "x" : "x * smoothing";
}

// The CPU kernel of effgen::quantize_per_token (same checks, same results) with smoothing
// null; else that of quantize_per_token(x.float() * smoothing).
std::tuple<at::Tensor, at::Tensor> quantize_per_token_cpu(const at::Tensor& x, const float* smoothing);
// The CPU kernel of effgen::dequantize.
at::Tensor dequantize_cpu(const at::Tensor& q, const at::Tensor& scale, std::optional<int64_t> axis,
                          std::optional<int64_t> group_size, at::ScalarType out_dtype);

#ifdef EFFGEN_WITH_CUDA
// The CUDA kernels of the same two ops.
std::tuple<at::Tensor, at::Tensor> quantize_per_token_cuda(const at::Tensor& x);
at::Tensor dequantize_cuda(const at::Tensor& q, const at::Tensor& scale, std::optional<int64_t> axis,
                           std::optional<int64_t> group_size, at::ScalarType out_dtype);
#endif

}  // namespace effgen::ops
