"""Options shared by the subcommands: which model to load, and the sampling flags.

Owns: the `--model/--dtype/--device` and sampling options, building `SamplingParams` from them
(before any loading, so a bad value fails fast), and loading the `LLM` with the note about the
embedded default model. Leaves out: display (`display.py`) and what each command does.
"""

from __future__ import annotations

import argparse
import sys

DEFAULT_NOTE = ("qwen3lab: using the embedded default SmolLM2-135M-Instruct; the real target is "
                "--model Qwen/Qwen3-4B (a local folder, .gguf file or Hugging Face repo id)")

SAMPLING_FLAGS = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repetition_penalty",
                  "presence_penalty", "frequency_penalty", "seed", "stop", "n")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keep the hand-written descriptions and examples as written."""

    def __init__(self, prog: str):
        super().__init__(prog, max_help_position=32)


def add_model_args(parser: argparse.ArgumentParser) -> None:
    g = parser.add_argument_group("model")
    g.add_argument("--model", "-m", metavar="M", default=None,
                   help="checkpoint folder (config.json + *.safetensors + tokenizer.json), .gguf file, or Hugging "
                        "Face repo id such as Qwen/Qwen3-4B; default: the embedded SmolLM2-135M-Instruct")
    g.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32", "float16"),
                   help="weight and activation dtype; auto (the default) follows the checkpoint, bfloat16 for GGUF")
    g.add_argument("--device", default="cpu", metavar="D", help="torch device, e.g. cpu (the default) or cuda")
    g.add_argument("--quantization", "-q", choices=("int8", "int4"), default=None,
                   help="weight-only quantization applied after loading (default: none; a folder written by "
                        "`qwen3lab quantize` loads already quantized)")
    g.add_argument("--group-size", type=int, default=None, metavar="G", help="int4 group size (default 32)")
    g.add_argument("--lora", default=None, metavar="DIR",
                   help="a PEFT-format LoRA adapter folder (e.g. from `qwen3lab sft`) applied to every request")
    g.add_argument("--attention", default=None, metavar="JSON",
                   help='hybrid full / sliding-window attention, e.g. \'{"sliding_window": 2048, "full_layers": '
                        '[1, 5, 9], "sink_tokens": 10, "full_attention_decode": false}\', or a JSON file such as '
                        "`qwen3lab select-layers` writes (default: the checkpoint's own layer types)")
    g.add_argument("--rope-scaling", default=None, metavar="JSON",
                   help='rotary scaling as config.json spells it, e.g. Qwen3\'s 131k context \'{"rope_type": "yarn", '
                        '"factor": 4.0, "original_max_position_embeddings": 32768}\'; add "long_only": true to scale '
                        "only sequences longer than the original window (default: the checkpoint's own)")
    g.add_argument("--kv-cache-dtype", default="auto", choices=("auto", "int8"),
                   help="KV-cache storage: auto (the model's dtype, the default) or int8 with a scale per token "
                        "and head (half the memory of bf16)")


def add_sampling_args(parser: argparse.ArgumentParser, max_tokens: int, with_n: bool = True) -> None:
    g = parser.add_argument_group("sampling (unset values follow the checkpoint's generation_config.json)")
    g.add_argument("--max-tokens", type=int, default=max_tokens, metavar="N",
                   help="most new tokens per reply (default: %(default)s)")
    g.add_argument("--temperature", "-t", type=float, default=None, metavar="T",
                   help="0 means greedy (the default for the embedded model)")
    g.add_argument("--top-p", type=float, default=None, metavar="P", help="nucleus sampling mass, in (0, 1]")
    g.add_argument("--top-k", type=int, default=None, metavar="K", help="keep the k most likely tokens; 0 disables")
    g.add_argument("--min-p", type=float, default=None, metavar="P",
                   help="drop tokens below min_p * the top probability")
    g.add_argument("--repetition-penalty", type=float, default=None, metavar="R",
                   help="> 1 discourages repeated tokens")
    g.add_argument("--presence-penalty", type=float, default=0.0, metavar="X",
                   help="OpenAI presence penalty, in [-2, 2] (default: 0)")
    g.add_argument("--frequency-penalty", type=float, default=0.0, metavar="X",
                   help="OpenAI frequency penalty, in [-2, 2] (default: 0)")
    g.add_argument("--seed", type=int, default=None, metavar="S", help="seed for reproducible sampling")
    g.add_argument("--stop", action="append", metavar="S", default=None,
                   help="stop when this string is generated (repeat for several)")
    if with_n:
        g.add_argument("--n", type=int, default=1, metavar="N", help="samples per prompt (default: 1)")


def add_thinking_args(parser) -> None:
    """`--think` / `--no-think` into `enable_thinking` (None: the template's default); `parser` may be a group."""
    g = parser.add_mutually_exclusive_group()
    g.add_argument("--think", dest="enable_thinking", action="store_const", const=True, default=None,
                   help="turn Qwen3 thinking on (the template default for Qwen3)")
    g.add_argument("--no-think", dest="enable_thinking", action="store_const", const=False,
                   help="turn thinking off: the template closes an empty <think></think> block")


def sampling_from_args(args: argparse.Namespace):
    from ..sampling import SamplingParams

    values = {k: getattr(args, k) for k in SAMPLING_FLAGS if hasattr(args, k)}
    if getattr(args, "model", None) is None and values.get("temperature") is None:
        # The embedded SmolLM2 GGUF ships no sampling defaults, and at 135M parameters in 4 bits even
        # temperature 0.2 often wanders off ("L'Étoile, la Cité, ..."): answer greedily unless asked.
        values["temperature"] = 0.0
    return SamplingParams(**values)  # raises ValueError naming the bad field


def model_kwargs(args: argparse.Namespace) -> dict:
    """The `LLM(...)` arguments of the model options, checked before any loading work."""
    from ..quant.apply import check_mode

    if args.quantization is not None:
        check_mode(args.quantization, args.group_size)
    elif args.group_size is not None:
        raise ValueError("--group-size needs --quantization int4")
    from ..hybrid_attention import parse

    attention = parse(getattr(args, "attention", None))
    from ..rope_scaling import parse as parse_rope

    rope_scaling = parse_rope(getattr(args, "rope_scaling", None))
    if args.model is None:
        print(DEFAULT_NOTE, file=sys.stderr)
    return dict(model=args.model, dtype=args.dtype, device=args.device, quantization=args.quantization,
                quantization_group_size=args.group_size, lora=args.lora, attention=attention,
                kv_cache_dtype=getattr(args, "kv_cache_dtype", "auto"), rope_scaling=rope_scaling)


def load_llm(args: argparse.Namespace):
    from ..llm import LLM

    return LLM(**model_kwargs(args))
