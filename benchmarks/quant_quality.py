"""Perplexity of one model in float and under each quantization mode, on the shipped corpus.

    python benchmarks/quant_quality.py [--model M] [--modes bf16 int8 int4-32 int4-64 int4-128]

Loads the model once and quantizes a copy per mode (the same numbers `qwen3lab eval-ppl -q MODE`
gives, without reloading). Default model: the embedded SmolLM2-135M-Instruct GGUF.
"""

from __future__ import annotations

import argparse
import copy
import json

from qwen3lab import LLM
from qwen3lab.quant import quantize_model
from qwen3lab.quant.quality import perplexity


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None)
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--modes", nargs="+", default=["bf16", "int8", "int4-32", "int4-64", "int4-128"])
    ap.add_argument("--window", type=int, default=512)
    ap.add_argument("--stride", type=int, default=256)
    args = ap.parse_args()
    llm = LLM(args.model, dtype=args.dtype, kv_cache_memory_gb=0.05)
    base_model, base = llm.model, None
    for mode in args.modes:
        row = {"mode": mode}
        try:
            if mode in ("bf16", "float"):
                llm.model = base_model
            else:
                kind, _, group = mode.partition("-")
                llm.model = quantize_model(copy.deepcopy(base_model), kind, int(group) if group else None)
            res = perplexity(llm, window=args.window, stride=args.stride)
            row.update(ppl=round(res.perplexity, 4), nll=round(res.nll, 5), tokens=res.tokens)
            base = base if base is not None else res.perplexity
            row["rel_change_pct"] = round(100 * (res.perplexity / base - 1), 2)
        except ValueError as e:
            row["error"] = str(e)
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
