"""How many blocks the few-row 16-bit GEMVs should launch (GPU only): BinaryLinear,
TernaryLinear and Int8WeightOnlyLinear (W8A16) at decode sizes, each timed with a block per
channel tile (the default), with as many blocks as the SMs hold at once ("resident"), and
with caps of 1 to 4 blocks a SM (EFFGEN_CUDA_SKINNY_BLOCKS; fewer blocks than tiles take
them in turn, the next tile's weights loading under a tile's epilogue), against bf16
F.linear, interleaved in one run. Weights rotate through more than 512 MB per format, every
copy used once per timed CUDA graph, so they come from HBM, not L2.

Session 45's H200 run had BinaryLinear at 1 x 8192 -> 8192 at 16% of the copy bandwidth
(2.81x bf16; #4 asks 5x) and W8A16 at 56-63% (#3 asks 85%), both with 512 blocks of one tile
in about two waves of 2-3 blocks a SM.

    python benchmarks/skinny_blocks_study.py [--json PATH]
"""

from __future__ import annotations

import argparse
import json

import torch
import torch.nn.functional as F

import effgen_kernels as ek
from effgen_kernels.bench import Rotation, memory_bandwidth_gbps, time_interleaved, with_env

# (layer, rows of x, K, N)
CASES = [("binary", 1, 8192, 8192), ("binary", 16, 8192, 8192), ("binary", 1, 4096, 11008),
         ("binary", 1, 11008, 4096), ("ternary", 1, 8192, 8192), ("w8a16", 1, 8192, 8192),
         ("w8a16", 16, 8192, 8192), ("w8a16", 1, 4096, 11008)]
LAYERS = {"binary": (ek.nn.BinaryLinear, 1 / 8), "ternary": (ek.nn.TernaryLinear, 1 / 4),
          "w8a16": (ek.nn.Int8WeightOnlyLinear, 1)}  # class, weight bytes per weight


def time_case(layer: str, m: int, k: int, n: int, sms: int, copy_gbps: float) -> dict:
    torch.manual_seed(0)
    linear = torch.nn.Linear(k, n, device="cuda")
    cls, bytes_per_weight = LAYERS[layer]
    weight_bytes = int(n * k * bytes_per_weight)
    ours = Rotation(lambda: cls.from_float(linear), weight_bytes)
    w, b = linear.weight.detach(), linear.bias.detach()
    bf16 = Rotation(lambda: (w.bfloat16(), b.bfloat16()), 2 * n * k)
    x = torch.randn(m, k, device="cuda", dtype=torch.bfloat16)

    def call():
        return ours.next()(x)

    settings = {"tile": "tile", "resident": "resident", **{f"{c}/SM": str(c * sms) for c in (1, 2, 3, 4)}}
    fns = {name: with_env("EFFGEN_CUDA_SKINNY_BLOCKS", value, call) for name, value in settings.items()}
    fns["bf16 F.linear"] = lambda: F.linear(x, *bf16.next())
    copies = max(len(ours), len(bf16))
    seconds = time_interleaved(fns, reps=15, warmup=copies + 1, device="cuda", graph_calls=copies)
    us = {name: s * 1e6 for name, s in seconds.items()}
    return {"layer": layer, "shape": f"{m}x{k}x{n}", "weight_bytes": weight_bytes, "us": us,
            "copy_fraction": {name: weight_bytes / (us[name] * 1e-6) / (copy_gbps * 1e9) for name in settings}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="write the rows here")
    args = parser.parse_args()
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    copy_gbps = memory_bandwidth_gbps("cuda")["copy"]
    print(f"{torch.cuda.get_device_name(0)}, {sms} SMs, copy {copy_gbps:.0f} GB/s; microseconds a call (median of "
          "15 graph replays of every rotated copy); in brackets bf16 F.linear's time over ours, then the weights' "
          "bytes per second over the copy's")
    rows = []
    for layer, m, k, n in CASES:
        row = time_case(layer, m, k, n, sms, copy_gbps)
        rows.append(row)
        us = row["us"]
        cells = [f"{name} {t:.1f} ({us['bf16 F.linear'] / t:.2f}x, {row['copy_fraction'][name]:.0%})"
                 for name, t in us.items() if name != "bf16 F.linear"]
        print(f"{layer:>8} {row['shape']:>14}  bf16 {us['bf16 F.linear']:.1f}  " + "  ".join(cells), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": torch.cuda.get_device_name(0), "sms": sms, "copy_gbps": copy_gbps, "rows": rows}, f,
                      indent=1)


if __name__ == "__main__":
    main()
