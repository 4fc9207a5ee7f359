// CUDA glue of the compress family: the CPU glue's checks (compress_common.h), then
// launches on the current stream. Works with NCCL: the DDP hook's codecs run where the
// gradients are. Its tests, session 21's rules for blocks holding Inf / NaN (NaN scale,
// residual 0) and session 36's sign levels (mean -/+ spread) included, passed on an H200 in
// session 44.
#include <ATen/core/Tensor.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/minimum.h>
#include <ATen/ops/stack.h>
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

// Sum of each block of the 1-D `values` in double, the last block short (zeros pad it).
at::Tensor block_sums(const at::Tensor& values, int64_t block) {
  const int64_t n = values.numel(), blocks = blocks_of(n, block);
  at::Tensor v = values.to(at::kDouble);
  if (n % block != 0) v = at::constant_pad_nd(v, {0, blocks * block - n}, 0);
  return v.reshape({blocks, block}).sum(1);
}

// Sign codec for blocks whose packed bytes straddle two blocks (block % 8 != 0; the fused
// kernel takes the rest): forms v = x + error in the error buffer itself (fp32 addition
// commutes, so the bits equal the reference's x.float() + error) and returns each block's
// (mean [blocks], levels [2 * blocks]) as reference.ef_compress_sign defines them, in the
// same fp32 / double steps (see there for when the summation order can show); NaN levels
// for a block holding Inf/NaN.
std::tuple<at::Tensor, at::Tensor> sign_levels_in_place(const at::Tensor& x, at::Tensor& error, int64_t block) {
  error.add_(x);
  const int64_t n = error.numel(), blocks = blocks_of(n, block);
  at::Tensor counts = at::full({blocks}, static_cast<double>(block), error.options().dtype(at::kDouble));
  if (n % block != 0) counts.narrow(0, blocks - 1, 1).fill_(static_cast<double>(n % block));
  const at::Tensor sums = block_sums(error, block);
  const at::Tensor mean = sums.div(counts).to(at::kFloat);
  // fp32 differences, then squared in double (exactly)
  const at::Tensor d = error.sub(mean.repeat_interleave(block).narrow(0, 0, n)).to(at::kDouble);
  const at::Tensor rms = block_sums(d.square(), block).div(counts).sqrt();
  const at::Tensor capped = block_sums(d.abs(), block).div(counts).mul(cpu::kSignScaleCap);
  const at::Tensor spread = at::minimum(rms, capped).to(at::kFloat);
  const at::Tensor levels = at::stack({mean.sub(spread), mean.add(spread)}, 1);
  const at::Tensor finite = at::isfinite(sums).unsqueeze(1);
  return {mean, at::where(finite, levels, std::numeric_limits<float>::quiet_NaN()).reshape({2 * blocks})};
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
    at::Tensor levels = at::empty({2 * blocks_of(n, block)}, error.options());
    check_launch(op, cuda::ef_compress_sign(cuda_dtype(xc.scalar_type()), xc.data_ptr(), error.data_ptr<float>(), n,
                                            block, cpu::kSignScaleCap, packed.data_ptr<uint8_t>(),
                                            levels.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
    return {packed, levels};
  }
  const auto [means, levels] = sign_levels_in_place(x, error, block);
  check_launch(op, cuda::sign_pack_update(error.data_ptr<float>(), means.data_ptr<float>(), levels.data_ptr<float>(),
                                          n, block, packed.data_ptr<uint8_t>(), error.data_ptr<float>(),
                                          c10::cuda::getCurrentCUDAStream()));
  return {packed, levels};
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

at::Tensor decompress_sum_sign(const at::Tensor& packed_in, const at::Tensor& levels_in, int64_t n, int64_t block) {
  constexpr const char* op = "decompress_sum_sign";
  check_cuda(op, "packed", packed_in);
  check_sign_chunks(op, packed_in, levels_in, n, block);
  const c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous(), levels = levels_in.contiguous();
  at::Tensor total = at::empty({n}, packed.options().dtype(at::kFloat));
  check_launch(op, cuda::decompress_sum_sign(packed.data_ptr<uint8_t>(), levels.data_ptr<float>(), packed.size(0), n,
                                             block, total.data_ptr<float>(), c10::cuda::getCurrentCUDAStream()));
  return total;
}

// The `_out` forms run the plain op and copy into the caller's buffers: one more pass over
// HBM. They exist for the CPU, where fresh outputs cost page faults and the message copies a
// pass on one core; here the caching allocator reuses memory (and the copies are a fraction
// of an all-to-all). They match the CPU's bit for bit on an H200 (session 44).
void copy_into_rows(const std::tuple<at::Tensor, at::Tensor>& flat, at::Tensor& payload, at::Tensor& scales) {
  payload.copy_(std::get<0>(flat).view(payload.sizes()));
  scales.copy_(std::get<1>(flat).view(scales.sizes()));
}

// EF21's `estimate` (error -= x after the residual) and the decoders' `accumulate` (total +=
// the sum) are one more ATen pass each here, with the CPU kernels' roundings.
void ef_compress_int8_out(const at::Tensor& x, at::Tensor& error, int64_t block, at::Tensor& q, at::Tensor& scales,
                          bool estimate) {
  constexpr const char* op = "ef_compress_int8_out";
  check_codec_args(op, x, error, block);
  check_cuda(op, "x", x);
  check_encoder_outputs(op, x, block, kInt8Format, q, scales);
  copy_into_rows(ef_compress_int8(x, error, block), q, scales);
  if (estimate) error.sub_(x);
}

void ef_compress_sign_out(const at::Tensor& x, at::Tensor& error, int64_t block, at::Tensor& packed,
                          at::Tensor& levels, bool estimate) {
  constexpr const char* op = "ef_compress_sign_out";
  check_codec_args(op, x, error, block);
  check_cuda(op, "x", x);
  check_encoder_outputs(op, x, block, kSignFormat, packed, levels);
  copy_into_rows(ef_compress_sign(x, error, block), packed, levels);
  if (estimate) error.sub_(x);
}

void store_sum(at::Tensor& total, const at::Tensor& sum, bool accumulate) {
  if (accumulate) {
    total.add_(sum);
  } else {
    total.copy_(sum);
  }
}

void decompress_sum_int8_out(const at::Tensor& q, const at::Tensor& scales, int64_t block, at::Tensor& total,
                             bool accumulate) {
  constexpr const char* op = "decompress_sum_int8_out";
  check_cuda(op, "q", q);
  check_total_out(op, total, check_int8_chunks(op, q, scales, block), q);
  store_sum(total, decompress_sum_int8(q, scales, block), accumulate);
}

void decompress_sum_sign_out(const at::Tensor& packed, const at::Tensor& levels, int64_t n, int64_t block,
                             at::Tensor& total, bool accumulate) {
  constexpr const char* op = "decompress_sum_sign_out";
  check_cuda(op, "packed", packed);
  check_sign_chunks(op, packed, levels, n, block);
  check_total_out(op, total, n, packed);
  store_sum(total, decompress_sum_sign(packed, levels, n, block), accumulate);
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
