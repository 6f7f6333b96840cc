"""Speed of one quantized linear layer per mode at Qwen3-4B shapes (decode: one token, M=1).

    python benchmarks/quant_kernels.py [--m 1] [--threads N]

Times F.linear on a bf16 weight against the int8 and int4 layouts (each group size) on the same
random weight; prints median microseconds per call and the effective weight bandwidth. Decode is
bound by reading the weights, so fewer bytes per weight should mean proportionally less time.
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from qwen3lab.quant import GROUP_SIZES
from qwen3lab.quant.apply import quantize_linear

SHAPES = {"gate/up_proj": (2560, 9728), "down_proj": (9728, 2560), "lm_head": (2560, 151936)}  # (in, out)


def bench(fn, x, min_time: float = 1.0) -> float:
    for _ in range(3):
        fn(x)
    times, start = [], time.perf_counter()
    while time.perf_counter() - start < min_time or len(times) < 10:
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--m", type=int, default=1, help="tokens per call (1 = decode)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--shapes", nargs="+", default=list(SHAPES), choices=list(SHAPES))
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    for shape in args.shapes:
        k, n = SHAPES[shape]
        torch.manual_seed(0)
        lin = nn.Linear(k, n, bias=False, dtype=torch.bfloat16)
        x = torch.randn(args.m, k, dtype=torch.bfloat16)
        layers = {"bf16": (lin, 2.0), "int8": (quantize_linear(lin, "int8"), 1.0)}
        for g in GROUP_SIZES:
            q = quantize_linear(lin, "int4", g)
            layers[f"int4-g{g}"] = (q, 0.5 + 4 * 2 / g)  # nibbles + bf16 scale and zero per group
        base = None
        for name, (layer, bytes_per_weight) in layers.items():
            sec = bench(layer, x)
            base = base or sec
            print(json.dumps({"shape": f"[{args.m},{k}]x[{n},{k}]", "layer": shape, "mode": name,
                              "us": round(sec * 1e6, 1), "speedup_vs_bf16": round(base / sec, 2),
                              "GB/s": round(k * n * bytes_per_weight / sec / 1e9, 1)}), flush=True)


if __name__ == "__main__":
    main()
