"""`qwen3lab eval-ppl`: perplexity of a model on the shipped corpus (or a given text file).

Owns: the command's options and printing; the measurement is ``qwen3lab.quant.quality.perplexity``.
Used to compare a float model with its int8 / int4 quantized versions.
"""

from __future__ import annotations

import argparse
import json

from .common import HelpFormatter, add_model_args, model_kwargs

EPILOG = """\
examples:
  qwen3lab eval-ppl                                   # embedded SmolLM2-135M-Instruct, bf16
  qwen3lab eval-ppl --quantization int4 --group-size 32
  qwen3lab eval-ppl --model Qwen/Qwen3-4B --quantization int8 --json
  qwen3lab eval-ppl --model ./Qwen3-4B-int4           # a folder written by `qwen3lab quantize`
  qwen3lab eval-ppl --chunk 16 --kv-cache-dtype int8  # the cost of an int8 KV cache (compare --chunk 16
                                                      #   with the default --kv-cache-dtype auto)

The corpus is qwen3lab/data/ppl_corpus.txt (~4.3k words: prose, facts, code, dialogue). Each window of
--window tokens scores the tokens the previous window did not, so each token has at least
--window minus --stride tokens of context. --chunk N feeds each window N tokens at a time through
the engine's paged KV cache, so that every key is read back from the cache (as in decoding); with
--kv-cache-dtype int8 it defaults to 16, since a one-pass window never reads the cache.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("eval-ppl", help="perplexity on a fixed text, e.g. to compare quantization modes",
                       description="Measure perplexity with a sliding window over a fixed text corpus.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    add_model_args(p)
    e = p.add_argument_group("evaluation")
    e.add_argument("--text", metavar="FILE", default=None, help="text file to score (default: the shipped corpus)")
    e.add_argument("--window", type=int, default=512, metavar="N", help="tokens per window (default: 512)")
    e.add_argument("--stride", type=int, default=256, metavar="N", help="new tokens per window (default: 256)")
    e.add_argument("--max-tokens", type=int, default=None, metavar="N", help="score only the first N tokens")
    e.add_argument("--chunk", type=int, default=None, metavar="N",
                   help="feed each window N tokens at a time through the KV cache (default: one pass; 16 "
                        "with --kv-cache-dtype int8)")
    p.add_argument("--json", action="store_true", help="print the result as one JSON object")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from ..llm import LLM
    from ..quant.quality import corpus_text, perplexity

    kwargs = model_kwargs(args)
    text = corpus_text(args.text)  # fail on a bad path before loading
    chunk = args.chunk
    if chunk is None and kwargs["kv_cache_dtype"] != "auto":
        chunk = 16
    if chunk is not None and chunk < 1:
        raise ValueError(f"--chunk must be >= 1, got {chunk}")
    llm = LLM(**kwargs, kv_cache_memory_gb=0.05)
    res = perplexity(llm, text, args.window, args.stride, args.max_tokens, chunk)
    q = getattr(llm.model, "quantization", None)
    facts = {"model": str(llm.model_path), "dtype": str(llm.dtype).removeprefix("torch."),
             "quantization": q["mode"] if q else None, "group_size": q["group_size"] if q else None,
             "kv_cache_dtype": kwargs["kv_cache_dtype"], "chunk": chunk, **asdict(res)}
    if args.json:
        print(json.dumps(facts))
    else:
        mode = facts["quantization"] or "none"
        if facts["group_size"]:
            mode += f" (group size {facts['group_size']})"
        print(f"perplexity {res.perplexity:.4f}  (nll {res.nll:.4f} over {res.tokens} tokens, {res.windows} "
              f"windows; {facts['dtype']}, quantization {mode}, KV cache {facts['kv_cache_dtype']}"
              + (f", chunks of {chunk}" if chunk else "") + ")")
    return 0
