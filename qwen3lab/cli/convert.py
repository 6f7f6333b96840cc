"""`qwen3lab convert`: write a checkpoint as a llama.cpp GGUF file or a Hugging Face safetensors folder.

Owns: the command's arguments and choosing the exporter from the output path (`.gguf`: a GGUF
file via `weights.gguf_export`; anything else: a folder via `weights.safetensors_export`).
Leaves out: the conversion itself.
"""

from __future__ import annotations

import argparse
import sys
import time

from .common import HelpFormatter

EPILOG = """\
examples:
  qwen3lab convert --model Qwen/Qwen3-4B --out qwen3-4b-q8_0.gguf --outtype q8_0
  qwen3lab convert --model ./Qwen3-4B --out qwen3-4b-bf16.gguf
  qwen3lab convert --model ./qwen3-4b-q8_0.gguf --out ./Qwen3-4B-from-gguf --outtype bf16

An --out ending in .gguf gets a GGUF file that llama.cpp loads (norms and biases stay F32; with q4_0
the output matrix is Q8_0, where llama-quantize would use Q6_K). Any other --out is a folder with
config.json, model.safetensors, tokenizer files and generation_config.json; it takes f32, f16 or bf16.
A GGUF source is dequantised first, so converting back does not restore precision that was lost.
"""


def add_parser(sub) -> None:
    p = sub.add_parser("convert", help="write a model as a GGUF file or a safetensors folder",
                       description="Write a model as a llama.cpp GGUF file or a Hugging Face safetensors folder.",
                       epilog=EPILOG, formatter_class=HelpFormatter)
    p.add_argument("--model", "-m", metavar="M", required=True,
                   help="checkpoint folder, .gguf file, or Hugging Face repo id such as Qwen/Qwen3-4B")
    p.add_argument("--out", "-o", metavar="PATH", required=True,
                   help="output: a .gguf file, or a folder for safetensors")
    p.add_argument("--outtype", default="bf16", choices=("f32", "f16", "bf16", "q8_0", "q4_0"),
                   help="tensor type of the weight matrices (default: %(default)s; q8_0/q4_0 only for .gguf)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    if str(args.out).endswith(".gguf"):
        from ..weights.gguf_export import export_gguf

        out = export_gguf(args.model, args.out, args.outtype)
    else:
        from ..weights.safetensors_export import export_safetensors

        out = export_safetensors(args.model, args.out, args.outtype)
    print(f"wrote {out} ({args.outtype}) in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    return 0
