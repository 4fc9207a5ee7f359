// For host checks that include int8_gemm.cu: its launcher also names the pipelined kernels
// of other files (int8_gemm_tiled.cu, int8_gemm_wgmma.cu); nothing is launched on the host.
#pragma once

namespace effgen::cuda {
bool tma_gemm_takes(const Int8GemmArgs&) { return false; }
cudaError_t int8_gemm_tiled(const Int8GemmArgs&, cudaStream_t) { return cudaErrorNotSupported; }
cudaError_t int8_gemm_wgmma(const Int8GemmArgs&, cudaStream_t) { return cudaErrorNotSupported; }
}  // namespace effgen::cuda
