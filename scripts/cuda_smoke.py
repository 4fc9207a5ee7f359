"""Every CUDA kernel once on small, odd-sized inputs: the workload compute-sanitizer checks
(memcheck, racecheck) in scripts/gpu_check.sh. Exits non-zero if a result disagrees with
the CPU kernels."""

import os

import torch

import effgen_kernels as ek

ops = ek.ops


def main() -> None:
    torch.manual_seed(0)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        for shape in ((1, 1), (3, 129), (5, 4099)):
            x = torch.randn(shape).to(dtype)
            xc = x.cuda()
            for fn in (ops.quantize_per_token, lambda t: ops.quantize_per_group(t, 64),
                       lambda t: ops.quantize_per_channel(t, 1)):
                (q, s), (qc, sc) = fn(x), fn(xc)
                assert torch.equal(q, qc.cpu()) and torch.equal(s, sc.cpu()), (fn, dtype, shape)
            q, s = ops.quantize_per_token(xc)
            ops.dequantize(q, s, out_dtype=dtype)
            channels = shape[1]
            scale = torch.rand(channels, device="cuda") * 0.1 + 0.01
            zp = torch.randint(-4, 4, (channels,), device="cuda", dtype=torch.int32)
            y = ops.fake_quantize_per_channel(xc, scale, zp, 1, -128, 127)
            assert torch.equal(y.cpu(), ops.fake_quantize_per_channel(x, scale.cpu(), zp.cpu(), 1, -128, 127))
            ops.fake_quantize_per_tensor(xc, 0.05, 1, -128, 127)
            leaf = xc.float().requires_grad_()
            learn_scale = scale.clone().requires_grad_()
            learn_zp = zp.float().requires_grad_()
            ops.fake_quantize_learnable_per_channel(leaf, learn_scale, learn_zp, 1, -8, 7).sum().backward()
    # Every int8 kernel: GEMV in bytes and in 16-byte pieces, general GEMM, the pipelined GEMMs
    # (partial row, column and K tiles; mma.sync, then the default: wgmma on sm_90a).
    shapes = ((1, 5, 7), (3, 130, 129), (5, 40, 1040), (70, 65, 4099), (33, 70, 256), (130, 129, 80))
    for kernel, (m, n, k) in [("mma", (130, 129, 80))] + [("auto", shape) for shape in shapes]:
        os.environ["EFFGEN_CUDA_INT8_GEMM"] = kernel
        xq = torch.randint(-128, 128, (m, k), dtype=torch.int8)
        wq = torch.randint(-128, 128, (n, k), dtype=torch.int8)
        x_scale, w_scale = torch.rand(m) + 0.01, torch.rand(n) + 0.01
        out = ops.int8_linear(xq.cuda(), x_scale.cuda(), wq.cuda(), w_scale.cuda())
        assert torch.equal(out.cpu(), ops.int8_linear(xq, x_scale, wq, w_scale)), (kernel, m, n, k)
        x = torch.randn(m, k)
        ops.int8_dynamic_linear(x.cuda(), wq.cuda(), w_scale.cuda())
        ops.int8_weight_only_linear(x.cuda(), wq.cuda(), w_scale.cuda())
    for m, k in ((1, 7), (16, 4097), (20, 300)):
        x, w = torch.randn(m, k), torch.randn(33, k)
        packed, alpha = ops.pack_binary(w.cuda()), w.abs().mean(1).cuda()
        assert torch.equal(packed.cpu(), ops.pack_binary(w)), (m, k)
        ops.binary_linear(x.cuda(), packed, alpha)
        ops.xnor_linear(x.cuda(), packed, alpha)
        q = ops.unpack_ternary(ops.pack_ternary(torch.randint(-1, 2, (33, k), dtype=torch.int8).cuda()), k)
        ops.ternary_linear(x.cuda(), ops.pack_ternary(q), alpha)
    torch.cuda.synchronize()
    print("cuda smoke: all kernels ran and matched the CPU kernels")


if __name__ == "__main__":
    main()
