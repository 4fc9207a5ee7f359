// Small helpers every CPU glue file needs: the kernels' element type for a tensor's dtype,
// the device check with the op's name in the message, weight conversions over threads.
#pragma once
#include <ATen/Parallel.h>
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include <algorithm>

#include "../kernels/cpu/dtypes.h"

namespace effgen::ops {

// float32, bfloat16 and float16 map one to one; callers have checked the dtype before.
inline cpu::DType cpu_dtype(at::ScalarType t) {
  switch (t) {
    case at::kBFloat16: return cpu::DType::kBF16;
    case at::kHalf: return cpu::DType::kF16;
    default: return cpu::DType::kF32;
  }
}

inline void check_cpu(const char* op, const char* name, const at::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), op, ": ", name, " must be a CPU tensor here, got ", t.device());
}

// Conversions (pack, unpack, re-tile) split a layer's rows over torch's threads, tasks of
// about this many weights.
constexpr int64_t kConversionGrain = 1 << 16;

// f(r0, r1) over ranges of `rows` rows of `row_weights` weights each.
template <typename F>
void for_row_ranges(int64_t rows, int64_t row_weights, const F& f) {
  at::parallel_for(0, rows, std::max<int64_t>(1, kConversionGrain / std::max<int64_t>(row_weights, 1)), f);
}

}  // namespace effgen::ops
