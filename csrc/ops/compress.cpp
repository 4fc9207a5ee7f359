// CPU glue of the compress family (error-feedback gradient codecs). The sign codec's block
// means use ATen's sum, exactly like reference.ef_compress_sign, so all ranks and the
// reference agree to the bit.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/abs.h>
#include <ATen/ops/add.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/div.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/full.h>
#include <ATen/ops/sum.h>
#include <torch/library.h>

#include "../kernels/cpu/compress.h"
#include "quant_common.h"
#include "glue.h"

namespace effgen::ops {
namespace {

constexpr int64_t kValuesPerTask = 1 << 16;

int64_t blocks_of(int64_t n, int64_t block) { return (n + block - 1) / block; }

void check_codec_args(const char* op, const at::Tensor& x, const at::Tensor& error, int64_t block) {
  check_float_input(op, "x", x);
  check_cpu(op, "x", x);
  TORCH_CHECK_VALUE(x.dim() == 1, op, ": x must be 1-D (a flat gradient bucket), got shape ", x.sizes());
  TORCH_CHECK_TYPE(error.scalar_type() == at::kFloat, op, ": error must be float32, got ", error.scalar_type());
  TORCH_CHECK_VALUE(error.sizes() == x.sizes() && error.is_contiguous(), op,
                    ": error must be a contiguous float32 tensor shaped like x ", x.sizes(), ", got ", error.sizes());
  check_same_device(op, "error", error, x);
  TORCH_CHECK_VALUE(block > 0, op, ": block_size must be positive, got ", block);
}

std::tuple<at::Tensor, at::Tensor> ef_compress_int8(const at::Tensor& x_in, at::Tensor& error, int64_t block) {
  constexpr const char* op = "ef_compress_int8";
  check_codec_args(op, x_in, error, block);
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.numel(), blocks = blocks_of(n, block);
  at::Tensor q = at::empty({n}, x.options().dtype(at::kChar));
  at::Tensor scales = at::empty({blocks}, x.options().dtype(at::kFloat));
  at::parallel_for(0, blocks, std::max<int64_t>(1, kValuesPerTask / block), [&](int64_t b0, int64_t b1) {
    cpu::compress_kernels().ef_compress_int8_blocks(cpu_dtype(x.scalar_type()), x.data_ptr(), error.data_ptr<float>(),
                                                    n, block, b0, b1, q.data_ptr<int8_t>(), scales.data_ptr<float>());
  });
  return {q, scales};
}

std::tuple<at::Tensor, at::Tensor> ef_compress_sign(const at::Tensor& x, at::Tensor& error, int64_t block) {
  constexpr const char* op = "ef_compress_sign";
  check_codec_args(op, x, error, block);
  const int64_t n = x.numel(), blocks = blocks_of(n, block);
  // v = x + error is formed in the error buffer itself (fp32 addition commutes, so the bits
  // equal the reference's x.float() + error): no gradient-sized temporary for it.
  error.add_(x);
  const at::Tensor& v = error;
  at::Tensor counts = at::full({blocks}, static_cast<double>(block), v.options());
  if (n % block != 0) counts.data_ptr<float>()[blocks - 1] = static_cast<float>(n % block);
  at::Tensor magnitudes = at::abs(v);
  if (n % block != 0) magnitudes = at::constant_pad_nd(magnitudes, {0, blocks * block - n}, 0);
  const at::Tensor scales = at::div(at::sum(magnitudes.reshape({blocks, block}), {1}), counts).contiguous();
  at::Tensor packed = at::empty({(n + 7) / 8}, v.options().dtype(at::kByte));
  cpu::sign_pack_update(v.data_ptr<float>(), scales.data_ptr<float>(), n, block, packed.data_ptr<uint8_t>(),
                        error.data_ptr<float>());
  return {packed, scales};
}

void check_chunks(const char* op, const at::Tensor& data, const at::Tensor& scales, int64_t n, int64_t block) {
  check_cpu(op, "the chunks", data);
  TORCH_CHECK_VALUE(block > 0, op, ": block_size must be positive, got ", block);
  TORCH_CHECK_TYPE(scales.scalar_type() == at::kFloat, op, ": scales must be float32, got ", scales.scalar_type());
  check_same_device(op, "scales", scales, data);
  TORCH_CHECK_VALUE(scales.dim() == 2 && scales.size(0) == data.size(0) && scales.size(1) == blocks_of(n, block), op,
                    ": scales must be [", data.size(0), ", ", blocks_of(n, block), "], got ", scales.sizes());
}

at::Tensor decompress_sum_int8(const at::Tensor& q_in, const at::Tensor& scales_in, int64_t block) {
  constexpr const char* op = "decompress_sum_int8";
  TORCH_CHECK_TYPE(q_in.scalar_type() == at::kChar, op, ": q must be int8, got ", q_in.scalar_type());
  TORCH_CHECK_VALUE(q_in.dim() == 2, op, ": q must be [chunks, n], got shape ", q_in.sizes());
  const int64_t n = q_in.size(1);
  check_chunks(op, q_in, scales_in, n, block);
  const at::Tensor q = q_in.contiguous(), scales = scales_in.contiguous();
  at::Tensor total = at::empty({n}, q.options().dtype(at::kFloat));
  at::parallel_for(0, n, kValuesPerTask, [&](int64_t i0, int64_t i1) {
    cpu::compress_kernels().decompress_sum_int8(q.data_ptr<int8_t>(), scales.data_ptr<float>(), q.size(0), n, block,
                                                i0, i1, total.data_ptr<float>());
  });
  return total;
}

at::Tensor decompress_sum_sign(const at::Tensor& packed_in, const at::Tensor& scales_in, int64_t n, int64_t block) {
  constexpr const char* op = "decompress_sum_sign";
  TORCH_CHECK_TYPE(packed_in.scalar_type() == at::kByte, op, ": packed must be uint8, got ", packed_in.scalar_type());
  TORCH_CHECK_VALUE(n >= 0 && packed_in.dim() == 2 && packed_in.size(1) == (n + 7) / 8, op,
                    ": packed must be [chunks, ceil(n / 8)] for n = ", n, ", got shape ", packed_in.sizes());
  check_chunks(op, packed_in, scales_in, n, block);
  const at::Tensor packed = packed_in.contiguous(), scales = scales_in.contiguous();
  at::Tensor total = at::empty({n}, packed.options().dtype(at::kFloat));
  // Task boundaries on multiples of 8 keep every byte of bits in one task.
  at::parallel_for(0, (n + 7) / 8, kValuesPerTask / 8, [&](int64_t byte0, int64_t byte1) {
    cpu::decompress_sum_sign(packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), packed.size(0), n, block,
                             byte0 * 8, std::min(n, byte1 * 8), total.data_ptr<float>());
  });
  return total;
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, CPU, m) {
  m.impl("ef_compress_int8", &ef_compress_int8);
  m.impl("ef_compress_sign", &ef_compress_sign);
  m.impl("decompress_sum_int8", &decompress_sum_int8);
  m.impl("decompress_sum_sign", &decompress_sum_sign);
}

}  // namespace effgen::ops
