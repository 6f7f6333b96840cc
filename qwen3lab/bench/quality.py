"""``qwen3lab bench --quality``: what quantization costs in perplexity, on a real model.

The real SmolLM2-135M-Instruct (the embedded default) or any --model scores the shipped corpus in
bf16, then int8 and int4 at several group sizes; each row prints the relative change.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

MODES = [(None, None), ("int8", None), ("int4", 128), ("int4", 64), ("int4", 32)]


def compare_precisions(model: str | None = None, window: int = 512, stride: int = 256,
                       max_tokens: int | None = None, out: str | None = None) -> list[dict]:
    from ..llm import LLM
    from ..quant.quality import corpus_text, perplexity

    text = corpus_text(None)
    rows = []
    for mode, group in MODES:
        llm = LLM(model, dtype="bfloat16", kv_cache_memory_gb=0.05, quantization=mode,
                  quantization_group_size=group)
        res = perplexity(llm, text, window, stride, max_tokens)
        rows.append({"quantization": mode or "bf16", "group_size": group, "perplexity": res.perplexity,
                     "tokens": res.tokens})
        del llm
        gc.collect()
    base = rows[0]["perplexity"]
    print(f"{'precision':<12}{'group':>6}{'perplexity':>12}{'change':>9}")
    for r in rows:
        r["relative_change"] = r["perplexity"] / base - 1
        print(f"{r['quantization']:<12}{r['group_size'] or '-':>6}{r['perplexity']:>12.4f}"
              f"{100 * r['relative_change']:>8.2f}%")
    if out:
        Path(out).write_text(json.dumps(rows, indent=2))
    return rows
