"""`qwen3lab eval`: maths, extraction, multiple choice, tool calls and perplexity, on a model or a server;
`eval compare`."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .common import HelpFormatter, add_model_args, add_thinking_args, model_kwargs

EPILOG = """\
examples:
  qwen3lab eval --task arithmetic --task arithmetic_mc --limit 50        # embedded SmolLM2, built-in sets
  qwen3lab eval --task extraction --lora runs/sft/final --out runs/eval-sft
  qwen3lab eval --task math:aime25.jsonl --model Qwen/Qwen3-4B --n 8 --max-tokens 32768
  qwen3lab eval --task multiple_choice:mmlu.jsonl --server http://127.0.0.1:8000 --model Qwen3-4B
  qwen3lab eval compare runs/eval-base/summary.json runs/eval-sft/summary.json

Tasks: the built-in arithmetic (math), extraction, arithmetic_mc (multiple choice), corpus
(perplexity), tools (single-turn tool calls), tools_multi (multi-turn, against simulated file-system
and bank APIs) and retrieval@N (RULER-like needles, multi-key lookups and variable tracking in about
N tokens of filler, 4096 by default), or KIND:FILE with KIND math | extraction | multiple_choice |
perplexity | tool_call | multi_turn | retrieval and FILE a jsonl or parquet file with, per kind:
  math: problem or messages, answer          extraction: input or messages, record
  multiple_choice: question, choices, label  perplexity: text
  tool_call: question or messages, tools, ground_truth (BFCL's possible-answer form)
  multi_turn: question (one entry per user turn), initial_config ({"FileSystem": {...}, "Bank": {...}}),
      ground_truth (each turn's calls as BFCL writes them, "cd(folder='docs')"); scored by the APIs'
      end state and the calls' results after every turn, as BFCL's multi-turn checker does
  retrieval: prompt or messages, answers (strings the reply must contain)
Each sample is written to
OUT/TASK/samples.jsonl as it finishes (a rerun with the same --out resumes); the summary prints a
table and goes to OUT/summary.json. Without --temperature, sampling follows Qwen3's recommendations
for the mode (thinking: T 0.6, top-p 0.95, top-k 20; non-thinking: T 0.7, top-p 0.8, top-k 20,
presence penalty 1.5) and the embedded model decodes greedily; with it, only the values given apply.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("eval", help="score a model or server: maths, extraction, multiple choice, tools, perplexity",
                       description="Evaluate a model (or an OpenAI-compatible server) on built-in or local tasks.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--task", action="append", default=None, metavar="TASK",
                   help="a built-in task or KIND:FILE (repeat for several)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="first N samples of each task")
    p.add_argument("--n", type=int, default=1, metavar="K", help="samples per problem for avg@K / pass@K")
    p.add_argument("--out", default="eval_results", metavar="DIR", help="results folder (default: %(default)s)")
    p.add_argument("--server", default=None, metavar="URL",
                   help="evaluate this OpenAI-compatible server instead of loading a model (--model names the "
                        "served model; default: the server's first)")
    p.add_argument("--api-key", default=None, metavar="K", help="the server's API key")
    p.add_argument("--speculative", default=None, metavar="JSON", help="speculative decoding, as for serve")
    add_model_args(p)
    g = p.add_argument_group("sampling")
    g.add_argument("--max-tokens", type=int, default=512, metavar="N", help="most new tokens (default: %(default)s)")
    g.add_argument("--temperature", "-t", type=float, default=None, metavar="T")
    g.add_argument("--top-p", type=float, default=None, metavar="P")
    g.add_argument("--top-k", type=int, default=None, metavar="K")
    g.add_argument("--presence-penalty", type=float, default=None, metavar="X")
    g.add_argument("--seed", type=int, default=None, metavar="S")
    add_thinking_args(g)
    p.set_defaults(func=run)
    modes = p.add_subparsers(title="modes", dest="eval_mode", metavar="MODE")
    c = modes.add_parser("compare", help="per-task deltas of two runs with paired significance",
                         formatter_class=HelpFormatter)
    c.add_argument("a", metavar="A.json")
    c.add_argument("b", metavar="B.json")
    c.set_defaults(func=run_compare)


def _sampling(args, thinking: bool, embedded: bool) -> dict:
    from ..eval.backends import NON_THINKING_SAMPLING, THINKING_SAMPLING

    given = {k: getattr(args, k) for k in ("temperature", "top_p", "top_k", "presence_penalty", "seed")
             if getattr(args, k) is not None}
    if "temperature" in given:  # the user's sampling, whole: no recommended penalty mixed into it
        base = {}
    elif embedded:
        base = {"temperature": 0.0}  # the 135M 4-bit model wanders off when sampled
    else:
        base = dict(THINKING_SAMPLING if thinking else NON_THINKING_SAMPLING)
    return {**base, **given, "max_tokens": args.max_tokens}


def run(args: argparse.Namespace) -> int:
    from ..eval.run import evaluate
    from ..eval.tasks import load_task

    if not args.task:
        raise ValueError("give at least one --task (built-in: arithmetic, extraction, arithmetic_mc, corpus, tools, "
                         "tools_multi)")
    tasks = [load_task(t, args.limit) for t in args.task]  # a bad task file fails before any model work
    if args.server:
        from ..eval.backends import ServerBackend

        backend, name = ServerBackend(args.server, args.model, args.api_key), args.server
    else:
        from ..eval.backends import LocalBackend
        from ..llm import LLM
        from .serve import _speculative

        backend = LocalBackend(LLM(**model_kwargs(args), speculative=_speculative(args.speculative)))
        name = str(args.model or backend.llm.model_path)
        count = lambda text: len(backend.llm.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
        # Sets generated at a length in tokens: measured with this model's tokenizer.
        tasks = [load_task(t, args.limit, count) if task.kind == "retrieval" else task
                 for t, task in zip(args.task, tasks)]
    thinking = backend.thinking and args.enable_thinking is not False
    sampling = _sampling(args, thinking, embedded=args.model is None and not args.server)
    results = []
    for task in tasks:
        results.append(evaluate(task, backend, args.out, args.n, sampling,
                                thinking=None if not backend.thinking else thinking))
    summary = {"model": name, "date": time.strftime("%Y-%m-%d %H:%M"), "sampling": sampling, "tasks": results}
    out = Path(args.out) / "summary.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    print(f"{'task':<16}{'metric':<16}{'value':>10}{'stderr':>10}{'n':>6}")
    for r in results:
        for metric, v in r["metrics"].items():
            se = "-" if v["stderr"] is None or v["stderr"] != v["stderr"] else f"{v['stderr']:.4f}"
            print(f"{r['task']:<16}{metric:<16}{v['value']:10.4f}{se:>10}{r['samples']:6d}")
    print(f"summary: {out}", file=sys.stderr)
    return 0


def run_compare(args: argparse.Namespace) -> int:
    from ..eval.compare import compare, print_rows

    rows = compare(args.a, args.b)
    if not rows:
        raise ValueError(f"{args.a} and {args.b} share no task with paired samples")
    print_rows(rows)
    return 0
