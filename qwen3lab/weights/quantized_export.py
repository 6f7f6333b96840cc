"""Writing a quantized checkpoint folder that ``load_checkpoint`` reads back without re-quantizing.

Owns: the folder layout (``model.safetensors`` with the quantized state, ``config.json`` with a
``quantization_config`` section, tokenizer and generation files carried over from the source) for
both source kinds, a Hugging Face folder and a GGUF file. Leaves out the quantization itself
(``qwen3lab/quant``) and sharding: one safetensors file holds the whole model.

``quantization_config`` = {"quant_method": "qwen3lab", "mode": "int8"|"int4", "group_size": G|null,
"modules_to_not_convert": [...]}; tensor layouts are documented in quant/int8.py and quant/int4.py. A tied model
whose head was quantized is written with ``tie_word_embeddings: false``: its head is now a separate
(quantized) tensor while the embedding stays float.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from torch import nn

from ..model.linear import Linear
from ..model.packed import checkpoint_tensors
from ..quant.int4 import Int4Method

# What the engine reads from a checkpoint folder besides the weights and config.json.
CARRIED_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json")


def quantized_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The tensors of a quantized model under their checkpoint names (tied weights once, no buffers)."""
    for name, m in model.named_modules():
        if isinstance(m, Linear) and isinstance(m.method, Int4Method) and (
                m.weight.numel() == 0 or m.scales_and_zeros.numel() == 0):
            raise ValueError(f"'{name}' keeps only its CPU-packed int4 weight, which is not portable; quantize with "
                             "quantize_model(..., keep_portable=True) before saving (`qwen3lab quantize` does)")
    return {name: t.detach().contiguous() for name, t in checkpoint_tensors(model)}


def save_quantized(model: nn.Module, out: str | Path, source: str | Path) -> Path:
    """Write ``model`` (quantized by ``quantize_model``) and the non-weight files of ``source`` to ``out``."""
    from safetensors.torch import save_file

    section = getattr(model, "quantization", None)
    if not section:
        raise ValueError("the model is not quantized; call qwen3lab.quant.quantize_model first")
    out, source = Path(out), Path(source)
    if out.resolve() == source.resolve():
        raise ValueError(f"--out {out} is the source checkpoint; write the quantized model to a new folder")
    out.mkdir(parents=True, exist_ok=True)
    config = _source_files(source, out)
    dtype = next(p.dtype for p in model.parameters() if p.is_floating_point())
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    if section.get("tied_head_copied"):
        config["tie_word_embeddings"] = False
    config["quantization_config"] = {k: v for k, v in section.items() if k != "tied_head_copied"}
    save_file(quantized_state(model), str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    return out


def _source_files(source: Path, out: Path) -> dict:
    """Copy tokenizer/generation files of ``source`` into ``out``; return its config as a dict."""
    if source.is_file():  # GGUF: config, tokenizer and generation defaults come from its metadata
        from .gguf_loader import load_gguf

        ckpt = load_gguf(source, torch.bfloat16)
        tok, meta = ckpt.tokenizer_files
        tok.save(str(out / "tokenizer.json"))
        (out / "tokenizer_config.json").write_text(json.dumps(meta, indent=2, ensure_ascii=False) + "\n")
        (out / "generation_config.json").write_text(json.dumps(ckpt.generation_config, indent=2) + "\n")
        return dict(ckpt.config)
    from ..config import read_json

    for name in CARRIED_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, out / name)
    return read_json(source / "config.json", what="model config")
