// Small helpers every CPU glue file needs: the kernels' element type for a tensor's dtype,
// and the device check with the op's name in the message.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

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

}  // namespace effgen::ops
