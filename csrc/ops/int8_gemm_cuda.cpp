// CUDA glue of the int8_gemm family: the same checks as the CPU glue (int8_gemm_common.h),
// then launches on the current stream.
#include <ATen/core/Tensor.h>
#include <ATen/ops/_int_mm.h>
#include <ATen/ops/empty.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "cuda_glue.h"
#include "../kernels/cuda/int8_gemm.cuh"
#include "int8_gemm_common.h"
#include "quant.h"

namespace effgen::ops {
namespace {

// EFFGEN_CUDA_INT8_GEMM=mma|wgmma forces our tensor-core kernel for products with more than
// 16 rows; unset or auto: our wgmma kernel where it pays (cuda::int8_gemm_wgmma_pays), else
// cuBLAS where it takes the shape (below), else mma.sync. Read at each call so tests can run
// every one.
cuda::GemmKernel gemm_kernel_choice(const char* op) {
  const char* env = std::getenv("EFFGEN_CUDA_INT8_GEMM");
  const std::string choice = env == nullptr ? "" : env;
  if (choice.empty() || choice == "auto") return cuda::GemmKernel::kAuto;
  if (choice == "mma") return cuda::GemmKernel::kMma;
  TORCH_CHECK_VALUE(choice == "wgmma", op, ": EFFGEN_CUDA_INT8_GEMM must be auto, mma or wgmma, got '", choice, "'");
  TORCH_CHECK(cuda::int8_gemm_wgmma_supported(), op,
              ": EFFGEN_CUDA_INT8_GEMM=wgmma needs a compute capability 9.0 GPU and a build with sm_90a in "
              "EFFGEN_CUDA_ARCHS");
  return cuda::GemmKernel::kWgmma;
}

// The products torch._int_mm (cuBLAS) takes: more than 16 rows, k and n multiples of 8; and
// 16-byte aligned operands (its fast kernels' need; misaligned views stay on ours). Measured on
// an H200 (benchmarks/RESULTS.md, session 8) it ran 2-4x faster than our first GEMMs, so by
// default it computes the int32 sums and our epilogue kernel scales them.
bool cublas_takes(const at::Tensor& xq, const at::Tensor& wq) {
  const auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
  return xq.size(0) > cuda::kGemvMaxRows && xq.size(1) % 8 == 0 && wq.size(0) % 8 == 0 && aligned(xq) && aligned(wq);
}

void launch_gemm(const char* op, const at::Tensor& xq, const at::Tensor& x_scale, int64_t x_stride,
                 const at::Tensor& wq, const at::Tensor& w_scale, int64_t w_stride, const at::Tensor& bias,
                 at::Tensor& out) {
  const cuda::Int8GemmArgs args{xq.data_ptr<int8_t>(),   wq.data_ptr<int8_t>(),
                                xq.size(0),              wq.size(0),
                                xq.size(1),              x_scale.data_ptr<float>(),
                                x_stride,                w_scale.data_ptr<float>(),
                                w_stride,                bias.defined() ? bias.data_ptr<float>() : nullptr,
                                cuda_dtype(out.scalar_type()), out.data_ptr()};
  cuda::GemmKernel kernel = gemm_kernel_choice(op);
  if (kernel == cuda::GemmKernel::kAuto && cuda::int8_gemm_wgmma_pays(args)) kernel = cuda::GemmKernel::kWgmma;
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  if (kernel == cuda::GemmKernel::kAuto && cublas_takes(xq, wq)) {
    const at::Tensor sums = at::_int_mm(xq, wq.t());
    check_launch(op, cuda::int8_scale_accumulators(args, sums.data_ptr<int32_t>(), stream));
    return;
  }
  check_launch(op, cuda::int8_gemm(args, kernel, stream));
}

at::Tensor int8_linear(const at::Tensor& xq, const at::Tensor& x_scale, const at::Tensor& wq,
                       const at::Tensor& w_scale, const std::optional<at::Tensor>& bias, at::ScalarType out_dtype) {
  constexpr const char* op = "int8_linear";
  check_cuda(op, "xq", xq);
  const auto [k, n, x_stride, w_stride] = check_int8_linear(xq, x_scale, wq, w_scale, bias, out_dtype);
  if (k == 0) return empty_sum_product(xq, n, xq.options().dtype(out_dtype), bias);
  const c10::cuda::CUDAGuard guard(xq.device());
  at::Tensor out = at::empty(linear_out_shape(xq, n), xq.options().dtype(out_dtype));
  if (out.numel() == 0) return out;
  at::Tensor out_2d = out.view({-1, n});
  launch_gemm(op, as_rows(xq).contiguous(), x_scale.contiguous(), x_stride, wq.contiguous(),
              w_scale.contiguous(), w_stride, float_bias(bias), out_2d);
  return out;
}

at::Tensor int8_dynamic_linear(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& w_scale,
                               const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& smoothing) {
  constexpr const char* op = "int8_dynamic_linear";
  check_cuda(op, "x", x);
  const auto [k, n, x_stride, w_stride] = check_int8_dynamic_linear(x, wq, w_scale, bias, smoothing);
  if (k == 0) return empty_sum_product(x, n, x.options(), bias);
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  // Smoothing as a separate fp32 multiply here (the CPU glue fuses it into the quantization).
  const at::Tensor rows = smoothing.has_value() ? as_rows(x).to(at::kFloat).mul(*smoothing) : as_rows(x);
  const auto [xq, x_scale] = quantize_per_token_cuda(rows);
  at::Tensor out_2d = out.view({-1, n});
  launch_gemm(op, xq, x_scale, x_stride, wq.contiguous(), w_scale.contiguous(), w_stride, float_bias(bias), out_2d);
  return out;
}

at::Tensor int8_weight_only_linear(const at::Tensor& x, const at::Tensor& wq, const at::Tensor& w_scale,
                                   const std::optional<at::Tensor>& bias, std::optional<int64_t> group_size) {
  constexpr const char* op = "int8_weight_only_linear";
  check_cuda(op, "x", x);
  const auto [k, n, m, groups, group] = check_int8_weight_only_linear(x, wq, w_scale, bias, group_size);
  if (k == 0) return empty_sum_product(x, n, x.options(), bias);
  const c10::cuda::CUDAGuard guard(x.device());
  if (m > cuda::kW8A16MaxM) {  // a compute problem: dequantize once, then cuBLAS
    const at::Tensor w = group_size.has_value()
                             ? dequantize_cuda(wq, w_scale, std::nullopt, group_size, x.scalar_type())
                             : dequantize_cuda(wq, w_scale, 0, std::nullopt, x.scalar_type());
    return linear_with_fp32_sums(op, x.reshape({m, k}), w, at::Tensor(), float_bias(bias))
        .reshape(linear_out_shape(x, n));
  }
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  const at::Tensor x2 = x.reshape({m, k}).contiguous(), w = wq.contiguous(), s = w_scale.contiguous();
  const at::Tensor bias_f = float_bias(bias);
  const cuda::W8A16Args args{cuda_dtype(x.scalar_type()), x2.data_ptr(), w.data_ptr<int8_t>(), m, n, k,
                             s.data_ptr<float>(), groups, group, bias_f.defined() ? bias_f.data_ptr<float>() : nullptr,
                             out.data_ptr(), skinny_options(op)};
  check_launch(op, cuda::w8a16_gemv(args, c10::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, CUDA, m) {
  m.impl("int8_linear", &int8_linear);
  m.impl("int8_dynamic_linear", &int8_dynamic_linear);
  m.impl("int8_weight_only_linear", &int8_weight_only_linear);
}

}  // namespace effgen::ops
