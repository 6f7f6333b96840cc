"""`qwen3lab bench`: speed and memory of our engine next to transformers and llama.cpp, in one run."""

from __future__ import annotations

from .common import HelpFormatter

EPILOG = """\
examples:
  qwen3lab bench                                  # Qwen3-4B shapes, 36 layers, bf16/int8/int4 + peers
  qwen3lab bench --layers 4 --decode-tokens 32    # a quick run on 4 layers
  qwen3lab bench --precisions bf16 --peers transformers --verify-k 8
  qwen3lab bench --quality                        # perplexity of bf16/int8/int4 on the real SmolLM2

The checkpoint has random weights at the real shapes (speed does not depend on the values); it is
built once (8 GB for Qwen3-4B) under $QWEN3LAB_CACHE/bench (default ~/.cache/qwen3lab/bench) together
with its GGUF exports for llama.cpp. Peers: `pip install '.[bench]'` brings transformers and
llama-cpp-python (built from source, a few minutes). Every measurement runs in a fresh process;
results also go to --out as JSON.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("bench", help="measure prefill/decode speed and memory against transformers and llama.cpp",
                       description="Measure prefill and decode speed, batch throughput, peak memory and bandwidth "
                                   "use, next to the peers, on a random checkpoint at real Qwen3 shapes.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--size", default="4b", choices=["0.6b", "1.7b", "4b", "8b"], help="Qwen3 size (default 4b)")
    p.add_argument("--layers", type=int, help="use only N layers (quick runs)")
    p.add_argument("--precisions", default="bf16,int8,int4", help="comma list of bf16, int8, int4")
    p.add_argument("--peers", default="transformers,llama.cpp", help="comma list; empty for none")
    p.add_argument("--prompt-len", type=int, default=512, help="prefill prompt length (default 512)")
    p.add_argument("--decode-tokens", type=int, default=128, help="tokens decoded at batch 1 (default 128)")
    p.add_argument("--batches", default="4,8", help="batch sizes for aggregate decode (default 4,8)")
    p.add_argument("--batch-tokens", type=int, default=32, help="tokens per sequence in batch runs")
    p.add_argument("--verify-k", type=int, default=0,
                   help="also time a forward over k+1 tokens vs 1 for k=1..K (speculation's ceiling)")
    p.add_argument("--threads", type=int, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", default="bench_results.json", help="JSON results file")
    p.add_argument("--quality", action="store_true",
                   help="instead: perplexity of bf16, int8 and int4 on the shipped corpus (real SmolLM2 by default)")
    p.add_argument("--model", default=None, help="with --quality: the model to score (default: embedded SmolLM2)")
    p.set_defaults(func=run)


def run(args) -> int:
    if args.quality:
        from ..bench.quality import compare_precisions

        compare_precisions(args.model, out=args.out)
        return 0
    from ..bench import run_bench

    split = lambda s: tuple(x for x in s.split(",") if x)  # noqa: E731
    run_bench(args.size, args.layers, split(args.precisions), split(args.peers), args.prompt_len,
              args.decode_tokens, tuple(int(b) for b in split(args.batches)), args.batch_tokens, args.verify_k,
              args.threads, args.out)
    return 0
