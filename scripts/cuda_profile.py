"""A few calls of one layer for a profiler to look at, e.g.
`ncu --kernel-name regex:wgmma --launch-count 1 python scripts/cuda_profile.py int8`:
  int8    Int8Linear on a Llama MLP layer, 2048 x 4096 -> 11008, bf16 activations
          (EFFGEN_CUDA_INT8_GEMM chooses the GEMM: auto, mma or wgmma);
  binary  BinaryLinear at decode, 1 x 8192 -> 8192, bf16 activations."""

import sys

import torch

import effgen_kernels as ek

LAYERS = {
    "int8": (lambda linear: ek.nn.Int8Linear.from_float(linear), 2048, 4096, 11008),
    "binary": (lambda linear: ek.nn.BinaryLinear.from_float(linear), 1, 8192, 8192),
}


def main(name: str) -> None:
    convert, m, k, n = LAYERS[name]
    torch.manual_seed(0)
    layer = convert(torch.nn.Linear(k, n).cuda())
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        layer(x)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "int8")
