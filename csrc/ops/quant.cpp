// CPU glue of the quant family: argument checks, allocation, threading, and the split of
// every tensor into contiguous runs for the torch-free kernels in csrc/kernels/cpu/.
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <torch/library.h>

#include <atomic>
#include <cmath>
#include <limits>
#include <vector>

#include "../kernels/cpu/quant.h"
#include "../kernels/cpu/quant_learnable.h"
#include "quant.h"
#include "quant_common.h"
#include "glue.h"

namespace effgen::ops {
namespace {

using cpu::kMaxFiniteBits;

constexpr int64_t kElementsPerTask = 1 << 15;

int64_t grain_for(int64_t elements_per_item) {
  return std::max<int64_t>(1, kElementsPerTask / std::max<int64_t>(1, elements_per_item));
}

// scale = absmax / 127 in fp32; the kernels multiply by cpu::symmetric_inverse_scale.
struct SymmetricScale {
  float scale, inv_scale;
};

SymmetricScale symmetric_scale(uint32_t absmax_bits) {
  const float scale = cpu::f32_from_bits(absmax_bits) / 127.0f;
  return {scale, cpu::symmetric_inverse_scale(scale)};
}

void check_quantize_input(const char* op, const at::Tensor& x) {
  check_float_input(op, "x", x);
  check_cpu(op, "x", x);
  TORCH_CHECK_INDEX(x.dim() > 0, op, ": x must have at least 1 dimension, got a scalar");
}

// Row-wise groups of the last dim, fused: absmax, scale, quantize while the group is in cache.
// group_size 0 means one group per row (per token), whose scale drops the last dim.
std::tuple<at::Tensor, at::Tensor> quantize_rows(const char* op, const at::Tensor& x_in, int64_t group_size,
                                                 const float* smoothing = nullptr) {
  check_quantize_input(op, x_in);
  const at::Tensor x = x_in.contiguous();
  const int64_t k = x.size(-1), rows = k == 0 ? 0 : x.numel() / k;
  auto [q, scale] = allocate_row_quantized(x, group_size);
  NonFiniteTracker non_finite;
  at::parallel_for(0, rows, grain_for(k), [&](int64_t begin, int64_t end) {
    quantize_row_range(x, group_size, begin, end, q, scale, non_finite, smoothing);
  });
  non_finite.check(op, quantized_rows_name(smoothing), "row");
  return {q, scale};
}

}  // namespace

void NonFiniteTracker::note(int64_t item, uint32_t absmax_bits) {
  if (absmax_bits <= kMaxFiniteBits) return;
  int64_t seen = first_.load(std::memory_order_relaxed);
  while (item < seen && !first_.compare_exchange_weak(seen, item)) {
  }
}

void NonFiniteTracker::check(const char* op, const char* name, const char* item_kind) const {
  const int64_t item = first_.load();
  TORCH_CHECK_VALUE(item == kNone, op, ": ", name, " contains NaN or Inf (first in ", item_kind, " ", item,
                    "); it cannot be quantized");
}

void quantize_row_range(const at::Tensor& x, int64_t group_size, int64_t begin, int64_t end, at::Tensor& q,
                        at::Tensor& scale, NonFiniteTracker& non_finite, const float* smoothing) {
  const int64_t k = x.size(-1);
  group_size = group_size > 0 ? group_size : std::max<int64_t>(k, 1);
  const int64_t groups = num_groups(k, group_size);
  const auto& kernels = cpu::quant_kernels();
  const auto dtype = cpu_dtype(x.scalar_type());
  const auto* x_bytes = static_cast<const char*>(x.data_ptr());
  const int64_t elem = x.element_size();
  auto* q_ptr = q.data_ptr<int8_t>();
  auto* scale_ptr = scale.data_ptr<float>();
  thread_local std::vector<float> smoothed;  // one group of x * smoothing, kept between calls
  if (smoothing != nullptr) smoothed.resize(static_cast<size_t>(group_size));
  for (int64_t r = begin; r < end; ++r) {
    for (int64_t g = 0; g < groups; ++g) {
      const int64_t start = r * k + g * group_size, n = std::min(group_size, k - g * group_size);
      const void* run = x_bytes + start * elem;
      cpu::DType run_dtype = dtype;
      if (smoothing != nullptr) {
        kernels.scale_channels(dtype, run, n, smoothing + g * group_size, smoothed.data());
        run = smoothed.data();
        run_dtype = cpu::DType::kF32;
      }
      const uint32_t bits = kernels.absmax_bits(run_dtype, run, n);
      non_finite.note(r, bits);
      const SymmetricScale s = symmetric_scale(bits);
      scale_ptr[r * groups + g] = s.scale;
      kernels.quantize_symmetric(run_dtype, run, n, &s.inv_scale, 0, q_ptr + start);
    }
  }
}

std::tuple<at::Tensor, at::Tensor> quantize_per_token_cpu(const at::Tensor& x, const float* smoothing) {
  return quantize_rows("quantize_per_token", x, /*group_size=*/0, smoothing);
}

namespace {

std::tuple<at::Tensor, at::Tensor> quantize_per_token(const at::Tensor& x) { return quantize_per_token_cpu(x, nullptr); }

std::tuple<at::Tensor, at::Tensor> quantize_per_group(const at::Tensor& x, int64_t group_size) {
  check_group_size("quantize_per_group", group_size);
  return quantize_rows("quantize_per_group", x, group_size);
}

// Calls fn(offset, n, param, stride) for every contiguous piece of a [outer, C, inner]
// tensor, in parallel. Pieces come from runs of `inner` elements of one channel (stride 0:
// param is that channel) or, when inner == 1, rows of C channels (stride 1: param is the
// first channel of the piece). Runs longer than a task are cut, so that even one run (a
// per-tensor op) keeps every thread busy.
template <typename Fn>
void for_each_channel_run(const ChannelLayout& l, Fn&& fn) {
  const bool per_element = l.inner == 1;
  const int64_t run_length = per_element ? l.channels : l.inner;
  const int64_t runs = per_element ? l.outer : l.outer * l.channels;
  if (runs == 0 || run_length == 0) return;
  const int64_t pieces = (run_length + kElementsPerTask - 1) / kElementsPerTask;
  at::parallel_for(0, runs * pieces, grain_for(std::min(run_length, kElementsPerTask)), [&](int64_t b, int64_t e) {
    for (int64_t item = b; item < e; ++item) {
      const int64_t run = item / pieces, begin = (item % pieces) * kElementsPerTask;
      const int64_t n = std::min(kElementsPerTask, run_length - begin);
      fn(run * run_length + begin, n, per_element ? begin : run % l.channels, int64_t{per_element ? 1 : 0});
    }
  });
}

// Per-channel absmax bits over [outer, C, inner], each channel owned by one thread.
std::vector<uint32_t> channel_absmax_bits(cpu::DType dtype, const char* x_bytes, int64_t elem,
                                          const ChannelLayout& l) {
  const auto& kernels = cpu::quant_kernels();
  std::vector<uint32_t> acc(static_cast<size_t>(l.channels), 0);
  const int64_t per_channel = l.outer * l.inner;
  if (l.inner == 1) {
    at::parallel_for(0, l.channels, grain_for(l.outer) * 16, [&](int64_t begin, int64_t end) {
      for (int64_t o = 0; o < l.outer; ++o) {
        kernels.absmax_bits_accumulate(dtype, x_bytes + (o * l.channels + begin) * elem, end - begin,
                                       acc.data() + begin);
      }
    });
    return acc;
  }
  at::parallel_for(0, l.channels, grain_for(per_channel), [&](int64_t begin, int64_t end) {
    for (int64_t c = begin; c < end; ++c) {
      for (int64_t o = 0; o < l.outer; ++o) {
        const uint32_t bits = kernels.absmax_bits(dtype, x_bytes + ((o * l.channels + c) * l.inner) * elem, l.inner);
        acc[c] = std::max(acc[c], bits);
      }
    }
  });
  return acc;
}

std::tuple<at::Tensor, at::Tensor> quantize_per_channel(const at::Tensor& w_in, int64_t axis) {
  constexpr const char* op = "quantize_per_channel";
  check_quantize_input(op, w_in);
  axis = normalize_axis(op, axis, w_in.dim());
  const at::Tensor w = w_in.contiguous();
  const ChannelLayout layout = channel_layout(w, axis);
  const auto dtype = cpu_dtype(w.scalar_type());
  const auto* w_bytes = static_cast<const char*>(w.data_ptr());
  const int64_t elem = w.element_size();
  const std::vector<uint32_t> bits = channel_absmax_bits(dtype, w_bytes, elem, layout);
  at::Tensor scale = at::empty({layout.channels}, w.options().dtype(at::kFloat));
  std::vector<float> inv_scale(static_cast<size_t>(layout.channels));
  NonFiniteTracker non_finite;
  for (int64_t c = 0; c < layout.channels; ++c) {
    non_finite.note(c, bits[c]);
    const SymmetricScale s = symmetric_scale(bits[c]);
    scale.data_ptr<float>()[c] = s.scale;
    inv_scale[c] = s.inv_scale;
  }
  non_finite.check(op, "w", "channel");
  at::Tensor q = at::empty(w.sizes(), w.options().dtype(at::kChar));
  auto* q_ptr = q.data_ptr<int8_t>();
  const auto& kernels = cpu::quant_kernels();
  for_each_channel_run(layout, [&](int64_t offset, int64_t n, int64_t channel, int64_t stride) {
    kernels.quantize_symmetric(dtype, w_bytes + offset * elem, n, inv_scale.data() + channel, stride, q_ptr + offset);
  });
  return {q, scale};
}

}  // namespace

at::Tensor dequantize_cpu(const at::Tensor& q_in, const at::Tensor& scale_in, std::optional<int64_t> axis,
                          std::optional<int64_t> group_size, at::ScalarType out_dtype) {
  check_cpu("dequantize", "q", q_in);
  check_out_dtype("dequantize", out_dtype);
  const DequantPlan plan = plan_dequantize(q_in, scale_in, axis, group_size);
  const at::Tensor q = q_in.contiguous(), scale = scale_in.contiguous();
  at::Tensor y = at::empty(q.sizes(), q.options().dtype(out_dtype));
  const auto& kernels = cpu::quant_kernels();
  const auto dtype = cpu_dtype(y.scalar_type());
  const int8_t* q_ptr = q.data_ptr<int8_t>();
  const float* s_ptr = scale.data_ptr<float>();
  auto* y_bytes = static_cast<char*>(y.data_ptr());
  const int64_t elem = y.element_size();
  if (plan.group_size > 0) {
    const int64_t k = q.size(-1), rows = q.numel() / std::max<int64_t>(k, 1);
    const int64_t groups = num_groups(k, plan.group_size);
    at::parallel_for(0, rows, grain_for(k), [&](int64_t begin, int64_t end) {
      for (int64_t r = begin; r < end; ++r) {
        for (int64_t g = 0; g < groups; ++g) {
          const int64_t start = r * k + g * plan.group_size, n = std::min(plan.group_size, k - g * plan.group_size);
          kernels.dequantize(dtype, q_ptr + start, n, s_ptr + r * groups + g, 0, y_bytes + start * elem);
        }
      }
    });
    return y;
  }
  if (q.numel() == 0) return y;
  for_each_channel_run(plan.layout, [&](int64_t offset, int64_t n, int64_t channel, int64_t stride) {
    kernels.dequantize(dtype, q_ptr + offset, n, s_ptr + channel, stride, y_bytes + offset * elem);
  });
  return y;
}

namespace {

// Runs PyTorch's fake-quant arithmetic over [outer, C, inner] with per-channel parameters.
std::tuple<at::Tensor, at::Tensor> fake_quantize_channels(const char* op, const at::Tensor& x_in,
                                                          const ChannelLayout& layout, const cpu::FakeQuantParams& p) {
  const at::Tensor x = x_in.contiguous();
  at::Tensor y = at::empty(x.sizes(), x.options());
  at::Tensor mask = at::empty(x.sizes(), x.options().dtype(at::kBool));
  const auto& kernels = cpu::quant_kernels();
  const auto dtype = cpu_dtype(x.scalar_type());
  const auto* x_bytes = static_cast<const char*>(x.data_ptr());
  auto* y_bytes = static_cast<char*>(y.data_ptr());
  bool* mask_ptr = mask.data_ptr<bool>();
  const int64_t elem = x.element_size();
  NonFiniteTracker non_finite;
  if (x.numel() > 0) {
    for_each_channel_run(layout, [&](int64_t offset, int64_t n, int64_t channel, int64_t stride) {
      const cpu::FakeQuantParams run{p.scale + channel, p.inv_scale + channel, p.zero_point + channel, p.quant_min,
                                     p.quant_max};
      non_finite.note(offset, kernels.fake_quantize(dtype, x_bytes + offset * elem, n, run, stride,
                                                    y_bytes + offset * elem, mask_ptr + offset));
    });
  }
  non_finite.check(op, "x", "the run starting at flat index");
  return {y, mask};
}

void check_fake_quant_input(const char* op, const at::Tensor& x, int64_t quant_min, int64_t quant_max) {
  check_float_input(op, "x", x);
  check_cpu(op, "x", x);
  check_quant_range(op, quant_min, quant_max);
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_per_tensor_cachemask(const at::Tensor& x, double scale_d,
                                                                      int64_t zero_point, int64_t quant_min,
                                                                      int64_t quant_max) {
  constexpr const char* op = "fake_quantize_per_tensor";
  check_fake_quant_input(op, x, quant_min, quant_max);
  const float scale = static_cast<float>(scale_d);  // PyTorch narrows the double to fp32 too
  check_scale_value(op, scale);
  check_zero_point_value(op, zero_point, quant_min, quant_max);
  const float inv_scale = 1.0f / scale, zp = static_cast<float>(zero_point);
  ChannelLayout whole;
  whole.inner = x.numel();
  return fake_quantize_channels(op, x, whole,
                                {&scale, &inv_scale, &zp, static_cast<float>(quant_min), static_cast<float>(quant_max)});
}

// Per-channel parameters as fp32 vectors, validated on the way.
struct ChannelParams {
  std::vector<float> scale, inv_scale, zero_point;
};

std::vector<float> to_float_vector(const at::Tensor& t) {
  const at::Tensor f = t.to(at::kFloat).contiguous();
  return std::vector<float>(f.data_ptr<float>(), f.data_ptr<float>() + f.numel());
}

ChannelParams channel_params(const char* op, const at::Tensor& scale, std::vector<float> zero_point,
                             int64_t quant_min, int64_t quant_max) {
  ChannelParams p{to_float_vector(scale), {}, std::move(zero_point)};
  p.inv_scale.resize(p.scale.size());
  for (size_t c = 0; c < p.scale.size(); ++c) {
    check_scale_value(op, p.scale[c]);
    check_zero_point_value(op, static_cast<int64_t>(p.zero_point[c]), quant_min, quant_max);
    p.inv_scale[c] = 1.0f / p.scale[c];
  }
  return p;
}

std::tuple<at::Tensor, at::Tensor> fake_quantize_per_channel_cachemask(const at::Tensor& x, const at::Tensor& scale,
                                                                       const at::Tensor& zero_point, int64_t axis,
                                                                       int64_t quant_min, int64_t quant_max) {
  constexpr const char* op = "fake_quantize_per_channel";
  check_fake_quant_input(op, x, quant_min, quant_max);
  const ChannelLayout layout = check_fake_quant_channels(op, x, scale, zero_point, axis, /*float_zero_point=*/false);
  const ChannelParams p = channel_params(op, scale, to_float_vector(zero_point), quant_min, quant_max);
  return fake_quantize_channels(op, x, layout,
                                {p.scale.data(), p.inv_scale.data(), p.zero_point.data(),
                                 static_cast<float>(quant_min), static_cast<float>(quant_max)});
}

at::Tensor fake_quantize_mask_grad(const at::Tensor& grad_in, const at::Tensor& mask_in) {
  constexpr const char* op = "fake_quantize_mask_grad";
  check_mask_grad_args(op, grad_in, mask_in);
  check_cpu(op, "grad", grad_in);
  const at::Tensor grad = grad_in.contiguous(), mask = mask_in.contiguous();
  at::Tensor dx = at::empty(grad.sizes(), grad.options());
  const auto& kernels = cpu::quant_kernels();
  const auto dtype = cpu_dtype(grad.scalar_type());
  const auto* g_bytes = static_cast<const char*>(grad.data_ptr());
  auto* dx_bytes = static_cast<char*>(dx.data_ptr());
  const bool* m = mask.data_ptr<bool>();
  const int64_t elem = grad.element_size();
  ChannelLayout whole;
  whole.inner = grad.numel();
  for_each_channel_run(whole, [&](int64_t offset, int64_t n, int64_t, int64_t) {
    kernels.mask_grad(dtype, g_bytes + offset * elem, m + offset, n, dx_bytes + offset * elem);
  });
  return dx;
}

// The learnable op keeps a float zero point; like PyTorch it is rounded half to even and
// clamped to [quant_min, quant_max] before use.
std::vector<float> rounded_zero_points(const at::Tensor& zero_point, int64_t quant_min, int64_t quant_max) {
  const at::Tensor z = zero_point.to(at::kFloat).contiguous();
  std::vector<float> out(z.data_ptr<float>(), z.data_ptr<float>() + z.numel());
  for (float& v : out) {
    TORCH_CHECK_VALUE(std::isfinite(v), "fake_quantize_learnable_per_channel: zero_point must be finite, got ", v);
    v = std::min(std::max(std::nearbyint(v), static_cast<float>(quant_min)), static_cast<float>(quant_max));
  }
  return out;
}

ChannelLayout check_learnable(const char* op, const at::Tensor& x, const at::Tensor& scale,
                              const at::Tensor& zero_point, int64_t& axis, int64_t quant_min, int64_t quant_max) {
  check_fake_quant_input(op, x, quant_min, quant_max);
  return check_fake_quant_channels(op, x, scale, zero_point, axis, /*float_zero_point=*/true);
}

at::Tensor fake_quantize_learnable_per_channel(const at::Tensor& x, const at::Tensor& scale,
                                               const at::Tensor& zero_point, int64_t axis, int64_t quant_min,
                                               int64_t quant_max, double /*grad_factor: backward only*/) {
  constexpr const char* op = "fake_quantize_learnable_per_channel";
  const ChannelLayout layout = check_learnable(op, x, scale, zero_point, axis, quant_min, quant_max);
  const ChannelParams p = channel_params(op, scale, rounded_zero_points(zero_point, quant_min, quant_max), quant_min,
                                         quant_max);
  return std::get<0>(fake_quantize_channels(op, x, layout,
                                            {p.scale.data(), p.inv_scale.data(), p.zero_point.data(),
                                             static_cast<float>(quant_min), static_cast<float>(quant_max)}));
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> fake_quantize_learnable_per_channel_backward(
    const at::Tensor& dy_in, const at::Tensor& x_in, const at::Tensor& scale, const at::Tensor& zero_point,
    int64_t axis, int64_t quant_min, int64_t quant_max, double grad_factor) {
  constexpr const char* op = "fake_quantize_learnable_per_channel_backward";
  const ChannelLayout layout = check_learnable(op, x_in, scale, zero_point, axis, quant_min, quant_max);
  TORCH_CHECK_VALUE(dy_in.sizes() == x_in.sizes() && dy_in.scalar_type() == x_in.scalar_type(), op,
                    ": dy must match x in shape and dtype, got ", dy_in.sizes(), " ", dy_in.scalar_type(), " vs ",
                    x_in.sizes(), " ", x_in.scalar_type());
  check_same_device(op, "dy", dy_in, x_in);
  const at::Tensor x = x_in.contiguous(), dy = dy_in.contiguous();
  const ChannelParams p = channel_params(op, scale, rounded_zero_points(zero_point, quant_min, quant_max), quant_min,
                                         quant_max);
  at::Tensor dx = at::empty(x.sizes(), x.options());
  // One double accumulator row per thread, summed at the end: runs of different threads
  // may share a channel.
  const int64_t threads = at::get_num_threads();
  std::vector<double> dscale_acc(static_cast<size_t>(threads * layout.channels), 0.0);
  std::vector<double> dzp_acc(dscale_acc.size(), 0.0);
  const auto dtype = cpu_dtype(x.scalar_type());
  const auto* x_bytes = static_cast<const char*>(x.data_ptr());
  const auto* dy_bytes = static_cast<const char*>(dy.data_ptr());
  auto* dx_bytes = static_cast<char*>(dx.data_ptr());
  const int64_t elem = x.element_size();
  if (x.numel() > 0) {
    for_each_channel_run(layout, [&](int64_t offset, int64_t n, int64_t channel, int64_t stride) {
      const int64_t row = at::get_thread_num() * layout.channels + channel;
      const cpu::LearnableRun run{p.scale.data() + channel, p.zero_point.data() + channel, stride,
                                  static_cast<float>(quant_min), static_cast<float>(quant_max),
                                  static_cast<float>(grad_factor)};
      cpu::fake_quantize_learnable_grad(dtype, dy_bytes + offset * elem, x_bytes + offset * elem, n, run,
                                        dx_bytes + offset * elem, dscale_acc.data() + row, dzp_acc.data() + row);
    });
  }
  at::Tensor dscale = at::empty({layout.channels}, scale.options());
  at::Tensor dzp = at::empty({layout.channels}, scale.options());
  for (int64_t c = 0; c < layout.channels; ++c) {
    double scale_sum = 0.0, zp_sum = 0.0;
    for (int64_t t = 0; t < threads; ++t) {
      scale_sum += dscale_acc[t * layout.channels + c];
      zp_sum += dzp_acc[t * layout.channels + c];
    }
    dscale.data_ptr<float>()[c] = static_cast<float>(scale_sum);
    dzp.data_ptr<float>()[c] = static_cast<float>(zp_sum);
  }
  return {dx, dscale, dzp.to(zero_point.scalar_type())};
}

}  // namespace

TORCH_LIBRARY_IMPL(effgen, CPU, m) {
  m.impl("quantize_per_token", &quantize_per_token);
  m.impl("quantize_per_group", &quantize_per_group);
  m.impl("quantize_per_channel", &quantize_per_channel);
  m.impl("dequantize", &dequantize_cpu);
  m.impl("fake_quantize_per_tensor_cachemask", &fake_quantize_per_tensor_cachemask);
  m.impl("fake_quantize_per_channel_cachemask", &fake_quantize_per_channel_cachemask);
  m.impl("fake_quantize_mask_grad", &fake_quantize_mask_grad);
  m.impl("fake_quantize_learnable_per_channel", &fake_quantize_learnable_per_channel);
  m.impl("fake_quantize_learnable_per_channel_backward", &fake_quantize_learnable_per_channel_backward);
}

}  // namespace effgen::ops
