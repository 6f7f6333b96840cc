"""`qwen3lab bench longctx`: long-prompt prefill, KV memory and decode, ours (full and hybrid attention)
next to transformers and llama.cpp. Owns the command-line front only; the measurement is
``qwen3lab.bench.longctx``."""

from __future__ import annotations

from .common import HelpFormatter

EPILOG = """\
examples:
  qwen3lab bench longctx                                   # Qwen3-0.6B shapes, 4k / 16k / 32k tokens
  qwen3lab bench longctx --lengths 4096,8192 --peers transformers --limit-s 1200
  qwen3lab bench longctx --size 4b --quantization int4 --ours hybrid-int8 --peers "" --full-every 4 \
      --lengths 32768,65536 --rope-scaling '{"rope_type": "yarn", "factor": 4.0,
      "original_max_position_embeddings": 32768}'          # Qwen3-4B past its native window

Random bf16 weights at the real shapes (built once under $QWEN3LAB_CACHE/bench). Each engine runs in a
fresh process with --threads threads: ours with full attention, ours hybrid (every --full-every-th
layer on full attention, evenly spaced; the rest on a --window sliding window), transformers (one
forward over the prompt, SDPA) and llama.cpp (bf16 GGUF export of the same weights, needs
llama-cpp-python). A run that passes --limit-s seconds is reported as such. Ours also reports its
peak RSS and, in the JSON, the seconds of every prefill chunk (chunk_s) and KV bytes per token, from
which longer prompts can be costed.
"""


def add_longctx_parser(modes) -> None:
    p = modes.add_parser("longctx", help="long-prompt prefill, KV memory and decode vs transformers / llama.cpp",
                         description="Prefill time, KV bytes and decode speed at long prompt lengths.",
                         epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--size", default="0.6b", choices=["0.6b", "1.7b", "4b", "8b"], help="Qwen3 size (default 0.6b)")
    p.add_argument("--lengths", default="4096,16384,32768", help="prompt lengths, comma list")
    p.add_argument("--peers", default="transformers,llama.cpp", help="comma list; empty for ours alone")
    p.add_argument("--window", type=int, default=2048, help="hybrid layout's sliding window (default 2048)")
    p.add_argument("--full-every", type=int, default=4, help="one full-attention layer in N (default 4: 7 of 28)")
    p.add_argument("--decode", type=int, default=16, help="tokens decoded after the prompt (default 16)")
    p.add_argument("--chunk", type=int, default=2048, help="our prefill chunk, tokens per step (default 2048)")
    p.add_argument("--ours", default="full,hybrid,hybrid-int8",
                   help="our variants, comma list of full, hybrid, hybrid-int8 (hybrid with an int8 KV cache)")
    p.add_argument("--quantization", choices=["int8", "int4"], default=None, help="our weights quantized")
    p.add_argument("--rope-scaling", default=None, metavar="JSON", help="our rotary scaling, as --rope-scaling")
    p.add_argument("--threads", type=int, default=2, help="threads of every engine (default 2)")
    p.add_argument("--limit-s", type=float, default=None, help="give up on a run after this many seconds")
    p.add_argument("--out", default="bench_longctx.json", help="JSON results file (default bench_longctx.json)")
    p.set_defaults(func=run_longctx)


def run_longctx(args) -> int:
    from ..bench.longctx import run_longctx as run

    run(args.size, tuple(int(x) for x in args.lengths.split(",") if x), tuple(x for x in args.peers.split(",") if x),
        args.window, args.full_every, args.decode, args.chunk, args.threads, args.limit_s, args.out,
        tuple(x for x in args.ours.split(",") if x), args.quantization, args.rope_scaling)
    return 0
