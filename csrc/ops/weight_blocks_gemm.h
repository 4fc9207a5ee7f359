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
#include <ATen/ops/mm.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <type_traits>

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

// Whether contiguous 16-bit (bf16 / fp16) x holds an Inf or a NaN: a value whose exponent
// bits are all set. One pass over the bits, in chunks that the compiler vectorises; at::isfinite
// on bf16 runs four passes (==, abs, !=, *) and took 3-4 ms of a 5.7 ms product (4096 x 576
// -> 192, bf16, AMX VM, 2 threads; RESULTS.md, session 65).
inline bool has_non_finite_16bit(const at::Tensor& x) {
  TORCH_INTERNAL_ASSERT(x.is_contiguous() && x.element_size() == 2);
  const uint16_t exponent = x.scalar_type() == at::kBFloat16 ? 0x7f80 : 0x7c00;
  const auto* bits = static_cast<const uint16_t*>(x.const_data_ptr());
  constexpr int64_t kChunk = 4096;
  return at::parallel_reduce(
      0, x.numel(), int64_t{1} << 16, false,
      [&](int64_t begin, int64_t end, bool found) {
        for (int64_t start = begin; start < end && !found; start += kChunk) {
          int count = 0;  // branch-free within a chunk, so that the loop vectorises
          for (int64_t i = start; i < std::min(end, start + kChunk); ++i) count += (bits[i] & exponent) == exponent;
          found = count > 0;
        }
        return found;
      },
      [](bool a, bool b) { return a || b; });
}

// Expanded 16-bit weights per chunk in gemm_over_weight_chunks: 30 MB, below glibc's
// largest mmap threshold (32 MB). A buffer at or above it is mapped afresh and faulted in on
// every call (8192 faults for 32 MB: W8A16 256 x 4096^2 bf16 on the float path 22-23 ms,
// against 12-13 ms in 8 MB chunks); below it, glibc raises its threshold to the buffer's
// size at the first free and serves later calls from its heap. As few chunks as fit, since
// oneDNN packs x again for every chunk: 1024 x 11008 -> 4096 with group 128 took 115-129 ms
// in eleven 8 MB chunks, 67-70 ms in three (AMX VM, 2 threads; RESULTS.md, session 66).
constexpr int64_t kChunkElems = int64_t{15} << 20;

// Whether fill_rows can write 16-bit rows itself (fill_rows(j0, j1, at::BFloat16* or
// at::Half*)), rather than only floats.
template <typename FillRows>
constexpr bool kFills16Bit = std::is_invocable_v<const FillRows&, int64_t, int64_t, at::BFloat16*> &&
                             std::is_invocable_v<const FillRows&, int64_t, int64_t, at::Half*>;

// Rows [j0, j0 + nb) of the weights into `dest` (nb rows of k, x's 16-bit dtype): written
// there by fill_rows where it can (one pass, no float copy: it was 14% of the float path's
// profile), else as floats into `floats` (at least nb rows of k) and rounded into dest.
template <typename FillRows>
void fill_16bit_rows(const FillRows& fill_rows, int64_t j0, int64_t nb, at::Tensor& dest, const at::Tensor& floats) {
  if constexpr (kFills16Bit<FillRows>) {
    if (dest.scalar_type() == at::kBFloat16) {
      fill_rows(j0, j0 + nb, dest.data_ptr<at::BFloat16>());
    } else {
      fill_rows(j0, j0 + nb, dest.data_ptr<at::Half>());
    }
  } else {
    fill_rows(j0, j0 + nb, floats.data_ptr<float>());
    dest.copy_(floats.narrow(0, 0, nb));
  }
}

// out [m, n] = x [m, k] @ w^T (+ bias_x), 16-bit x with AMX: the weights expanded a chunk of
// columns at a time into x's dtype, every thread filling its blocks of the chunk, and each
// chunk multiplied by one GEMM on all threads. One GEMM a thread's block, as fp32 x runs,
// took 1.3-3x the time of bf16 F.linear over the whole layer there (oneDNN packs x again
// for every block; 64-4096 rows, 576-4096 -> 192-4096, AMX VM, 2 threads; RESULTS.md,
// session 65).
template <typename FillRows>
void gemm_over_weight_chunks(const at::Tensor& x, int64_t n, const at::Tensor& bias_x, at::Tensor& out,
                             int64_t align, const FillRows& fill_rows) {
  const int64_t k = x.size(1);
  // As few chunks as hold at most kChunkElems each (but for rounding to `align`), of one width.
  const int64_t most_cols = std::clamp<int64_t>(kChunkElems / std::max<int64_t>(k, 1), 1, n);
  const int64_t chunk_cols = at::divup(at::divup(n, at::divup(n, most_cols)), align) * align;
  const int64_t fill_cols = weight_block_cols(std::min(chunk_cols, n), k, align);
  at::Tensor chunk = at::empty({std::min(chunk_cols, n), k}, x.options());
  for (int64_t c0 = 0; c0 < n; c0 += chunk_cols) {
    const int64_t cn = std::min(chunk_cols, n - c0);
    at::parallel_for(0, at::divup(cn, fill_cols), 1, [&](int64_t begin, int64_t end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // as in gemm_over_weight_blocks
      const at::Tensor floats =
          kFills16Bit<FillRows> ? at::Tensor() : at::empty({fill_cols, k}, x.options().dtype(at::kFloat));
      for (int64_t block = begin; block < end; ++block) {
        const int64_t j0 = c0 + block * fill_cols, nb = std::min(fill_cols, c0 + cn - j0);
        at::Tensor dest = chunk.narrow(0, j0 - c0, nb);
        fill_16bit_rows(fill_rows, j0, nb, dest, floats);
      }
    });
    const at::Tensor w = chunk.narrow(0, 0, cn).t();
    at::Tensor out_chunk = out.narrow(1, c0, cn);
    if (bias_x.defined()) {
      at::addmm_out(out_chunk, bias_x.narrow(0, c0, cn), x, w);
    } else {
      at::mm_out(out_chunk, x, w);
    }
  }
}

// out_2d [m, n] = x2 [m, k] @ w^T (+ bias), where fill_rows(j0, j1, rows) writes rows
// [j0, j1) of w as floats, k a row (j0 a multiple of `align`). The GEMM runs in x's dtype
// (each block rounded to it, as a dequantized copy would be), the bias too; except that
// without AMX (whose bf16 tiles torch's GEMM uses) 16-bit x is widened to fp32 and only the
// output is rounded to its dtype: torch's bf16 GEMM on AVX2 was 7-9x slower than fp32 at
// 64 x 576 x 1536. With AMX, x with an Inf or NaN is widened too: torch's bf16 GEMM there
// (torch 2.14.1, oneDNN) let a row's NaN spoil the row before it (20 x 2100 rows, NaN in
// row 3: rows 2 and 3 came out NaN), where each row's output must depend on that row only.
// 16-bit x that stays 16-bit goes to gemm_over_weight_chunks.
template <typename FillRows>
void gemm_over_weight_blocks(const at::Tensor& x2, int64_t n, const std::optional<at::Tensor>& bias,
                             at::Tensor& out_2d, int64_t align, const FillRows& fill_rows) {
  const int64_t k = x2.size(1), cols = weight_block_cols(n, k, align);
  const bool sixteen_bit = x2.scalar_type() != at::kFloat;
  const bool widen = sixteen_bit && (cpu::active_isa() != cpu::Isa::kAmx || has_non_finite_16bit(x2));
  const at::Tensor x = widen ? x2.to(at::kFloat) : x2;
  at::Tensor out = widen ? at::empty(out_2d.sizes(), x.options()) : out_2d;
  const at::Tensor bias_x = bias.has_value() ? bias->to(x.scalar_type()) : at::Tensor();
  if (sixteen_bit && !widen) {
    gemm_over_weight_chunks(x, n, bias_x, out, align, fill_rows);
    return;
  }
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
