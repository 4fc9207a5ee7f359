"""One call of each of our CUDA kernels at a benchmark's shape, for a profiler to look at, e.g.
`ncu --kernel-name regex:effgen python scripts/cuda_profile.py binary quant`. Targets:
  int8     Int8Linear on a Llama MLP layer, 2048 x 4096 -> 11008 (5.2 waves of the wgmma
           kernel's tiles on an H200), then 512 x 8192 -> 8192 (one wave of 128 tiles), bf16
           activations (EFFGEN_CUDA_INT8_GEMM chooses the GEMM: auto, mma or wgmma);
  binary   BinaryLinear and TernaryLinear at decode, 1 and 16 x 8192 -> 8192, bf16;
  w8a16    Int8WeightOnlyLinear and Int8Linear (W8A8 GEMV), 1 and 16 x 8192 -> 8192, bf16;
  quant    the quant ops on 8192 x 8192 (fp32 and bf16);
  codecs   the gradient codecs on 64M fp32 values, decoders summing 2 rows.
Each op runs once (no warm-up: a profiler replays the kernel itself)."""

import sys

import torch

import effgen_kernels as ek

DEVICE = "cuda"


def layer(convert, m: int, k: int, n: int) -> None:
    module = convert(torch.nn.Linear(k, n, device=DEVICE))
    module(torch.randn(m, k, device=DEVICE, dtype=torch.bfloat16))


def int8() -> None:
    layer(ek.nn.Int8Linear.from_float, 2048, 4096, 11008)
    layer(ek.nn.Int8Linear.from_float, 512, 8192, 8192)


def binary() -> None:
    for convert in (ek.nn.BinaryLinear.from_float, ek.nn.TernaryLinear.from_float):
        for m in (1, 16):
            layer(convert, m, 8192, 8192)


def w8a16() -> None:
    for convert in (ek.nn.Int8WeightOnlyLinear.from_float, ek.nn.Int8Linear.from_float):
        for m in (1, 16):
            layer(convert, m, 8192, 8192)


def quant() -> None:
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(8192, 8192, device=DEVICE, dtype=dtype)
        q, scale = ek.ops.quantize_per_token(x)
        ek.ops.dequantize(q, scale, out_dtype=dtype)
        ek.ops.fake_quantize_per_tensor(x, 0.02, 3, -128, 127)
        channel_scale = torch.rand(8192, device=DEVICE) * 0.05 + 0.01
        zero_point = torch.zeros(8192, device=DEVICE, dtype=torch.int32)
        ek.ops.fake_quantize_per_channel(x, channel_scale, zero_point, 0, -128, 127)


def codecs() -> None:
    ops, block = torch.ops.effgen, 256
    x = torch.randn(64 << 20, device=DEVICE)
    q, scales = ops.ef_compress_int8(x, torch.zeros_like(x), block)
    ops.decompress_sum_int8(torch.stack([q, q]), torch.stack([scales, scales]), block)
    packed, scales = ops.ef_compress_sign(x, torch.zeros_like(x), block)
    ops.decompress_sum_sign(torch.stack([packed, packed]), torch.stack([scales, scales]), x.numel(), block)


TARGETS = {"int8": int8, "binary": binary, "w8a16": w8a16, "quant": quant, "codecs": codecs}


def main(names: list[str]) -> None:
    torch.manual_seed(0)
    for name in names or ["int8"]:
        TARGETS[name]()
    torch.cuda.synchronize()


if __name__ == "__main__":
    main(sys.argv[1:])
