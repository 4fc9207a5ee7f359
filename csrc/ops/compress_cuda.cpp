// CUDA glue of the compress family: the CPU glue's checks (compress_common.h), then
// launches on the current stream. Works with NCCL: the DDP hook's codecs run where the
// gradients are. Its tests passed on an H200 in session 10; session 21's rules for blocks
// holding Inf / NaN (NaN scale, residual 0) are compiled, not yet run on a GPU.
#include <ATen/core/Tensor.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/full_like.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/sqrt.h>
#include <ATen/ops/square.h>
#include <ATen/ops/sum.h>
#include <ATen/ops/where.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <limits>

#include "../kernels/cpu/compress.h"  // kSignScaleCap
#include "../kernels/cuda/compress.cuh"
#include "compress_common.h"
#include "cuda_glue.h"

namespace effgen::ops {
namespace {

// Sign codec for blocks whose packed bytes straddle two blocks (block % 8 != 0; the fused
// kernel takes the rest): forms v = x + error in the error buffer itself (fp32 addition
// commutes, so the bits equal the reference's x.float() + error) and returns the per-block
// scale min(rms(v), kSignScaleCap * mean |v|), in double like the CPU kernel and
// reference.ef_compress_sign (see there for when the summation order can show), NaN for a
// block holding Inf/NaN.
at::Tensor sign_scales_in_place(const at::Tensor& x, at::Tensor& error, int64_t block) {
  error.add_(x);
  const int64_t n = error.numel(), blocks = blocks_of(n, block);
  at::Tensor counts = at::full({blocks}, static_cast<double>(block), error.options().dtype(at::kDouble));
  if (n % block != 0) counts.narrow(0, blocks - 1, 1).fill_(static_cast<double>(n % block));
  at::Tensor v = error.to(at::kDouble);
  if (n % block != 0) v = at::constant_pad_nd(v, {0, blocks * block - n}, 0);
  v = v.reshape({blocks, block});
  const at::Tensor rms = at::sqrt(at::div(at::sum(at::square(v), {1}), counts));
  const at::Tensor magnitudes = at::sum(at::abs(v), {1});
  const at::Tensor capped = at::mul(at::div(magnitudes, counts), cpu::kSignScaleCap);
  const at::Tensor nan = at::full_like(rms, std::numeric_limits<double>::quiet_NaN());
  return at::where(at::isfinite(magnitudes), at::minimum(rms, capped), nan).to(at::kFloat).contiguous();
}

std::tuple<at::Tensor, at::Tensor> ef_compress_int8(const at::Tensor& x_in, at::Tensor& error, int64_t block) {
  constexpr const char* op = "ef_compress_int8";
  check_codec_args(op, x_in, error, block);
  check_cuda(op, "x", x_in);
  const c10::cuda::CUDAGuard guard(x_in.device());
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.numel();
  at::Tensor q = at::empty({n}, x.options().dtype(at::kChar));
  at::Tensor scales = at::empty({blocks_of(n, block)}, x.options().dtype(at::kFloat));
  check_launch(op, cuda::ef_compress_int8(cuda_dtype(x.scalar_type()), x.data_ptr(), error.data_ptr<float>(), n, block,
                                          q.data_ptr<int8_t>(), scales.data_ptr<float>(),
                                          c10::cuda::getCurrentCUDAStream()));
  return {q, scales};
}

std::tuple<at::Tensor, at::Tensor> ef_compress_sign(const at::Tensor& x, at::Tensor& error, int64_t block) {
  constexpr const char* op = "ef_compress_sign";
  check_codec_args(op, x, error, block);
  check_cuda(op, "x", x);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t n = x.numel();
  at::Tensor packed = at::empty({(n + 7) / 8}, error.options().dtype(at::kByte));
  if (block % 8 == 0) {  // no packed byte spans two blocks: one fused pass
    const at::Tensor xc = x.contiguous();
    at::Tensor scales = at::empty({blocks_of(n, block)}, error.options());
    check_launch(op, cuda::ef_compress_sign(cuda_dtype(xc.scalar_type()), xc.data_ptr(), error.data_ptr<float>(), n,
                                            block, cpu::kSignScaleCap, packed.data_ptr<uint8_t>(),
                                            scales.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
    return {packed, scales};
  }
  const at::Tensor scales = sign_scales_in_place(x, error, block);
  check_launch(op, cuda::sign_pack_update(error.data_ptr<float>(), scales.data_ptr<float>(), n, block,
                                          packed.data_ptr<uint8_t>(), error.data_ptr<float>(),
                                          c10::cuda::getCurrentCUDAStream()));
  return {packed, scales};
}

at::Tensor decompress_sum_int8(const at::Tensor& q_in, const at::Tensor& scales_in, int64_t block) {
  constexpr const char* op = "decompress_sum_int8";
  check_cuda(op, "q", q_in);
  const int64_t n = check_int8_chunks(op, q_in, scales_in, block);
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous(), scales = scales_in.contiguous();
  at::Tensor total = at::empty({n}, q.options().dtype(at::kFloat));
  check_launch(op, cuda::decompress_sum_int8(q.data_ptr<int8_t>(), scales.data_ptr<float>(), q.size(0), n, block,
                                             total.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return total;
}

at::Tensor decompress_sum_sign(const at::Tensor& packed_in, const at::Tensor& scales_in, int64_t n, int64_t block) {
  constexpr const char* op = "decompress_sum_sign";
  check_cuda(op, "packed", packed_in);
  check_sign_chunks(op, packed_in, scales_in, n, block);
  const c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous(), scales = scales_in.contiguous();
  at::Tensor total = at::empty({n}, packed.options().dtype(at::kFloat));
  check_launch(op, cuda::decompress_sum_sign(packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), packed.size(0), n,
                                             block, total.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return total;
}

// The `_out` forms run the plain op and copy into the caller's buffers: one more pass over
// HBM. They exist for the CPU, where fresh outputs cost page faults and the message copies a
// pass on one core; here the caching allocator reuses memory (and the copies are a fraction
// of an all-to-all). Unverified: compiled, not yet run on a GPU.
void copy_into_rows(const std::tuple<at::Tensor, at::Tensor>& flat, at::Tensor& payload, at::Tensor& scales) {
  payload.copy_(std::get<0>(flat).view(payload.sizes()));
  scales.copy_(std::get<1>(flat).view(scales.sizes()));
}

void ef_compress_int8_out(const at::Tensor& x, at::Tensor& error, int64_t block, at::Tensor& q, at::Tensor& scales) {
  constexpr const char* op = "ef_compress_int8_out";
  check_codec_args(op, x, error, block);
  check_cuda(op, "x", x);
  check_encoder_outputs(op, x, block, "q", q, at::kChar, 1, scales);
  copy_into_rows(ef_compress_int8(x, error, block), q, scales);
}

void ef_compress_sign_out(const at::Tensor& x, at::Tensor& error, int64_t block, at::Tensor& packed,
                          at::Tensor& scales) {
  constexpr const char* op = "ef_compress_sign_out";
  check_codec_args(op, x, error, block);
  check_cuda(op, "x", x);
  check_encoder_outputs(op, x, block, "packed", packed, at::kByte, 8, scales);
  copy_into_rows(ef_compress_sign(x, error, block), packed, scales);
}

void decompress_sum_int8_out(const at::Tensor& q, const at::Tensor& scales, int64_t block, at::Tensor& total) {
  constexpr const char* op = "decompress_sum_int8_out";
  check_cuda(op, "q", q);
  check_total_out(op, total, check_int8_chunks(op, q, scales, block), q);
  total.copy_(decompress_sum_int8(q, scales, block));
}

void decompress_sum_sign_out(const at::Tensor& packed, const at::Tensor& scales, int64_t n, int64_t block,
                             at::Tensor& total) {
  constexpr const char* op = "decompress_sum_sign_out";
  check_cuda(op, "packed", packed);
  check_sign_chunks(op, packed, scales, n, block);
  check_total_out(op, total, n, packed);
  total.copy_(decompress_sum_sign(packed, scales, n, block));
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, CUDA, m) {
  m.impl("ef_compress_int8", &ef_compress_int8);
  m.impl("ef_compress_int8_out", &ef_compress_int8_out);
  m.impl("ef_compress_sign", &ef_compress_sign);
  m.impl("ef_compress_sign_out", &ef_compress_sign_out);
  m.impl("decompress_sum_int8", &decompress_sum_int8);
  m.impl("decompress_sum_int8_out", &decompress_sum_int8_out);
  m.impl("decompress_sum_sign", &decompress_sum_sign);
  m.impl("decompress_sum_sign_out", &decompress_sum_sign_out);
}

}  // namespace effgen::ops
