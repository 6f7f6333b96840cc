"""Top-level parser and error policy of the `qwen3lab` command.

Owns: the subcommand table and the rule that any failure prints `error: <message>` to stderr and
exits 2 (set QWEN3LAB_DEBUG=1 for the traceback). Each subcommand lives in its own module with
`add_parser(subparsers)`, which sets `func` to the function that runs it.
"""

from __future__ import annotations

import argparse
import os
import sys

from . import bench, chat, convert, eval_ppl, generate, info, quantize, select_layers, serve
from . import eval as eval_cmd
from . import grpo as grpo_cmd
from . import sft as sft_cmd
from . import train_eagle3
from .common import HelpFormatter

EPILOG = """\
examples:
  qwen3lab generate --chat "What is the capital of France?"
  qwen3lab generate "Once upon a time" --max-tokens 64 --temperature 0.7 --seed 1
  qwen3lab chat --model Qwen/Qwen3-4B
  qwen3lab info --model ./Qwen3-4B

Without --model every command uses the embedded default, SmolLM2-135M-Instruct (a small real GGUF
model fetched once and cached). The real target is --model Qwen/Qwen3-4B: a local checkpoint
folder, a .gguf file or a Hugging Face repo id.

Run `qwen3lab COMMAND --help` for the options of each command.
Set QWEN3LAB_DEBUG=1 to see full tracebacks on errors.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="qwen3lab", description="Run Qwen3 language models on PyTorch: complete text, chat, inspect.",
        epilog=EPILOG, formatter_class=HelpFormatter)
    from .. import __version__

    parser.add_argument("--version", action="version", version=f"qwen3lab {__version__}")
    sub = parser.add_subparsers(title="commands", dest="command", metavar="COMMAND")
    for module in (generate, chat, info, quantize, eval_cmd, eval_ppl, convert, serve, bench, sft_cmd, grpo_cmd,
                   train_eagle3, select_layers):
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(file=sys.stderr)
        return 130
    except BrokenPipeError:  # `qwen3lab generate ... | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as e:
        if os.environ.get("QWEN3LAB_DEBUG") == "1":
            raise
        print(f"error: {e or type(e).__name__}", file=sys.stderr)
        return 2
