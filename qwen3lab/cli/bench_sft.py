"""`qwen3lab bench sft`: LoRA SFT throughput and peak memory, ours next to TRL's SFTTrainer (PEFT LoRA).

Owns the command-line front only; the measurement is ``qwen3lab.bench.sft``.
"""

from __future__ import annotations

import argparse

from .common import HelpFormatter

EPILOG = """\
examples:
  qwen3lab bench sft                                   # SmolLM2-135M, 4 packs x 512 tokens, bf16, vs TRL
  qwen3lab bench sft --no-gradient-checkpointing --steps 6
  qwen3lab bench sft --model ~/.cache/qwen3lab/bench/qwen3-4b-L36-random --peers '' --steps 3 --batch-size 1

Both sides load the same safetensors folder (a .gguf, by default the embedded SmolLM2-135M-Instruct,
is exported once with `qwen3lab convert`'s exporter to $QWEN3LAB_CACHE/bench), train on the same
packs of the repo's extraction conversations with the loss on assistant tokens only, with the same
LoRA settings, batch, steps, AdamW settings, dtype, checkpointing and threads, each in its own
process. --bf16 (the default): frozen bf16 base weights, float32 adapters, bf16 autocast, on both.
TRL, PEFT and transformers come with `pip install -e '.[bench]'`. The first --warmup steps are not
timed; peak RSS is each process's ru_maxrss. Results also go to --out as JSON.
"""


def add_sft_parser(modes) -> None:
    from ..lora import DEFAULT_TARGETS

    p = modes.add_parser("sft", help="LoRA SFT tokens/s and peak memory, ours vs TRL's SFTTrainer",
                         description="LoRA SFT step throughput and peak RSS of `qwen3lab sft` and TRL's SFTTrainer "
                                     "with PEFT, on the same model, data and settings.",
                         epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--model", default=None,
                   help="safetensors folder or .gguf (default: the embedded SmolLM2-135M-Instruct)")
    p.add_argument("--peers", default="trl", help="trl, or empty for ours alone (default: trl)")
    p.add_argument("--steps", type=int, default=4, help="optimizer steps per side (default 4)")
    p.add_argument("--warmup", type=int, default=1, help="first steps left out of tokens/s (default 1)")
    p.add_argument("--repeats", type=int, default=1,
                   help="runs per side, alternating; each side keeps its fastest (default 1)")
    p.add_argument("--seq", type=int, default=512, help="tokens per pack (default 512)")
    p.add_argument("--batch-size", type=int, default=4, help="packs per step (default 4)")
    p.add_argument("--lora-r", type=int, default=16, help="LoRA rank (default 16)")
    p.add_argument("--lora-alpha", type=float, default=32, help="LoRA alpha (default 32)")
    p.add_argument("--lora-dropout", type=float, default=0.05, help="LoRA dropout (default 0.05)")
    p.add_argument("--targets", nargs="+", default=list(DEFAULT_TARGETS), help="LoRA target modules (default: all 7)")
    p.add_argument("--lr", type=float, default=2e-4, help="peak learning rate (default 2e-4)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                   help="bf16 base + autocast on both sides; --no-bf16: float32 (default: bf16)")
    p.add_argument("--gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="per-layer recomputation on both sides (default: on)")
    p.add_argument("--threads", type=int, help="torch threads of each side (default: torch's own choice)")
    p.add_argument("--examples", type=int, default=2000, help="conversations generated (default 2000)")
    p.add_argument("--out", default="bench_sft.json", help="JSON results file (default bench_sft.json)")
    p.set_defaults(func=run_sft)


def run_sft(args) -> int:
    from ..bench.sft import run_sft_bench

    run_sft_bench(args.model, tuple(x for x in args.peers.split(",") if x), args.steps, args.seq, args.batch_size,
                  args.lora_r, args.lora_alpha, args.lora_dropout, tuple(args.targets), args.lr, args.bf16,
                  args.gradient_checkpointing, args.warmup, args.repeats, args.threads, args.examples, out=args.out)
    return 0
