"""`qwen3lab quantize`: write an int8 / int4 weight-only quantized copy of a checkpoint.

Owns: the command's options and wiring load -> ``quantize_model`` -> ``save_quantized``. The output
folder loads with ``--model DIR`` (or ``LLM(DIR)``) directly, without quantizing again.
"""

from __future__ import annotations

import argparse
import sys

from .common import HelpFormatter

EPILOG = """\
examples:
  qwen3lab quantize --model Qwen/Qwen3-4B --out ./Qwen3-4B-int4 --mode int4
  qwen3lab quantize --model ./Qwen3-4B --out ./Qwen3-4B-int8 --mode int8
  qwen3lab quantize --out ./smollm2-int4 --mode int4                      # the embedded default
  qwen3lab generate --model ./Qwen3-4B-int4 --chat "Hello"

Every linear layer of attention and MLP and the lm_head are quantized; the embedding stays in
--dtype. int8: one scale per output channel. int4: a scale and zero per group of --group-size
input channels (32, 64, 128 or 256; default 32). The layout is documented in qwen3lab/quant/.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("quantize", help="write an int8/int4 weight-only quantized checkpoint",
                       description="Quantize a checkpoint's weights to int8 or int4 and write a folder that "
                                   "loads directly.", epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--model", "-m", metavar="M", default=None,
                   help="source: checkpoint folder, .gguf file or Hugging Face repo id; default: the embedded "
                        "SmolLM2-135M-Instruct")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="folder to write (created if missing)")
    p.add_argument("--mode", required=True, choices=("int8", "int4"), help="quantization mode")
    p.add_argument("--group-size", type=int, default=None, metavar="G",
                   help="int4 group size: 32, 64, 128 or 256 (default 32)")
    p.add_argument("--skip", action="append", default=[], metavar="NAME",
                   help="leave this layer in float (name or pattern, e.g. lm_head or '*.down_proj'; repeatable)")
    p.add_argument("--dtype", default="auto", choices=("auto", "bfloat16", "float32", "float16"),
                   help="dtype of the scales and of the layers left in float (default: the checkpoint's)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from ..config import read_json
    from ..llm import resolve_dtype
    from ..quant.apply import check_mode, quantize_model
    from ..weights.quantized_export import save_quantized
    from ..weights.loader import load_checkpoint

    check_mode(args.mode, args.group_size)
    model = args.model
    if model is None:
        from ..weights.default_model import smollm2_gguf_path

        from .common import DEFAULT_NOTE
        print(DEFAULT_NOTE, file=sys.stderr)
        model = smollm2_gguf_path()
    cfg_dtype = None
    if args.dtype == "auto" and Path(str(model), "config.json").exists():
        raw = read_json(Path(str(model), "config.json"), "model config")
        cfg_dtype = raw.get("torch_dtype") or raw.get("dtype")
    ckpt = load_checkpoint(model, resolve_dtype(args.dtype, cfg_dtype))
    quantize_model(ckpt.model, args.mode, args.group_size, skip=args.skip, keep_portable=True)
    out = save_quantized(ckpt.model, args.out, ckpt.path)
    size = sum(f.stat().st_size for f in out.glob("*.safetensors"))
    print(f"wrote {out} ({args.mode}, {size / 2**20:.1f} MiB of weights)")
    return 0
