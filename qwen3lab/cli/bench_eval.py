"""`qwen3lab bench eval`: a generation task through `qwen3lab eval` and through lm-eval's `hf` model.

Owns the command-line front only; the measurement is ``qwen3lab.bench.eval_throughput``.
"""

from __future__ import annotations

from .common import HelpFormatter

EPILOG = """\
examples:
  qwen3lab bench eval                                  # embedded SmolLM2, 64 problems, vs lm-eval hf batch 1 and 8
  qwen3lab bench eval --samples 128 --max-tokens 96 --peer-batch-sizes 16

Both sides run the shipped arithmetic problems with the checkpoint's chat template, greedy, until the
end-of-turn token or --max-tokens, in float32 on the same weights (lm-eval reads a .gguf through
transformers' GGUF loader). Loading is not timed. Prints seconds, avg@1, how many outputs are
identical to ours and the speed ratio for each peer batch size; results also go to --out as JSON.
lm-eval comes with `pip install lm-eval==0.4.13`.
"""


def add_eval_parser(modes) -> None:
    p = modes.add_parser("eval", help="a generation task: qwen3lab eval vs lm-eval's hf model",
                         description="Wall time of one generation task through `qwen3lab eval` (continuous "
                                     "batching) and lm-evaluation-harness's hf model, same prompts and outputs.",
                         epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--model", default=None, help=".gguf or safetensors folder (default: the embedded SmolLM2)")
    p.add_argument("--samples", type=int, default=64, help="problems (default 64)")
    p.add_argument("--max-tokens", type=int, default=64, help="most new tokens per problem (default 64)")
    p.add_argument("--peer-batch-sizes", default="1,8", help="lm-eval hf batch sizes, comma list (default 1,8)")
    p.add_argument("--max-num-seqs", type=int, default=64, help="our engine's running sequences (default 64)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's own choice)")
    p.add_argument("--out", default="bench_eval.json", help="JSON results file (default bench_eval.json)")
    p.set_defaults(func=run_eval)


def run_eval(args) -> int:
    from ..bench.eval_throughput import run_eval_bench

    run_eval_bench(args.model, args.samples, args.max_tokens,
                   tuple(int(b) for b in args.peer_batch_sizes.split(",") if b), args.max_num_seqs, args.threads,
                   args.out)
    return 0
