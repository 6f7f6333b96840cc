"""``qwen3lab bench --quality``: what quantization costs in perplexity, on a real model.

The real SmolLM2-135M-Instruct (the embedded default) or any --model scores the shipped corpus in
bf16, then int8 and int4 at several group sizes; each row prints the relative change. Each window
is scored twice: in one pass (prefill arithmetic) and 16 tokens at a time through the KV cache, which
runs the decode kernels (for int8 and int4 those also quantize activations to int8, per 64 values for
int8 and per 32 for int4).
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

MODES = [(None, None), ("int8", None), ("int4", 128), ("int4", 64), ("int4", 32)]
DECODE_CHUNK = 16  # rows per forward when scoring the decode path (under qwen3lab.kernels.MAX_ROWS)


def compare_precisions(model: str | None = None, window: int = 512, stride: int = 256,
                       max_tokens: int | None = None, out: str | None = None) -> list[dict]:
    from ..llm import LLM
    from ..quant.int4 import DEFAULT_GROUP_SIZE
    from ..quant.quality import corpus_text, perplexity

    text = corpus_text(None)
    rows = []
    for mode, group in MODES:
        try:
            llm = LLM(model, dtype="bfloat16", kv_cache_memory_gb=0.05, quantization=mode,
                      quantization_group_size=group)
        except ValueError as e:  # e.g. a group size that does not divide the model's widths
            print(f"skipped {mode} g{group}: {e}", flush=True)
            continue
        res = perplexity(llm, text, window, stride, max_tokens)
        # The decode path for the default modes only: it is slower to score (16 tokens per forward).
        dec = perplexity(llm, text, window, stride, max_tokens, chunk=DECODE_CHUNK) \
            if group in (None, DEFAULT_GROUP_SIZE) else None
        rows.append({"quantization": mode or "bf16", "group_size": group, "perplexity": res.perplexity,
                     "decode_path_perplexity": dec.perplexity if dec else None, "tokens": res.tokens})
        print(f"{mode or 'bf16'} g{group}: perplexity {res.perplexity:.4f}, decode path "
              f"{dec.perplexity if dec else float('nan'):.4f}", flush=True)
        del llm
        gc.collect()
    base, base_dec = rows[0]["perplexity"], rows[0]["decode_path_perplexity"]
    print(f"{'precision':<12}{'group':>6}{'perplexity':>12}{'change':>9}{'decode path':>13}{'change':>9}")
    for r in rows:
        r["relative_change"] = r["perplexity"] / base - 1
        dec = r["decode_path_perplexity"]
        r["decode_path_relative_change"] = dec / base_dec - 1 if dec else None
        tail = f"{dec:>13.4f}{100 * r['decode_path_relative_change']:>8.2f}%" if dec else f"{'-':>13}{'-':>9}"
        print(f"{r['quantization']:<12}{r['group_size'] or '-':>6}{r['perplexity']:>12.4f}"
              f"{100 * r['relative_change']:>8.2f}%{tail}")
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))
    return rows
