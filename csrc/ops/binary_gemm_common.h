// Argument checks shared by the CPU and CUDA glue of the binary_gemm family.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "int8_gemm_common.h"

namespace effgen::ops {

inline int64_t packed_row_bytes(int64_t k) { return (k + 7) / 8; }

// packed: uint8 [N, planes * ceil(K/8)] on x's device.
inline void check_packed(const char* op, const at::Tensor& packed, int64_t k, int64_t planes, const at::Tensor& x) {
  TORCH_CHECK_TYPE(packed.scalar_type() == at::kByte, op, ": packed must be uint8, got ", packed.scalar_type());
  check_same_device(op, "packed", packed, x);
  TORCH_CHECK_VALUE(packed.dim() == 2 && packed.size(1) == planes * packed_row_bytes(k), op,
                    ": packed must be [N, ", planes * packed_row_bytes(k), "] for K = ", k, ", got shape ",
                    packed.sizes());
}

}  // namespace effgen::ops
