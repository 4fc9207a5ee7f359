// CPU glue of the compress family (error-feedback gradient codecs); its argument checks are
// shared with the CUDA glue (compress_common.h). Every op has an `_out`
// form writing into the caller's buffers (the DDP hook's messages as sent and received: no
// copies and no fresh pages a step); the plain form allocates and runs the same code.
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

// Runs encode_row(r, x_row, error_row) for each output row r, over values [r * cols, (r + 1) * cols).
template <typename EncodeRow>
void for_each_row(const at::Tensor& x, at::Tensor& error, int64_t rows, int64_t cols, EncodeRow encode_row) {
  const auto* x_bytes = static_cast<const char*>(x.data_ptr());
  for (int64_t r = 0; r < rows; ++r) {
    encode_row(r, x_bytes + r * cols * x.element_size(), error.data_ptr<float>() + r * cols);
  }
}

void encode_int8(const at::Tensor& x_in, at::Tensor& error, int64_t block, at::Tensor& q, at::Tensor& scales,
                 int64_t cols, bool estimate = false) {
  const at::Tensor x = x_in.contiguous();
  const int64_t blocks = blocks_of(cols, block);
  for_each_row(x, error, q.size(0), cols, [&](int64_t r, const void* x_row, float* error_row) {
    at::parallel_for(0, blocks, std::max<int64_t>(1, kValuesPerTask / block), [&](int64_t b0, int64_t b1) {
      cpu::compress_kernels().ef_compress_int8_blocks(cpu_dtype(x.scalar_type()), x_row, error_row, cols, block, b0,
                                                      b1, q.data_ptr<int8_t>() + r * q.stride(0),
                                                      scales.data_ptr<float>() + r * scales.stride(0), estimate);
    });
  });
}

void encode_sign(const at::Tensor& x_in, at::Tensor& error, int64_t block, at::Tensor& packed, at::Tensor& levels,
                 int64_t cols, bool estimate = false) {
  const at::Tensor x = x_in.contiguous();
  const int64_t blocks = blocks_of(cols, block);
  // Tasks of whole units of blocks whose values fill whole bytes of bits.
  const int64_t unit = 8 / std::gcd(block, int64_t{8}), units = (blocks + unit - 1) / unit;
  for_each_row(x, error, packed.size(0), cols, [&](int64_t r, const void* x_row, float* error_row) {
    at::parallel_for(0, units, std::max<int64_t>(1, kValuesPerTask / (block * unit)), [&](int64_t u0, int64_t u1) {
      cpu::compress_kernels().ef_compress_sign_blocks(cpu_dtype(x.scalar_type()), x_row, error_row, cols, block,
                                                      u0 * unit, std::min(blocks, u1 * unit),
                                                      packed.data_ptr<uint8_t>() + r * packed.stride(0),
                                                      levels.data_ptr<float>() + r * levels.stride(0), estimate);
    });
  });
}

std::tuple<at::Tensor, at::Tensor> ef_compress_int8(const at::Tensor& x, at::Tensor& error, int64_t block) {
  constexpr const char* op = "ef_compress_int8";
  check_codec_args(op, x, error, block);
  check_cpu(op, "x", x);
  const int64_t n = x.numel(), blocks = blocks_of(n, block);
  at::Tensor q = at::empty({1, n}, x.options().dtype(at::kChar));
  at::Tensor scales = at::empty({1, blocks}, x.options().dtype(at::kFloat));
  encode_int8(x, error, block, q, scales, n);
  return {q.view({n}), scales.view({blocks})};
}

void ef_compress_int8_out(const at::Tensor& x, at::Tensor& error, int64_t block, at::Tensor& q, at::Tensor& scales,
                          bool estimate) {
  constexpr const char* op = "ef_compress_int8_out";
  check_codec_args(op, x, error, block);
  check_cpu(op, "x", x);
  encode_int8(x, error, block, q, scales, check_encoder_outputs(op, x, block, kInt8Format, q, scales), estimate);
}

std::tuple<at::Tensor, at::Tensor> ef_compress_sign(const at::Tensor& x, at::Tensor& error, int64_t block) {
  constexpr const char* op = "ef_compress_sign";
  check_codec_args(op, x, error, block);
  check_cpu(op, "x", x);
  const int64_t n = x.numel(), bytes = (n + 7) / 8, blocks = blocks_of(n, block);
  at::Tensor packed = at::empty({1, bytes}, error.options().dtype(at::kByte));
  at::Tensor levels = at::empty({1, 2 * blocks}, error.options());
  encode_sign(x, error, block, packed, levels, n);
  return {packed.view({bytes}), levels.view({2 * blocks})};
}

void ef_compress_sign_out(const at::Tensor& x, at::Tensor& error, int64_t block, at::Tensor& packed,
                          at::Tensor& levels, bool estimate) {
  constexpr const char* op = "ef_compress_sign_out";
  check_codec_args(op, x, error, block);
  check_cpu(op, "x", x);
  encode_sign(x, error, block, packed, levels, check_encoder_outputs(op, x, block, kSignFormat, packed, levels),
              estimate);
}

// The decoders read rows of unit stride in place (strided rows: views of received messages).
at::Tensor with_dense_rows(const at::Tensor& t) { return t.stride(1) == 1 || t.size(1) <= 1 ? t : t.contiguous(); }

template <typename T>
cpu::ChunkRows<T> chunk_rows(const at::Tensor& data, const at::Tensor& scales) {
  return {data.data_ptr<T>(), data.stride(0), scales.data_ptr<float>(), scales.stride(0), data.size(0)};
}

void decode_int8(const at::Tensor& q_in, const at::Tensor& scales_in, int64_t block, at::Tensor& total,
                 bool accumulate = false) {
  const at::Tensor q = with_dense_rows(q_in), scales = with_dense_rows(scales_in);
  const cpu::ChunkRows<int8_t> rows = chunk_rows<int8_t>(q, scales);
  at::parallel_for(0, q.size(1), kValuesPerTask, [&](int64_t i0, int64_t i1) {
    cpu::compress_kernels().decompress_sum_int8(rows, block, i0, i1, total.data_ptr<float>(), accumulate);
  });
}

at::Tensor decompress_sum_int8(const at::Tensor& q, const at::Tensor& scales, int64_t block) {
  constexpr const char* op = "decompress_sum_int8";
  check_cpu(op, "q", q);
  at::Tensor total = at::empty({check_int8_chunks(op, q, scales, block)}, q.options().dtype(at::kFloat));
  decode_int8(q, scales, block, total);
  return total;
}

void decompress_sum_int8_out(const at::Tensor& q, const at::Tensor& scales, int64_t block, at::Tensor& total,
                             bool accumulate) {
  constexpr const char* op = "decompress_sum_int8_out";
  check_cpu(op, "q", q);
  check_total_out(op, total, check_int8_chunks(op, q, scales, block), q);
  decode_int8(q, scales, block, total, accumulate);
}

void decode_sign(const at::Tensor& packed_in, const at::Tensor& levels_in, int64_t n, int64_t block,
                 at::Tensor& total, bool accumulate = false) {
  const at::Tensor packed = with_dense_rows(packed_in), levels = with_dense_rows(levels_in);
  const cpu::ChunkRows<uint8_t> rows = chunk_rows<uint8_t>(packed, levels);
  // Task boundaries on multiples of 8 keep every byte of bits in one task.
  at::parallel_for(0, (n + 7) / 8, kValuesPerTask / 8, [&](int64_t byte0, int64_t byte1) {
    cpu::compress_kernels().decompress_sum_sign(rows, block, byte0 * 8, std::min(n, byte1 * 8),
                                                total.data_ptr<float>(), accumulate);
  });
}

at::Tensor decompress_sum_sign(const at::Tensor& packed, const at::Tensor& levels, int64_t n, int64_t block) {
  constexpr const char* op = "decompress_sum_sign";
  check_cpu(op, "packed", packed);
  check_sign_chunks(op, packed, levels, n, block);
  at::Tensor total = at::empty({n}, packed.options().dtype(at::kFloat));
  decode_sign(packed, levels, n, block, total);
  return total;
}

void decompress_sum_sign_out(const at::Tensor& packed, const at::Tensor& levels, int64_t n, int64_t block,
                             at::Tensor& total, bool accumulate) {
  constexpr const char* op = "decompress_sum_sign_out";
  check_cpu(op, "packed", packed);
  check_sign_chunks(op, packed, levels, n, block);
  check_total_out(op, total, n, packed);
  decode_sign(packed, levels, n, block, total, accumulate);
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, CPU, m) {
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
