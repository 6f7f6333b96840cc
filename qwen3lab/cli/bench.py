"""`qwen3lab bench`: speed and memory of our engine next to transformers and llama.cpp, in one run.

`qwen3lab bench serve`: our HTTP server next to llama.cpp's under concurrent streaming clients.
`qwen3lab bench sft`: LoRA SFT tokens/s and peak memory next to TRL's SFTTrainer (``cli/bench_sft.py``).
`qwen3lab bench eval`: a generation task through `qwen3lab eval` and lm-eval's hf model (``cli/bench_eval.py``).
`qwen3lab bench longctx`: long-prompt prefill, KV and decode vs transformers / llama.cpp (``cli/bench_longctx.py``).
"""

from __future__ import annotations

from .bench_eval import add_eval_parser
from .bench_longctx import add_longctx_parser
from .bench_sft import add_sft_parser
from .common import HelpFormatter

EPILOG = """\
examples:
  qwen3lab bench                                  # Qwen3-4B shapes, 36 layers, bf16/int8/int4 + peers
  qwen3lab bench --layers 4 --decode-tokens 32    # a quick run on 4 layers
  qwen3lab bench --precisions bf16 --peers transformers --verify-k 8
  qwen3lab bench --quality                        # perplexity of bf16/int8/int4 on the real SmolLM2
  qwen3lab bench --speculative '{"method": "ngram", "num_tokens": 4}'   # plain vs speculative decode
  qwen3lab bench --speculative '{"method": "eagle3", "model": "my-eagle3", "num_tokens": 4}' --model M
  qwen3lab bench serve                            # our server vs llama_cpp.server, 1/4/16 clients
  qwen3lab bench sft                              # LoRA SFT tok/s and peak RSS vs TRL's SFTTrainer
  qwen3lab bench eval                             # a generation task: qwen3lab eval vs lm-eval's hf model
  qwen3lab bench longctx                          # 4k-32k prompts: full / hybrid attention vs peers

The checkpoint has random weights at the real shapes (speed does not depend on the values); it is
built once (8 GB for Qwen3-4B) under $QWEN3LAB_CACHE/bench (default ~/.cache/qwen3lab/bench) together
with its GGUF exports for llama.cpp. Peers: `pip install '.[bench]'` brings transformers and
llama-cpp-python (built from source, a few minutes). Every measurement runs in a fresh process;
results also go to --out as JSON. --speculative instead decodes the same chat prompts greedily at
batch 1 without and with speculation, on a real model (--model, default the embedded SmolLM2), and
prints both decode rates, their ratio, the mean accepted length and the draft acceptance rate.
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
    p.add_argument("--speculative", default=None, metavar="JSON",
                   help="instead: plain vs speculative decode tok/s and acceptance on the same prompts, e.g. "
                        '\'{"method": "eagle3", "model": "DIR", "num_tokens": 4}\'')
    p.add_argument("--spec-prompts", type=int, default=4, help="with --speculative: chat prompts (default 4)")
    p.add_argument("--model", default=None,
                   help="with --quality or --speculative: the model (default: embedded SmolLM2)")
    p.set_defaults(func=run)
    modes = p.add_subparsers(title="modes", dest="bench_mode", metavar="MODE")
    add_serve_parser(modes)
    add_sft_parser(modes)
    add_eval_parser(modes)
    add_longctx_parser(modes)


SERVE_EPILOG = """\
examples:
  qwen3lab bench serve                                  # embedded SmolLM2 GGUF, 2 threads, 1/4/16 clients
  qwen3lab bench serve --model Qwen3-4B-Q4_0.gguf --concurrency 1,8 --max-tokens 128
  qwen3lab bench serve --peers ''                       # our server alone

Both servers load the same GGUF file and run one after the other (never together), each as a
subprocess on a free 127.0.0.1 port with the same thread count: `qwen3lab serve` (OMP_NUM_THREADS)
and `python -m llama_cpp.server` (--n_threads; `pip install -e '.[bench]'`). Clients stream
/v1/chat/completions greedily with min_tokens = max_tokens, so every request yields exactly
--max-tokens tokens on both. llama_cpp.server handles one request at a time: its clients queue.
"""


def add_serve_parser(modes) -> None:
    p = modes.add_parser("serve", help="our HTTP server vs llama.cpp's under concurrent streaming clients",
                         description="Throughput, TTFT and inter-token latency of `qwen3lab serve` and "
                                     "llama-cpp-python's server on the same GGUF, at several concurrencies.",
                         epilog=SERVE_EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--model", default=None, metavar="GGUF",
                   help="GGUF file both servers load (default: the embedded SmolLM2-135M-Instruct Q4_1)")
    p.add_argument("--peers", default="llama.cpp", help="llama.cpp, or empty for ours alone (default: llama.cpp)")
    p.add_argument("--concurrency", default="1,4,16", help="comma list of concurrent clients (default 1,4,16)")
    p.add_argument("--max-tokens", type=int, default=64, help="tokens generated per request (default 64)")
    p.add_argument("--rounds", type=int, default=2,
                   help="requests per client at each level: rounds x concurrency requests (default 2)")
    p.add_argument("--threads", type=int, default=2, help="threads of each server (default 2)")
    p.add_argument("--ctx", type=int, default=2048,
                   help="context: our --max-model-len and llama.cpp's --n_ctx (default 2048)")
    p.add_argument("--kv-cache-gb", type=float, default=0.5, help="our server's KV-cache pool (default 0.5)")
    p.add_argument("--out", default="bench_serve.json", help="JSON results file (default bench_serve.json)")
    p.set_defaults(func=run_serve)


def run_serve(args) -> int:
    from ..bench.serving import run_serve_bench

    run_serve_bench(args.model, tuple(x for x in args.peers.split(",") if x),
                    tuple(int(c) for c in args.concurrency.split(",") if c), args.max_tokens, args.rounds,
                    args.threads, args.ctx, args.kv_cache_gb, args.out)
    return 0


def run(args) -> int:
    if args.speculative:
        from ..bench.speculative import compare_speculative
        from .serve import _speculative

        compare_speculative(_speculative(args.speculative), args.model, args.spec_prompts, args.decode_tokens,
                            out=args.out)
        return 0
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
