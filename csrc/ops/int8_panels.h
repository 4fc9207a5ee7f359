// The int8 GEMM (kernels/cpu/int8_gemm.h) for weights kept in another compact form, such as
// 1-bit and ternary ones: each thread fills a panel of a block's columns as packed int8
// blocks in cache and multiplies all of its rows on it, so the weights stream from memory
// in their own form and only a panel exists as int8 at a time.
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <functional>

#include "../kernels/cpu/int8_gemm.h"

namespace effgen::ops {

// fill(j0, nb, panel): columns [j0, j0 + nb) (j0 a multiple of cpu::kPackCols) as packed
// int8 blocks, whole column groups, with their sums per K group (cpu::Int8Panel, whose
// `group` the caller sets: group_size, or K rounded up to whole blocks for one group); no
// value it writes exceeds the caller's weight_bound in magnitude (1 for +1 / -1 / 0).
using FillPanel = std::function<void(int64_t j0, int64_t nb, const cpu::Int8Panel& panel)>;

// out_2d [M, N] = x2 [M, K] @ (w * scale)^T (+ bias_f), x2 contiguous, as W8A16 on packed
// weights does it: x as fixed point per token (2 int8 digits for bf16 x, 3 for fp32 and
// fp16), one int8 GEMM, K <= cpu::kMaxExactInt8K. w_scale fp32: [N] per channel, or
// [N, groups] per group of group_size values of K (a multiple of cpu::kPackDepth); a small
// weight_bound lets per-group sums of fp32 x combine in int32 (int8_digits.h). Returns
// false, nothing written, where a row of x is not representable so (Inf, NaN, absmax
// below 2^-100).
bool fixed_point_gemm_over_panels(const at::Tensor& x2, int64_t n, const at::Tensor& w_scale, int64_t group_size,
                                  int weight_bound, const at::Tensor& bias_f, at::Tensor& out_2d,
                                  const FillPanel& fill);

}  // namespace effgen::ops
