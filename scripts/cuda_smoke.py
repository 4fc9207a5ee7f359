"""Every CUDA kernel once on small, odd-sized inputs: the workload compute-sanitizer checks
(memcheck, racecheck) in scripts/gpu_check.sh. Results are compared with the CPU kernels;
a mismatch is reported and the run goes on (so the sanitizer still sees every kernel), and
the exit code is 1 if there was any."""

import itertools
import os
import sys

import torch

import effgen_kernels as ek
from effgen_kernels.cli import build_info, cuda_int8_kernels

ops = ek.ops
codecs = torch.ops.effgen
mismatches: list[str] = []


def check(what, got, expected) -> None:
    """Records `what` when the GPU's tensors differ from the CPU's (tuples compared item by item)."""
    got, expected = (got, expected) if isinstance(got, tuple) else ((got,), (expected,))
    if not all(torch.equal(g.cpu(), e) for g, e in zip(got, expected, strict=True)):
        mismatches.append(str(what))


def quant_kernels() -> None:
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape in ((1, 1), (3, 129), (5, 4099), (2, 12289), (2, 20000)):
            x = torch.randn(shape).to(dtype)
            xc = x.cuda()
            quantizers = (("per token", ops.quantize_per_token), ("per group", lambda t: ops.quantize_per_group(t, 64)),
                          ("per channel", lambda t: ops.quantize_per_channel(t, 1)))
            for name, fn in quantizers:
                check(("quantize", name, dtype, shape), fn(xc), fn(x))
            q, s = ops.quantize_per_token(xc)
            ops.dequantize(q, s, out_dtype=dtype)
            channels = shape[1]
            scale = torch.rand(channels, device="cuda") * 0.1 + 0.01
            zp = torch.randint(-4, 4, (channels,), device="cuda", dtype=torch.int32)
            check(("fake quant", dtype, shape), ops.fake_quantize_per_channel(xc, scale, zp, 1, -128, 127),
                  ops.fake_quantize_per_channel(x, scale.cpu(), zp.cpu(), 1, -128, 127))
            ops.fake_quantize_per_tensor(xc, 0.05, 1, -128, 127)
            leaf = xc.float().requires_grad_()
            learn_scale = scale.clone().requires_grad_()
            learn_zp = zp.float().requires_grad_()
            ops.fake_quantize_learnable_per_channel(leaf, learn_scale, learn_zp, 1, -8, 7).sum().backward()


def int8_kernels() -> None:
    # The GEMV, the general GEMM, the pipelined mma.sync GEMM (partial row, column and K
    # tiles), cuBLAS's sums through our epilogue (auto, 40 x 64 x 96) and, on sm_90a, the TMA +
    # wgmma GEMM (partial tiles; K through its stage ring more than once).
    shapes = ((1, 5, 7), (3, 130, 129), (5, 40, 1040), (70, 65, 4099), (33, 70, 256), (130, 129, 80), (40, 64, 96))
    forced = [("mma", (130, 129, 80))]
    if "wgmma" in cuda_int8_kernels(build_info()):
        forced += [("wgmma", (130, 129, 80)), ("wgmma", (300, 520, 1040))]
    for kernel, (m, n, k) in forced + [("auto", shape) for shape in shapes]:
        os.environ["EFFGEN_CUDA_INT8_GEMM"] = kernel
        xq = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        wq = torch.randint(-128, 128, (n, k), dtype=torch.int8)
        x_scale, w_scale = torch.rand(m) + 0.01, torch.rand(n) + 0.01
        check(("int8_linear", kernel, m, n, k), ops.int8_linear(xq.cuda(), x_scale.cuda(), wq.cuda(), w_scale.cuda()),
              ops.int8_linear(xq, x_scale, wq, w_scale))
        x = torch.randn(m, k)
        ops.int8_dynamic_linear(x.cuda(), wq.cuda(), w_scale.cuda())
        ops.int8_weight_only_linear(x.cuda(), wq.cuda(), w_scale.cuda())
    os.environ.pop("EFFGEN_CUDA_INT8_GEMM")


def binary_kernels() -> None:
    # k % 32 == 0 in bf16: the tensor-core GEMV; m = 20: the expanded cuBLAS product
    shapes = ((1, 7), (16, 4097), (20, 300), (1, 256), (13, 4096))
    for (m, k), dtype in itertools.product(shapes, (torch.float32, torch.bfloat16)):
        x, w = torch.randn(m, k).to(dtype), torch.randn(33, k)
        packed, alpha = ops.pack_binary(w.cuda()), w.abs().mean(1).cuda()
        check(("pack_binary", m, k), packed, ops.pack_binary(w))
        ops.binary_linear(x.cuda(), packed, alpha)
        ops.xnor_linear(x.cuda(), packed, alpha)
        q = ops.unpack_ternary(ops.pack_ternary(torch.randint(-1, 2, (33, k), dtype=torch.int8).cuda()), k)
        ops.ternary_linear(x.cuda(), ops.pack_ternary(q), alpha)


def skinny_kernels() -> None:
    # The few-row 16-bit kernels with x staged in shared memory (the default) and, under
    # EFFGEN_CUDA_SKINNY_X=global, read from global memory; then two blocks taking the three
    # channel tiles in turn (EFFGEN_CUDA_SKINNY_BLOCKS=2: the epilogue's shared sums reused,
    # which racecheck watches). One and two channel tiles, per channel and per group of 128.
    for place, blocks in (("shared", "tile"), ("global", "tile"), ("shared", "2")):
        os.environ["EFFGEN_CUDA_SKINNY_X"], os.environ["EFFGEN_CUDA_SKINNY_BLOCKS"] = place, blocks
        skinny_products()
    os.environ.pop("EFFGEN_CUDA_SKINNY_X")
    os.environ.pop("EFFGEN_CUDA_SKINNY_BLOCKS")


def skinny_products() -> None:
    for m, k in ((1, 4096), (3, 1024), (16, 512)):
        x, w = torch.randn(m, k, dtype=torch.bfloat16).cuda(), torch.randn(45, k)
        packed, alpha = ops.pack_binary(w.cuda()), w.abs().mean(1).cuda()
        ops.binary_linear(x, packed, alpha)
        ops.ternary_linear(x, ops.pack_ternary(torch.randint(-1, 2, (45, k), dtype=torch.int8).cuda()), alpha)
        for group_size in (None, 128):
            wq, w_scale = ops.quantize_per_channel(w, 0) if group_size is None else ops.quantize_per_group(w, 128)
            ops.int8_weight_only_linear(x, wq.cuda(), w_scale.cuda(), None, group_size)


def compress_kernels() -> None:
    # block 256: the fused encoders and 16-byte pieces; block 12: the sign codec's other path
    for n, block in ((4099, 256), (1000, 12)):
        x = torch.randn(n)
        for encoder in (codecs.ef_compress_int8, codecs.ef_compress_sign):
            error = torch.randn(n) * 0.01
            error_gpu = error.cuda()
            check((encoder.__name__, n, block), encoder(x.cuda(), error_gpu, block), encoder(x, error, block))
            check((encoder.__name__, "residual", n, block), error_gpu, error)
        blocks = -(-n // block)
        q, scales = torch.randint(-127, 128, (3, n), dtype=torch.int8), torch.rand(3, blocks)
        packed = torch.randint(0, 256, (3, (n + 7) // 8), dtype=torch.uint8)
        check(("decompress_sum_int8", n, block), codecs.decompress_sum_int8(q.cuda(), scales.cuda(), block),
              codecs.decompress_sum_int8(q, scales, block))
        levels = torch.randn(3, 2 * blocks)  # (low, high) a block
        check(("decompress_sum_sign", n, block), codecs.decompress_sum_sign(packed.cuda(), levels.cuda(), n, block),
              codecs.decompress_sum_sign(packed, levels, n, block))


def main() -> int:
    torch.manual_seed(0)
    for family in (quant_kernels, int8_kernels, binary_kernels, skinny_kernels, compress_kernels):
        family()
    torch.cuda.synchronize()
    if mismatches:
        print("cuda smoke: GPU and CPU kernels differ on", *mismatches, sep="\n  ")
        return 1
    print("cuda smoke: all kernels ran and matched the CPU kernels")
    return 0


if __name__ == "__main__":
    sys.exit(main())
