"""compress family: the gradient codecs of the compressed all-reduce (fused, one pass)
against the same algorithm written op by op in eager PyTorch (reference.py), with the
achieved bandwidth as a fraction of the machine's memory bandwidth (issue goals: 60% on the
development CPU, 85% of HBM on an H200). Buffers of 16M values on the CPU (64 MB of fp32,
larger than the last-level cache), 64M on a GPU; the hook's default blocks (int8 256,
sign 512). The decoders sum two rows, as
a 2-worker server does. reference.py builds CPU tensors, so on a GPU the peer is a device
copy of the input instead; the int8 decoder also meets torch's own int8 -> fp32 conversion
of one row (`payload.float()`: the same 4 bytes written a value, half the bytes read), the
rate PyTorch's elementwise kernels reach on this mix of traffic.
"""

from __future__ import annotations

import functools

import torch

from effgen_kernels import reference as ref
from effgen_kernels.bench import BenchContext, BenchResult
from effgen_kernels.distributed.compression import DEFAULT_BLOCK_SIZE

FAMILY = "compress"
_ops = torch.ops.effgen
CODECS = {  # codec: (encoder, its reference, decoder, its reference, payload bytes per value)
    "int8": (_ops.ef_compress_int8, ref.ef_compress_int8,
             lambda rows, scales, n, block: _ops.decompress_sum_int8(rows, scales, block),
             lambda rows, scales, n, block: ref.decompress_sum_int8(rows, scales, block), 1.0),
    "sign": (_ops.ef_compress_sign, ref.ef_compress_sign, _ops.decompress_sum_sign, ref.decompress_sum_sign, 1 / 8),
}


def run(ctx: BenchContext) -> list[BenchResult]:
    n = (1 << 26) if ctx.device.type == "cuda" else (1 << 24)
    x = torch.randn(n, device=ctx.device)
    return [result for codec in CODECS for result in run_codec(ctx, codec, x)]


def run_codec(ctx: BenchContext, codec: str, x: torch.Tensor) -> list[BenchResult]:
    encode, encode_ref, decode, decode_ref, per_value = CODECS[codec]
    block = DEFAULT_BLOCK_SIZE[codec]
    n, shape = x.numel(), f"{x.numel() >> 20}M values"
    ours_error, peer_error = torch.zeros_like(x), torch.zeros_like(x)
    payload, scales = encode(x, ours_error, block)  # scales: int8's, or sign's levels
    payload_bytes, scales_bytes = int(n * per_value), 4 * scales.numel()
    rows, row_scales = torch.stack([payload, payload]), torch.stack([scales, scales])
    if ctx.device.type == "cpu":
        peer_name = "eager reference"
        encode_peer = functools.partial(encode_ref, x, peer_error, block)
        decode_peer = functools.partial(decode_ref, rows, row_scales, n, block)
    else:
        peer_name, encode_peer, decode_peer = "copy of x", x.clone, x.clone
    decode_bytes = 2 * (payload_bytes + scales_bytes) + 4 * n
    results = [
        # Reads x, reads and writes the residual, writes the payload and scales.
        ctx.measure(FAMILY, f"ef_compress_{codec}", shape, x.dtype, functools.partial(encode, x, ours_error, block),
                    peer_name, encode_peer, bytes_moved=12 * n + payload_bytes + scales_bytes),
        ctx.measure(FAMILY, f"decompress_sum_{codec} (2 rows)", shape, x.dtype,
                    functools.partial(decode, rows, row_scales, n, block), peer_name, decode_peer,
                    bytes_moved=decode_bytes),
    ]
    if ctx.device.type == "cuda" and codec == "int8":
        results.append(ctx.measure(FAMILY, "decompress_sum_int8 (2 rows)", shape, x.dtype,
                                   functools.partial(decode, rows, row_scales, n, block), "torch int8 -> fp32, 1 row",
                                   payload.float, bytes_moved=decode_bytes))
    return results


if __name__ == "__main__":
    from effgen_kernels.cli import main

    main(["bench", "--only", FAMILY])
