// Products on torch's float GEMM for weights stored in a compact form (int8, bits): each
// thread expands a block of weight rows (output columns) into a float buffer that stays in
// cache and multiplies it there, so the weights never exist as a whole float copy (a
// 4096 x 4096 layer's would be 64 MB) and only the compact form streams from memory.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/addmm.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/mm.h>

#include <algorithm>
#include <optional>

#include "../kernels/cpu/isa.h"

namespace effgen::ops {

// Columns per block: at most about 2 MB of float weights, a multiple of `align`, and as many
// blocks as a multiple of the threads, so that none waits for another. Blocks of 128-512
// columns multiply as fast as one GEMM over all of them (64 are 5-10% slower; measured with
// torch's fp32 GEMM on AVX2).
inline int64_t weight_block_cols(int64_t n, int64_t k, int64_t align) {
  constexpr int64_t kBlockFloats = int64_t{1} << 19;
  const int64_t threads = at::get_num_threads();
  const int64_t most = std::clamp<int64_t>(kBlockFloats / std::max<int64_t>(k, 1), 128, 512);
  const int64_t blocks = at::divup(at::divup(n, most), threads) * threads;
  return at::divup(at::divup(n, blocks), align) * align;
}

// out_2d [m, n] = x2 [m, k] @ w^T (+ bias), where fill_rows(j0, j1, rows) writes rows
// [j0, j1) of w as floats, k a row (j0 a multiple of `align`). The GEMM runs in x's dtype
// (each block rounded to it, as a dequantized copy would be), the bias too; except that
// without AMX (whose bf16 tiles torch's GEMM uses) 16-bit x is widened to fp32 and only the
// output is rounded to its dtype: torch's bf16 GEMM on AVX2 was 7-9x slower than fp32 at
// 64 x 576 x 1536. With AMX, x with an Inf or NaN is widened too: torch's bf16 GEMM there
// (torch 2.14.1, oneDNN) let a row's NaN spoil the row before it (20 x 2100 rows, NaN in
// row 3: rows 2 and 3 came out NaN), where each row's output must depend on that row only.
template <typename FillRows>
void gemm_over_weight_blocks(const at::Tensor& x2, int64_t n, const std::optional<at::Tensor>& bias,
                             at::Tensor& out_2d, int64_t align, const FillRows& fill_rows) {
  const int64_t k = x2.size(1), cols = weight_block_cols(n, k, align);
  const bool widen = x2.scalar_type() != at::kFloat &&
                     (cpu::active_isa() != cpu::Isa::kAmx || !at::isfinite(x2).all().item<bool>());
  const at::Tensor x = widen ? x2.to(at::kFloat) : x2;
  at::Tensor out = widen ? at::empty(out_2d.sizes(), x.options()) : out_2d;
  const at::Tensor bias_x = bias.has_value() ? bias->to(x.scalar_type()) : at::Tensor();
  at::parallel_for(0, at::divup(n, cols), 1, [&](int64_t begin, int64_t end) {
    // parallel_for's threads do not inherit the caller's dispatch state: without this an x
    // that requires grad (the op's forward under its autograd kernel) sends addmm_out to
    // its autograd kernel, which refuses out= arguments.
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    at::Tensor rows = at::empty({cols, k}, x.options().dtype(at::kFloat));
    for (int64_t block = begin; block < end; ++block) {
      const int64_t j0 = block * cols, nb = std::min(cols, n - j0);
      fill_rows(j0, j0 + nb, rows.data_ptr<float>());
      const at::Tensor w = rows.narrow(0, 0, nb).to(x.scalar_type()).t();
      at::Tensor out_block = out.narrow(1, j0, nb);
      if (bias_x.defined()) {
        at::addmm_out(out_block, bias_x.narrow(0, j0, nb), x, w);
      } else {
        at::mm_out(out_block, x, w);
      }
    }
  });
  if (widen) out_2d.copy_(out);
}

}  // namespace effgen::ops
