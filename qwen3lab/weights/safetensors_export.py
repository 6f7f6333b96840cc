"""Write any checkpoint we load (GGUF file, safetensors folder, Hub id) as a Hugging Face folder.

Owns: config.json, model.safetensors (sharded with an index above `max_shard_bytes`),
generation_config.json, and the tokenizer: a GGUF source's tokenizer is rebuilt from its metadata
(`gguf_tokenizer`) and saved as tokenizer.json + tokenizer_config.json (with the chat template);
a folder source's tokenizer files are copied as they are. GGUF weights are dequantised (and llama
Q/K un-permuted) by `gguf_loader`, then cast to `dtype`.
Leaves out: quantised safetensors formats.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from .export_source import ExportSource, write_json

DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def _tokenizer_config(src: ExportSource) -> dict[str, Any]:
    tok = src.tokenizer
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": tok.add_bos_token,
        "add_eos_token": tok.add_eos_token,
        "bos_token": tok.bos_token,
        "eos_token": tok.eos_token,
        "pad_token": tok.pad_token,
        "unk_token": tok.unk_token,
        "clean_up_tokenization_spaces": False,
    }
    template = tok.chat_template
    if isinstance(template, dict):
        template = [{"name": k, "template": v} for k, v in template.items()]
    if template:
        config["chat_template"] = template
    return config


def _write_tokenizer(src: ExportSource, out: Path) -> None:
    files = src.tokenizer_files()
    if files:
        for f in files:
            shutil.copy(f, out / f.name)
        return
    from .gguf_tokenizer import build_tokenizer

    tok, _ = build_tokenizer(src.metadata)  # fresh: the loaded wrapper replaced its post-processor
    tok.save(str(out / "tokenizer.json"))
    write_json(out / "tokenizer_config.json", _tokenizer_config(src))


def _write_weights(src: ExportSource, out: Path, dtype: torch.dtype, max_shard_bytes: int) -> None:
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    names = []
    for name, tensor in src.tensors():
        nbytes = tensor.numel() * dtype.itemsize
        if shards[-1] and size + nbytes > max_shard_bytes:
            _save_shard(shards[-1], out / f"shard-{len(shards)}.tmp")
            shards[-1] = {}  # drop the written tensors; only the names are kept
            shards.append({})
            size = 0
        shards[-1][name] = tensor.to(dtype).contiguous()
        names.append((name, len(shards)))
        size += nbytes
    if len(shards) == 1:
        _save_shard(shards[0], out / "model.safetensors")
        return
    _save_shard(shards[-1], out / f"shard-{len(shards)}.tmp")
    n = len(shards)
    final = {i: f"model-{i:05d}-of-{n:05d}.safetensors" for i in range(1, n + 1)}
    for i, fname in final.items():
        os.replace(out / f"shard-{i}.tmp", out / fname)
    write_json(out / "model.safetensors.index.json",
               {"metadata": {}, "weight_map": {name: final[i] for name, i in names}})


def _save_shard(tensors: dict[str, torch.Tensor], path: Path) -> None:
    save_file(tensors, str(path), metadata={"format": "pt"})


def export_safetensors(model: str | os.PathLike | ExportSource, out: str | os.PathLike, outtype: str = "bf16",
                       max_shard_bytes: int = 4 << 30) -> Path:
    """Write `model` as a Hugging Face checkpoint folder at `out` with weights in `outtype` (f32, f16, bf16).

    Returns the folder. A tied lm_head is not written (config.json says tie_word_embeddings).
    """
    if outtype not in DTYPES:
        raise ValueError(f"outtype {outtype!r} cannot be written to safetensors; choose one of {', '.join(DTYPES)} "
                         "(quantised types are for .gguf outputs)")
    src = model if isinstance(model, ExportSource) else ExportSource(model)
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"{out} exists and is not a folder; a safetensors export writes a folder")
    out.mkdir(parents=True, exist_ok=True)
    config = dict(src.hf_config)
    config.pop("dtype", None)
    config["torch_dtype"] = str(DTYPES[outtype]).removeprefix("torch.")
    config = {k: v for k, v in config.items() if v is not None}
    write_json(out / "config.json", config)
    if src.generation:
        write_json(out / "generation_config.json", src.generation)
    _write_tokenizer(src, out)
    _write_weights(src, out, DTYPES[outtype], max_shard_bytes)
    return out
