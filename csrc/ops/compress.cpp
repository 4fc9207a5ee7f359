// CPU glue of the compress family (error-feedback gradient codecs); checks and the sign
// codec's scales are shared with the CUDA glue (compress_common.h).
#include <ATen/Parallel.h>
#include <numeric>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "../kernels/cpu/compress.h"
#include "compress_common.h"
#include "glue.h"

namespace effgen::ops {
namespace {

constexpr int64_t kValuesPerTask = 1 << 16;

std::tuple<at::Tensor, at::Tensor> ef_compress_int8(const at::Tensor& x_in, at::Tensor& error, int64_t block) {
  constexpr const char* op = "ef_compress_int8";
  check_codec_args(op, x_in, error, block);
  check_cpu(op, "x", x_in);
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

std::tuple<at::Tensor, at::Tensor> ef_compress_sign(const at::Tensor& x_in, at::Tensor& error, int64_t block) {
  constexpr const char* op = "ef_compress_sign";
  check_codec_args(op, x_in, error, block);
  check_cpu(op, "x", x_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t n = x.numel(), blocks = blocks_of(n, block);
  at::Tensor packed = at::empty({(n + 7) / 8}, error.options().dtype(at::kByte));
  at::Tensor scales = at::empty({blocks}, error.options());
  // Tasks of whole units of blocks whose values fill whole bytes of bits.
  const int64_t unit = 8 / std::gcd(block, int64_t{8}), units = (blocks + unit - 1) / unit;
  at::parallel_for(0, units, std::max<int64_t>(1, kValuesPerTask / (block * unit)), [&](int64_t u0, int64_t u1) {
    cpu::compress_kernels().ef_compress_sign_blocks(cpu_dtype(x.scalar_type()), x.data_ptr(), error.data_ptr<float>(), n, block,
                                 u0 * unit, std::min(blocks, u1 * unit), packed.data_ptr<uint8_t>(),
                                 scales.data_ptr<float>());
  });
  return {packed, scales};
}

at::Tensor decompress_sum_int8(const at::Tensor& q_in, const at::Tensor& scales_in, int64_t block) {
  constexpr const char* op = "decompress_sum_int8";
  check_cpu(op, "q", q_in);
  const int64_t n = check_int8_chunks(op, q_in, scales_in, block);
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
  check_cpu(op, "packed", packed_in);
  check_sign_chunks(op, packed_in, scales_in, n, block);
  const at::Tensor packed = packed_in.contiguous(), scales = scales_in.contiguous();
  at::Tensor total = at::empty({n}, packed.options().dtype(at::kFloat));
  // Task boundaries on multiples of 8 keep every byte of bits in one task.
  at::parallel_for(0, (n + 7) / 8, kValuesPerTask / 8, [&](int64_t byte0, int64_t byte1) {
    cpu::compress_kernels().decompress_sum_sign(packed.data_ptr<uint8_t>(), scales.data_ptr<float>(), packed.size(0), n, block,
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
