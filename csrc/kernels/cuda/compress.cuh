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

// The sign codec in one pass for block % 8 == 0: v = x + error, scale = min(rms(v), cap *
// mean |v|) per block (sums in double), bits of v >= 0 (LSB first), error = v - sign * scale.
cudaError_t ef_compress_sign(DType dtype, const void* x, float* error, int64_t n, int64_t block, double cap,
                             uint8_t* packed, float* scales, cudaStream_t stream);

// Sign codec once its block scales are known (any block size): bits of v >= 0 (LSB first), error = v -
// sign * scale. `v` may be `error` itself.
cudaError_t sign_pack_update(const float* v, const float* scales, int64_t n, int64_t block, uint8_t* packed,
                             float* error, cudaStream_t stream);

// total[i] = sum over rows in order of (bit i of row r ? 1 : -1) * scales[r][i / block].
cudaError_t decompress_sum_sign(const uint8_t* packed, const float* scales, int64_t rows, int64_t n, int64_t block,
                                float* total, cudaStream_t stream);

}  // namespace effgen::cuda
