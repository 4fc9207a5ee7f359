// CUDA glue of the binary_gemm family: the checks of binary_gemm_common.h, then launches on
// the current stream; many-row products expand the weights once (in x's dtype) and use cuBLAS.
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mean.h>
#include <ATen/ops/arange.h>
#include <ATen/ops/constant_pad_nd.h>
#include <ATen/ops/isfinite.h>
#include <ATen/ops/where.h>
#include <ATen/ops/zeros_like.h>
#include <ATen/ops/mul.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "cuda_glue.h"
#include "../kernels/cuda/binary_gemm.cuh"
#include "binary_gemm_common.h"

namespace effgen::ops {
namespace {

cudaStream_t stream() { return c10::cuda::getCurrentCUDAStream(); }

at::Tensor pack_binary(const at::Tensor& w_in) {
  constexpr const char* op = "pack_binary";
  check_float_input(op, "w", w_in);
  check_cuda(op, "w", w_in);
  TORCH_CHECK_VALUE(w_in.dim() == 2, op, ": w must be 2-D [N, K], got shape ", w_in.sizes());
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  at::Tensor out = at::empty({w.size(0), packed_row_bytes(w.size(1))}, w.options().dtype(at::kByte));
  check_launch(op, cuda::pack_signs(cuda_dtype(w.scalar_type()), w.data_ptr(), w.size(0), w.size(1),
                                    out.data_ptr<uint8_t>(), stream()));
  return out;
}

// The weights' codes [N, K] as int8 (unpack_*) or as `dtype` for a many-row product.
at::Tensor unpack(const char* op, const at::Tensor& packed_in, int64_t k, int planes,
                  at::ScalarType dtype = at::kChar) {
  TORCH_CHECK_VALUE(k >= 0, op, ": k must be >= 0, got ", k);
  check_cuda(op, "packed", packed_in);
  check_packed(op, packed_in, k, planes, packed_in);
  const c10::cuda::CUDAGuard guard(packed_in.device());
  const at::Tensor packed = packed_in.contiguous();
  at::Tensor out = at::empty({packed.size(0), k}, packed.options().dtype(dtype));
  const uint8_t* bits = packed.data_ptr<uint8_t>();
  check_launch(op, dtype == at::kChar
                       ? cuda::unpack_bits(bits, packed.size(0), k, planes, out.data_ptr<int8_t>(), stream())
                       : cuda::expand_bits(bits, packed.size(0), k, planes, cuda_dtype(dtype), out.data_ptr(),
                                           stream()));
  return out;
}

at::Tensor unpack_binary(const at::Tensor& packed, int64_t k) { return unpack("unpack_binary", packed, k, 1); }
at::Tensor unpack_ternary(const at::Tensor& packed, int64_t k) { return unpack("unpack_ternary", packed, k, 2); }

// Values outside {-1, 0, 1} would need a device-to-host check here; the CUDA kernel packs
// them as 0 instead (documented in the op schema's reference).
at::Tensor pack_ternary(const at::Tensor& q_in) {
  constexpr const char* op = "pack_ternary";
  TORCH_CHECK_TYPE(q_in.scalar_type() == at::kChar, op, ": q must be int8 in {-1, 0, 1}, got ", q_in.scalar_type());
  check_cuda(op, "q", q_in);
  TORCH_CHECK_VALUE(q_in.dim() == 2, op, ": q must be 2-D [N, K], got shape ", q_in.sizes());
  const c10::cuda::CUDAGuard guard(q_in.device());
  const at::Tensor q = q_in.contiguous();
  at::Tensor out = at::empty({q.size(0), 2 * packed_row_bytes(q.size(1))}, q.options().dtype(at::kByte));
  check_launch(op, cuda::pack_ternary(q.data_ptr<int8_t>(), q.size(0), q.size(1), out.data_ptr<uint8_t>(), stream()));
  return out;
}

// ---- float weights -> packed bits and their scales --------------------------------------
// ATen composites over the device's reductions (conversion time, not the hot path), with
// the CPU glue's double sums and single fp32 rounding; packed by the kernels above.

// Sum of |w| over each row's `groups` runs of `group` weights (the last one ragged), in
// double: [N, groups]. NaN or Inf in w is an error (one synchronizing check).
at::Tensor abs_group_sums(const char* op, const at::Tensor& w, int64_t groups, int64_t group) {
  const int64_t n = w.size(0), k = w.size(1);
  const at::Tensor magnitudes = at::constant_pad_nd(w.to(at::kDouble).abs(), {0, groups * group - k}, 0.0);
  const at::Tensor sums = magnitudes.reshape({n, groups, group}).sum(-1);
  const at::Tensor bad_rows = at::isfinite(sums).logical_not().any(1).nonzero();
  check_finite_rows(op, bad_rows.numel() == 0 ? -1 : bad_rows[0][0].item<int64_t>());
  return sums;
}

std::tuple<at::Tensor, at::Tensor> binarize_weight(const at::Tensor& w_in, std::optional<int64_t> group_size) {
  constexpr const char* op = "binarize_weight";
  check_weight_to_quantize(op, w_in);
  check_cuda(op, "w", w_in);
  if (group_size) check_group_size(op, *group_size);
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const int64_t group = group_size.value_or(k), groups = group_size ? num_groups(k, group) : 1;
  // group g counts min(group, K - g * group) weights
  const at::Tensor counts = at::arange(groups, w.options().dtype(at::kDouble))
                                .mul(-static_cast<double>(group))
                                .add(static_cast<double>(k))
                                .clamp_max(static_cast<double>(group));
  const at::Tensor alpha = abs_group_sums(op, w, groups, group).div(counts).to(at::kFloat);
  return {pack_binary(w), group_size ? alpha : alpha.reshape({n})};
}

std::tuple<at::Tensor, at::Tensor> ternarize_weight(const at::Tensor& w_in, bool per_channel) {
  constexpr const char* op = "ternarize_weight";
  check_weight_to_quantize(op, w_in);
  check_cuda(op, "w", w_in);
  const c10::cuda::CUDAGuard guard(w_in.device());
  const at::Tensor w = w_in.contiguous();
  const int64_t n = w.size(0), k = w.size(1);
  const at::Tensor sums = abs_group_sums(op, w, 1, k);  // [N, 1]
  const at::Tensor scale = per_channel ? sums.div(static_cast<double>(k)).to(at::kFloat)
                                       : sums.sum().div(static_cast<double>(n * k)).to(at::kFloat).reshape({1, 1});
  const at::Tensor ratio = w.to(at::kFloat).div(scale);
  const at::Tensor q = at::where(scale.gt(0), ratio.clamp(-1, 1).round(), at::zeros_like(ratio)).to(at::kChar);
  return {pack_ternary(q), scale.reshape({per_channel ? n : 1})};
}

// Many rows: the weights expanded once to x's dtype (signs, ternary codes, or sign * alpha
// for grouped alpha: exact values but for that product), then one cuBLAS product.
at::Tensor expanded_linear(const char* op, const Rows& r, const at::Tensor& x, const at::Tensor& codes,
                           const at::Tensor& channel_scale, const std::optional<at::Tensor>& bias) {
  return linear_with_fp32_sums(op, r.x, codes.to(x.scalar_type()), channel_scale, float_bias(bias))
      .reshape(linear_out_shape(x, codes.size(0)));
}

at::Tensor bits_gemv(const Rows& r, const at::Tensor& x, const at::Tensor& packed, int planes, const at::Tensor& scale,
                     int64_t scale_stride, int64_t groups, int64_t group, const std::optional<at::Tensor>& bias,
                     const char* op) {
  const int64_t n = packed.size(0);
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  if (out.numel() == 0) return out;
  const at::Tensor p = packed.contiguous(), s = scale.contiguous();
  const at::Tensor bias_f = float_bias(bias);
  const cuda::BitsGemvArgs args{cuda_dtype(x.scalar_type()), r.x.data_ptr(), p.data_ptr<uint8_t>(), r.m, n, r.k,
                                planes, s.data_ptr<float>(), scale_stride, groups, group,
                                bias_f.defined() ? bias_f.data_ptr<float>() : nullptr, out.data_ptr(),
                                skinny_options(op)};
  check_launch(op, cuda::bits_gemv(args, stream()));
  return out;
}

// `lut` is the CPU lookup-table layout; the CUDA kernels read the packed rows directly.
at::Tensor binary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& alpha,
                         const std::optional<at::Tensor>& bias, std::optional<int64_t> group_size,
                         const std::optional<at::Tensor>& /*lut*/) {
  constexpr const char* op = "binary_linear";
  check_cuda(op, "x", x);
  const BitsProduct p = check_bits_product(op, x, packed, 1, "alpha", alpha, bias, true, group_size);
  if (p.r.k == 0) return empty_sum_product(x, p.n, x.options(), bias);
  const Rows& r = p.r;
  const int64_t groups = p.groups, group = p.group;
  const c10::cuda::CUDAGuard guard(x.device());
  if (r.m > cuda::kBitsMaxM) {
    if (!group_size.has_value()) {
      return expanded_linear(op, r, x, unpack(op, packed, r.k, 1, x.scalar_type()), alpha.to(at::kFloat), bias);
    }
    const at::Tensor alpha_full = alpha.repeat_interleave(*group_size, 1).narrow(1, 0, r.k);
    return expanded_linear(op, r, x, at::mul(unpack(op, packed, r.k, 1, at::kFloat), alpha_full), at::Tensor(),
                           bias);
  }
  return bits_gemv(r, x, packed, 1, alpha, 1, groups, group, bias, op);
}

at::Tensor ternary_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& scale,
                          const std::optional<at::Tensor>& bias, const std::optional<at::Tensor>& /*lut*/) {
  constexpr const char* op = "ternary_linear";
  check_cuda(op, "x", x);
  const BitsProduct p = check_bits_product(op, x, packed, 2, "scale", scale, bias, false);
  if (p.r.k == 0) return empty_sum_product(x, p.n, x.options(), bias);
  const Rows& r = p.r;
  const int64_t scale_stride = p.scale_stride;
  const c10::cuda::CUDAGuard guard(x.device());
  if (r.m > cuda::kBitsMaxM) {
    return expanded_linear(op, r, x, unpack(op, packed, r.k, 2, x.scalar_type()), scale.to(at::kFloat), bias);
  }
  return bits_gemv(r, x, packed, 2, scale, scale_stride, 1, std::max<int64_t>(r.k, 1), bias, op);
}

at::Tensor xnor_linear(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& alpha,
                       const std::optional<at::Tensor>& bias) {
  constexpr const char* op = "xnor_linear";
  check_cuda(op, "x", x);
  const BitsProduct p = check_bits_product(op, x, packed, 1, "alpha", alpha, bias, false);
  const Rows& r = p.r;
  const int64_t n = p.n, alpha_stride = p.scale_stride;
  const c10::cuda::CUDAGuard guard(x.device());
  if (r.m * n == 0) return at::empty(linear_out_shape(x, n), x.options());
  const at::Tensor x_bits = at::empty({r.m, packed_row_bytes(r.k)}, x.options().dtype(at::kByte));
  check_launch(op, cuda::pack_signs(cuda_dtype(x.scalar_type()), r.x.data_ptr(), r.m, r.k,
                                    x_bits.data_ptr<uint8_t>(), stream()));
  // mean |x| by ATen's reduction (the CPU's sums run in another order: results may differ in
  // the last bit); the rest in one kernel, in reference.xnor_linear's order.
  const at::Tensor x_scale = r.k == 0 ? at::zeros({r.m, 1}, x.options().dtype(at::kFloat))
                                      : at::mean(r.x.to(at::kFloat).abs(), {1}, true);
  const at::Tensor weights = packed.contiguous(), a = alpha.to(at::kFloat).contiguous();
  const at::Tensor bias_f = float_bias(bias);
  at::Tensor out = at::empty(linear_out_shape(x, n), x.options());
  const cuda::XnorArgs args{x_bits.data_ptr<uint8_t>(),
                            weights.data_ptr<uint8_t>(),
                            r.m,
                            n,
                            packed_row_bytes(r.k),
                            r.k,
                            x_scale.data_ptr<float>(),
                            a.data_ptr<float>(),
                            alpha_stride,
                            bias_f.defined() ? bias_f.data_ptr<float>() : nullptr,
                            cuda_dtype(x.scalar_type()),
                            out.data_ptr()};
  check_launch(op, cuda::xnor_gemm(args, stream()));
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, CUDA, m) {
  m.impl("pack_binary", &pack_binary);
  m.impl("unpack_binary", &unpack_binary);
  m.impl("pack_ternary", &pack_ternary);
  m.impl("unpack_ternary", &unpack_ternary);
  m.impl("binarize_weight", &binarize_weight);
  m.impl("ternarize_weight", &ternarize_weight);
  m.impl("binary_linear", &binary_linear);
  m.impl("ternary_linear", &ternary_linear);
  m.impl("xnor_linear", &xnor_linear);
}

}  // namespace effgen::ops
