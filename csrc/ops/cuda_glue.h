// Small helpers every CUDA glue file needs: element type, device check, launch check.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/util/Exception.h>

#include <cstdlib>
#include <string>

#include "../kernels/cuda/int8_gemm.cuh"  // scale_float_sums; quant.cuh

namespace effgen::ops {

inline cuda::DType cuda_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return cuda::DType::kBF16;
    case at::kHalf: return cuda::DType::kF16;
    default: return cuda::DType::kF32;
  }
}

inline void check_cuda(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cuda(), op, ": ", name, " must be a CUDA tensor here, got ", t.device());
}

inline void check_launch(const char* op, cudaError_t err) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

// How the few-row 16-bit kernels (W8A16, binary, ternary; csrc/kernels/cuda/skinny_mma.cuh)
// run, read at each call so the benchmarks and tests can run every setting:
// - EFFGEN_CUDA_SKINNY_X: unset or shared stages x in shared memory where it fits; global
//   reads it from global memory.
// - EFFGEN_CUDA_SKINNY_BLOCKS: unset or tile launches a block per channel tile; resident as
//   many blocks as the SMs hold at once, or a positive count at most that many, each taking
//   an even share of the tiles in turn.
inline cuda::SkinnyOptions skinny_options(const char* op) {
  const char* x_env = std::getenv("EFFGEN_CUDA_SKINNY_X");
  const std::string x_place = x_env == nullptr ? "" : x_env;
  TORCH_CHECK_VALUE(x_place.empty() || x_place == "global" || x_place == "shared", op,
                    ": EFFGEN_CUDA_SKINNY_X must be global or shared, got '", x_place, "'");
  const char* blocks_env = std::getenv("EFFGEN_CUDA_SKINNY_BLOCKS");
  const std::string blocks = blocks_env == nullptr ? "" : blocks_env;
  cuda::SkinnyOptions options{x_place != "global", 0};
  if (blocks == "resident") {
    options.blocks = cuda::kSkinnyResidentBlocks;
  } else if (!blocks.empty() && blocks != "tile") {
    char* end = nullptr;
    const long long count = std::strtoll(blocks.c_str(), &end, 10);
    TORCH_CHECK_VALUE(*end == '\0' && count > 0 && count < (1LL << 31), op,
                      ": EFFGEN_CUDA_SKINNY_BLOCKS must be tile, resident or a positive block count, got '",
                      blocks, "'");
    options.blocks = count;
  }
  return options;
}

// x2d [m, k] @ w [n, k]^T (w in x's dtype) for products with many rows, through cuBLAS with
// an fp32 result so every sum stays in fp32 (with a bf16/fp16 result cuBLAS may add split-K
// partials in half precision: errors of several ulps where outputs cancel); then times
// channel_scale ([n] or one element; undefined: none) and plus bias in fp32, rounded once,
// in one pass over the sums (scale_float_sums: ATen's mul, add and to, bit for bit).
// bias_f: float_bias's (fp32, contiguous; undefined: none).
inline at::Tensor linear_with_fp32_sums(const char* op, const at::Tensor& x2d, const at::Tensor& w,
                                        const at::Tensor& channel_scale, const at::Tensor& bias_f) {
  const at::Tensor sums = x2d.scalar_type() == at::kFloat ? at::mm(x2d, w.t()) : at::mm(x2d, w.t(), at::kFloat);
  if (!channel_scale.defined() && !bias_f.defined()) return sums.to(x2d.scalar_type());
  const at::Tensor scale = channel_scale.defined() ? channel_scale.to(at::kFloat).contiguous() : at::Tensor();
  at::Tensor out = at::empty(sums.sizes(), x2d.options());
  const cuda::FloatSumsArgs args{sums.data_ptr<float>(),
                                 sums.size(0),
                                 sums.size(1),
                                 scale.defined() ? scale.data_ptr<float>() : nullptr,
                                 scale.defined() && scale.numel() > 1 ? 1 : 0,
                                 bias_f.defined() ? bias_f.data_ptr<float>() : nullptr,
                                 cuda_dtype(x2d.scalar_type()),
                                 out.data_ptr()};
  check_launch(op, cuda::scale_float_sums(args, c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace effgen::ops
