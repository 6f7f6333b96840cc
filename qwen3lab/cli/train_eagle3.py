"""`qwen3lab train-eagle3`: train an EAGLE3 draft head for a target model.

Owns the command-line front only; the data, objective and loop are ``qwen3lab.train.eagle3``.
"""

from __future__ import annotations

import json

from .common import HelpFormatter

EPILOG = """\
examples:
  python -m qwen3lab.data.eagle3_prompts prompts.jsonl
  qwen3lab train-eagle3 --data prompts.jsonl --out runs/eagle3 --steps 400
  qwen3lab train-eagle3 --target ./Qwen3-4B --data prompts.jsonl --out runs/e3 --ttt-steps 3 --draft-vocab 32000

Each JSONL line: {"prompt": "..."} or {"messages": [...]}, optionally with "response" (then the
target does not generate one). The draft lands in OUT in the SpecForge/AngelSlim layout that vLLM
and SGLang load (config.json, model.safetensors with fc, midlayer.*, norm, lm_head, d2t, t2d).
"""


def add_parser(sub) -> None:
    p = sub.add_parser("train-eagle3", help="train an EAGLE3 speculative-decoding draft head",
                       description="Generate target responses, record hidden states, train the draft with "
                                   "the training-time-test objective, save it in the published layout.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--target", "--model", dest="target", default=None,
                   help="target checkpoint (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--data", required=True, help="JSONL of prompts (optionally with responses)")
    p.add_argument("--out", required=True, help="output folder for the draft checkpoint")
    p.add_argument("--steps", type=int, default=400, help="optimizer steps")
    p.add_argument("--ttt-steps", type=int, default=3, help="unrolled draft steps per position (training-time test)")
    p.add_argument("--draft-vocab", type=int, default=32000, help="draft vocabulary size (most frequent tokens)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-tokens", type=int, default=256, help="response length when the target generates")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train.eagle3 import Eagle3TrainConfig, train_eagle3

    for name in ("steps", "ttt_steps", "draft_vocab", "batch_size", "max_tokens"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    cfg = Eagle3TrainConfig(target=args.target, data=args.data, out=args.out, steps=args.steps,
                            ttt_steps=args.ttt_steps, draft_vocab=args.draft_vocab, lr=args.lr,
                            batch_size=args.batch_size, max_tokens=args.max_tokens, seed=args.seed)
    summary = train_eagle3(cfg, log=lambda m: print(m, flush=True))
    print(json.dumps({k: v for k, v in summary.items() if k != "history"}))
    return 0
