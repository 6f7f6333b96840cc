"""`qwen3lab grpo`: GRPO from a JSONL of prompts and reward functions (LoRA or full weights).

Owns the command-line front only; the objective and the loop are ``qwen3lab.train.grpo``.
"""

from __future__ import annotations

import json

from .common import HelpFormatter
from .train_args import add_config_args, config_from_args

EPILOG = """\
examples:
  qwen3lab grpo --prompts-file maths.jsonl --rewards math --output-dir runs/grpo --group-size 8 --max-steps 50
  qwen3lab grpo --prompts-file extract.jsonl --rewards json --init-adapter runs/sft/final --output-dir runs/g2
  qwen3lab grpo --prompts-file p.jsonl --rewards mypkg.rewards:score --beta 0.04 --output-dir runs/g3
  torchrun --nproc_per_node 2 -m qwen3lab.cli grpo --prompts-file maths.jsonl --output-dir runs/ddp

Each JSONL line: {"messages": [...]} or {"prompt": "..."} plus what the rewards read: "answer" (math),
"record"/"fields" (json), "tool_call" {"name", "arguments"} (tool_call). Per-step reward, accuracy, KL
and completion length go to OUTPUT_DIR/log.jsonl.
"""


def add_parser(sub) -> None:
    from ..train.grpo import GRPOConfig

    p = sub.add_parser("grpo", help="GRPO reinforcement learning with reward functions (LoRA or full)",
                       description="Group-relative policy optimisation with rollouts from the batched engine.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    add_config_args(p, GRPOConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train import distributed as dist
    from ..train.grpo import GRPOConfig, train_grpo

    records = train_grpo(config_from_args(GRPOConfig, args))
    if dist.rank() == 0 and records:
        print(json.dumps(records[-1]))
    dist.shutdown()
    return 0
