"""`qwen3lab select-layers`: rank layers by how much a sliding window on each alone hurts long-prompt
answers, and write the hybrid layout that keeps the most sensitive ones on full attention."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .common import HelpFormatter, add_model_args, model_kwargs

EPILOG = """\
examples:
  qwen3lab select-layers --budget 8 --window 1024 --length 4096            # embedded SmolLM2, generated data
  qwen3lab select-layers --model Qwen/Qwen3-4B --data calib.jsonl --budget 9 --window 2048 --out layers.json
  qwen3lab eval --task retrieval@16384 --model Qwen/Qwen3-4B --attention layers.json

For each layer, only that layer is put on the sliding window; the reference answers of the
calibration prompts are teacher-forced through the engine's scoring path and the rise of their mean
answer-token NLL over the loaded layout is the layer's score (NLL-guided selection, arXiv
2606.27791). The --budget highest keep full attention. --data: a jsonl of messages (or prompt) and
answer; without it, generated retrieval samples of about --length tokens (seed 1; `qwen3lab eval`
uses seed 2). Writes OUT (the --attention JSON under "attention", the ranking and the scores) and a
bar plot beside it (OUT with .png).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("select-layers", help="choose the full-attention layers of a hybrid layout (training-free)",
                       description="NLL-guided selection of the layers that keep full attention.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--budget", type=int, default=None, metavar="K",
                   help="layers kept on full attention (default: a quarter of the layers)")
    p.add_argument("--window", type=int, default=2048, metavar="W", help="sliding window (default: %(default)s)")
    p.add_argument("--sinks", type=int, default=0, metavar="N", help="kept-first tokens (default: 0)")
    p.add_argument("--data", default=None, metavar="FILE", help="calibration jsonl (default: generated retrieval)")
    p.add_argument("--samples", type=int, default=8, metavar="N", help="calibration samples (default: %(default)s)")
    p.add_argument("--length", type=int, default=4096, metavar="T",
                   help="tokens per generated calibration prompt (default: %(default)s)")
    p.add_argument("--out", default="layers.json", metavar="OUT", help="result JSON (default: %(default)s)")
    add_model_args(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..llm import LLM
    from ..select_layers import calibration_rows, plot, select

    if args.data is not None and not Path(args.data).is_file():
        raise FileNotFoundError(f"calibration file {args.data} not found")
    llm = LLM(**model_kwargs(args))
    if args.window >= args.length and args.data is None:
        raise ValueError(f"--window {args.window} covers the whole --length {args.length}: no layer would slide")
    count = lambda text: len(llm.tokenizer.encode(text, add_special_tokens=False))  # noqa: E731
    rows = calibration_rows(args.data, args.samples, args.length, count)
    budget = args.budget or max(1, llm.config.num_hidden_layers // 4)
    result = select(llm, rows, budget, args.window, args.sinks)
    result["model"] = str(args.model or llm.model_path)
    out = Path(args.out)
    out.write_text(json.dumps(result, indent=2) + "\n")
    plot(result, out.with_suffix(".png"), f"{Path(result['model']).name}: window {args.window}, "
                                          f"{len(rows)} prompts, budget {budget}")
    print(f"full attention on {result['attention']['full_layers']}")
    print("layer  NLL rise")
    for i in result["ranking"]:
        print(f"{i:5d}  {result['nll_rise'][i]:+.4f}")
    print(f"wrote {out} and {out.with_suffix('.png')}", file=sys.stderr)
    return 0
