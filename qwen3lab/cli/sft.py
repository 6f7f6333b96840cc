"""`qwen3lab sft`: supervised fine-tuning from a JSONL of conversations (LoRA or full weights).

Owns the command-line front only; the objective and the loop are ``qwen3lab.train.sft``.
"""

from __future__ import annotations

import json

from .common import HelpFormatter
from .train_args import add_config_args, config_from_args

EPILOG = """\
examples:
  qwen3lab sft --train-file data.jsonl --output-dir runs/sft --max-steps 200 --bf16
  qwen3lab sft --model ./Qwen3-0.6B --train-file d.jsonl --eval-file e.jsonl --eval-every 50 --output-dir runs/a
  qwen3lab sft --train-file d.jsonl --output-dir runs/full --lora-r 0 --lr 1e-5 --gradient-checkpointing
  qwen3lab sft ... --resume-from runs/sft/checkpoint-100
  torchrun --nproc_per_node 2 -m qwen3lab.cli sft --train-file d.jsonl --output-dir runs/ddp

Each JSONL line: {"messages": [...], "tools": [...] (optional)}. The loss covers assistant tokens only.
The adapter lands in OUTPUT_DIR/final in PEFT format: use it with `LLM(model, lora=OUTPUT_DIR/final)`.
"""


def add_parser(sub) -> None:
    from ..train.sft import SFTConfig

    p = sub.add_parser("sft", help="supervised fine-tuning on chat conversations (LoRA or full)",
                       description="Fine-tune on JSONL conversations; loss on assistant tokens only.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    add_config_args(p, SFTConfig)
    p.set_defaults(func=run)


def run(args) -> int:
    from ..train import distributed as dist
    from ..train.sft import SFTConfig, train_sft

    records = train_sft(config_from_args(SFTConfig, args))
    if dist.rank() == 0 and records:
        print(json.dumps(records[-1]))
    dist.shutdown()
    return 0
