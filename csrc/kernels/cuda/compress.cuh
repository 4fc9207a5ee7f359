// Torch-free CUDA kernels of the compress family (error-feedback gradient codecs); the
// semantics are those of csrc/kernels/cpu/compress.h and effgen_kernels/reference.py, in the
// same fp32 order, so a GPU and a CPU rank produce the same bits. Launchers run on the given
// stream and return the launch status.
#pragma once
#include <cuda_runtime.h>

#include <cstdint>

#include "quant.cuh"  // DType

namespace effgen::cuda {

// Per block of `block` values: v = x + error, scale = absmax(v) / 127, q = clamp(rint(v /
// scale)), error = v - q * scale; a block holding Inf/NaN: scale NaN, q = 0, error = 0.
cudaError_t ef_compress_int8(DType dtype, const void* x, float* error, int64_t n, int64_t block, int8_t* q,
                             float* scales, cudaStream_t stream);

// total[i] = sum over rows in order of q[r][i] * scales[r][i / block].
cudaError_t decompress_sum_int8(const int8_t* q, const float* scales, int64_t rows, int64_t n, int64_t block,
                                float* total, cudaStream_t stream);

// The sign codec in one kernel for block % 8 == 0 (csrc/kernels/cpu/compress.h): v = x +
// error; per block mean(v) and spread min(rms(d), cap * mean |d|) of d = v - mean (sums in
// double), levels[2b], levels[2b + 1] = mean - spread, mean + spread; bits of v >= mean
// (LSB first); error = v - (bit ? high : low).
cudaError_t ef_compress_sign(DType dtype, const void* x, float* error, int64_t n, int64_t block, double cap,
                             uint8_t* packed, float* levels, cudaStream_t stream);

// The sign codec once its blocks' means and levels are known (any block size): bits of v >=
// means[b] (LSB first), error = v - (bit ? levels[2b + 1] : levels[2b]). `v` may be `error`.
cudaError_t sign_pack_update(const float* v, const float* means, const float* levels, int64_t n, int64_t block,
                             uint8_t* packed, float* error, cudaStream_t stream);

// total[i] = sum over rows in order of levels[r][2 * (i / block) + bit i of row r].
cudaError_t decompress_sum_sign(const uint8_t* packed, const float* levels, int64_t rows, int64_t n, int64_t block,
                                float* total, cudaStream_t stream);

}  // namespace effgen::cuda
