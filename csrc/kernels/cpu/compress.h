// Torch-free CPU kernels of the `compress` family: error-feedback gradient codecs over
// blocks of `block` values (last block may be short); see effgen_kernels/reference.py.
#pragma once
#include <cstdint>

#include "dtypes.h"
#include "quant.h"  // kMaxFiniteBits, symmetric_inverse_scale

namespace effgen::cpu {

// The received chunks of the decoders: `rows` rows of payload (row r at data + r *
// data_stride) and of their blocks' scales (at scales + r * scale_stride). Rows are strided so
// that the decoders read the payload and scales straight out of the messages as received.
template <typename T>
struct ChunkRows {
  const T* data;
  int64_t data_stride;
  const float* scales;
  int64_t scale_stride;
  int64_t rows;
};

struct CompressKernels {
  // For blocks [b0, b1) of x (n values): v = x + error; scale = absmax(v) / 127 per block;
  // q = clamp(round_half_even(v * (1 / scale)), -127, 127); error = v - q * scale. A block
  // holding Inf/NaN gets a NaN scale, q = 0 and error = 0 (the NaN reaches the result,
  // where a GradScaler can see it, and does not stay in the residual).
  // With `estimate` (EF21: error holds minus the worker's estimate h) error = (v - q * scale)
  // - x = -(h + what was sent), rounded twice in that order; -x in a non-finite block.
  void (*ef_compress_int8_blocks)(DType dtype, const void* x, float* error, int64_t n, int64_t block, int64_t b0,
                                  int64_t b1, int8_t* q, float* scales, bool estimate);
  // sum[i] = the sum over rows r = 0..rows-1, added in order to 0.0f, of q[r][i] *
  // scales[r][i / block], for i in [i0, i1); total[i] = sum[i], or total[i] + sum[i] with
  // `accumulate`.
  void (*decompress_sum_int8)(ChunkRows<int8_t> q, int64_t block, int64_t i0, int64_t i1, float* total,
                              bool accumulate);
  // The sign codec for blocks [b0, b1) of x (n values), whose first value b0 * block must
  // be a multiple of 8 (so that no byte of bits is shared with another range): v = x +
  // error; per block, mean = sum(v) / count in double, rounded to float; spread =
  // min(rms(d), kSignScaleCap * mean |d|) of d = v - mean (fp32 differences, double sums),
  // rounded to float; levels[2b] = mean - spread, levels[2b + 1] = mean + spread (fp32);
  // bit i = v >= mean; error = v - (bit ? levels[2b + 1] : levels[2b]). A block holding
  // Inf/NaN gets NaN levels, bits 0 and error 0, as in the int8 codec: otherwise the NaN
  // would stay in the residual and poison every later step of that block (one fp16
  // overflow step under a GradScaler would end training). `estimate`: as in the int8 codec,
  // error = (v - level) - x, and -x in a non-finite block.
  void (*ef_compress_sign_blocks)(DType dtype, const void* x, float* error, int64_t n, int64_t block, int64_t b0,
                                  int64_t b1, uint8_t* packed, float* levels, bool estimate);
  // sum[i] = the sum over rows, in order from 0.0f, of levels[r][2 * (i / block) + bit i of
  // row r], for i in [i0, i1) (ChunkRows::scales holds the levels, two per block); total[i]
  // = sum[i], or total[i] + sum[i] with `accumulate`.
  void (*decompress_sum_sign)(ChunkRows<uint8_t> packed, int64_t block, int64_t i0, int64_t i1, float* total,
                              bool accumulate);
};

// Why the sign codec's spread is min(rms, 1.5 mean |d|): the rms keeps the block's energy
// (mean |v|, the least-squares scale, shrinks every step and slowed SGD: 60 digits steps
// ended 8.9% above plain DDP, 0.8% with this one); the cap keeps error feedback
// contracting, ||d - spread * sign(d)||^2 <= max(2/3, 1 - 0.75 (mean / rms)^2) ||d||^2,
// where the rms alone would overshoot on a block of a few large values. Why about the
// mean: see reference.ef_compress_sign.
constexpr double kSignScaleCap = 1.5;

const CompressKernels& compress_kernels_scalar();
const CompressKernels& compress_kernels_avx2();
const CompressKernels& compress_kernels_neon();  // aarch64 builds only
const CompressKernels& compress_kernels_avx512();
// The codec table of the active ISA.
const CompressKernels& compress_kernels();

}  // namespace effgen::cpu
