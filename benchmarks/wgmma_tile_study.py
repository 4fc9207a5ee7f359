"""Where the wgmma GEMM starts to pay (GPU only): Int8Linear on products whose 128 x 256 output
tiles number 32 to 344, timed as the default route (`auto`: wgmma where
int8_gemm_wgmma_pays says so, else cuBLAS's int32 sums through our epilogue), forced onto
wgmma, against raw torch._int_mm (cuBLAS without quantization or epilogue: a lower bound of
the cuBLAS route's time) and bf16 F.linear, interleaved in one run. Session 44 measured 0.90x
cuBLAS at 64 tiles and 1.15x at 128 on an H200 (132 SMs); this places the line between.

    python benchmarks/wgmma_tile_study.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math

import torch
import torch.nn.functional as F

import effgen_kernels as ek
from effgen_kernels.bench import time_interleaved, with_env

TILE_ROWS, TILE_COLS = 128, 256  # the wgmma kernel's output tile (int8_gemm_wgmma.cu)
K = 4096
# (rows, output columns): 32, 64, 80, 96, 104, 112, 120, 128, 172 and 344 tiles.
SHAPES = [(512, 2048), (512, 4096), (512, 5120), (512, 6144), (512, 6656), (1024, 3584), (1024, 3840),
          (1024, 4096), (512, 11008), (1024, 11008)]


def tiles(m: int, n: int) -> int:
    return math.ceil(m / TILE_ROWS) * math.ceil(n / TILE_COLS)


def time_shape(m: int, n: int, sms: int) -> dict:
    torch.manual_seed(0)
    linear = torch.nn.Linear(K, n, device="cuda")
    layer = ek.nn.Int8Linear.from_float(linear)
    x = torch.randn(m, K, device="cuda", dtype=torch.bfloat16)
    w_bf16, b_bf16 = linear.weight.detach().bfloat16(), linear.bias.detach().bfloat16()
    xq, _ = ek.ops.quantize_per_token(x)
    wq_t = ek.ops.quantize_per_channel(linear.weight.detach(), 0)[0].t()
    fns = {
        "auto": lambda: layer(x),
        "wgmma": with_env("EFFGEN_CUDA_INT8_GEMM", "wgmma", lambda: layer(x)),
        "torch._int_mm (raw)": lambda: torch._int_mm(xq, wq_t),
        "bf16 F.linear": lambda: F.linear(x, w_bf16, b_bf16),
    }
    seconds = time_interleaved(fns, reps=30, warmup=3, device="cuda", graph_calls=5)
    count = tiles(m, n)
    # int8_gemm_wgmma_pays's rule (C++), repeated here to mark the rows: more than half the SMs
    return {"shape": f"{m}x{K}x{n}", "tiles": count, "auto_takes_wgmma": 2 * count > sms,
            "us": {name: s * 1e6 for name, s in seconds.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    rows = []
    print(f"{torch.cuda.get_device_name(0)}, {sms} SMs; microseconds (median of 30 x 5 graph-replayed calls)")
    print(f"{'shape':>18} {'tiles':>5} {'auto':>10} {'wgmma':>10} {'_int_mm':>10} {'bf16':>10}"
          f"  wgmma/auto  wgmma/_int_mm  bf16/wgmma")
    for m, n in SHAPES:
        row = time_shape(m, n, sms)
        rows.append(row)
        us = row["us"]
        auto = f"{us['auto']:.1f}{'*' if row['auto_takes_wgmma'] else ''}"
        print(f"{row['shape']:>18} {row['tiles']:>5} {auto:>10} {us['wgmma']:>10.1f} "
              f"{us['torch._int_mm (raw)']:>10.1f} {us['bf16 F.linear']:>10.1f}  {us['auto'] / us['wgmma']:>10.2f}"
              f"  {us['torch._int_mm (raw)'] / us['wgmma']:>13.2f}  {us['bf16 F.linear'] / us['wgmma']:>10.2f}")
    print("* auto runs wgmma here; elsewhere cuBLAS's _int_mm and our epilogue")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "sms": sms, "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
