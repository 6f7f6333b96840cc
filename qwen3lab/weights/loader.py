"""Build a ready model, tokenizer and generation defaults from any supported checkpoint.

Owns: choosing the tensor source (safetensors folder or GGUF file), building the model on the meta
device and placing each tensor as it arrives (peak memory stays near the weights' size), and the
checks that turn a wrong or incomplete checkpoint into one clear error.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from torch import nn
from tqdm.auto import tqdm

from ..config import GenerationDefaults, ModelConfig, read_json
from ..model import CausalLM
from .hub import resolve_model_path

# Tensors some checkpoints carry that the engine recomputes or never uses.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


@dataclass
class Checkpoint:
    model: CausalLM
    config: ModelConfig
    tokenizer: object
    generation: GenerationDefaults
    path: Path


def _set_tensor(model: nn.Module, name: str, value: torch.Tensor) -> None:
    module_name, _, attr = name.rpartition(".")
    module = model.get_submodule(module_name)
    setattr(module, attr, nn.Parameter(value, requires_grad=False))


@contextlib.contextmanager
def _no_init():
    """Skip the random initialisation of layers built on the meta device (their values are loaded next).
    On meta tensors ``nn.init.normal_`` and friends go through ``torch._refs``, whose first use imports
    torch._dynamo and sympy: 900 modules and ~70 MB of resident Python objects in a process that never
    compiles anything (measured: a 4B int4 decode at 1.17x its weight bytes, 1.14x without them)."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def build_model(config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor, str]], dtype: torch.dtype,
                device: str | torch.device = "cpu", total: int | None = None,
                quantization: dict | None = None) -> CausalLM:
    """``quantization``: the ``quantization_config`` section of a checkpoint written by ``qwen3lab quantize``."""
    with torch.device("meta"), _no_init():
        model = CausalLM(config)
        if quantization is not None:  # quantized layers are built empty and filled like float ones
            from ..quant import convert_for_loading

            convert_for_loading(model, quantization, config.source)
    expected = {name: p.shape for name, p in model.named_parameters()}
    loaded: set[str] = set()
    for name, tensor, source in tqdm(tensors, total=total, desc="loading weights", unit="tensor",
                                     leave=False, mininterval=1.0):
        if name.endswith(IGNORED_SUFFIXES) or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        if name not in expected:
            raise ValueError(f"{source}: unexpected tensor '{name}' for model_type '{config.model_type}' "
                             f"(is config.json from the same checkpoint?)")
        if tuple(tensor.shape) != tuple(expected[name]):
            raise ValueError(f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, expected "
                             f"{tuple(expected[name])} from {config.source}")
        # Integer tensors are quantized weights: they keep their dtype.
        _set_tensor(model, name, tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None))
        loaded.add(name)
    needed = set(expected) - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    missing = sorted(needed - loaded)
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:4]}; "
                         f"expected by {config.source}")
    model.tie_weights()
    if quantization is not None:
        from ..quant import finish_loading

        finish_loading(model)
    model.rotary_emb.to(device)
    return model.eval()


def load_checkpoint(model: str | Path, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu") -> Checkpoint:
    path = resolve_model_path(model)
    if path.is_file():
        return _load_gguf(path, dtype, device)
    from ..tokenizer import Tokenizer
    from .safetensors_loader import iter_safetensors

    config = ModelConfig.from_file(path / "config.json")
    raw = read_json(path / "config.json", what="model config")
    generation = GenerationDefaults.from_dir(path)
    tokenizer = Tokenizer.from_dir(path)
    net = build_model(config, iter_safetensors(path), dtype, device, total=_count_tensors(path, raw),
                      quantization=raw.get("quantization_config"))
    return Checkpoint(net, config, tokenizer, generation, path)


def _count_tensors(path: Path, raw: dict) -> int | None:
    index = path / "model.safetensors.index.json"
    if index.exists():
        return len(read_json(index, what="safetensors index").get("weight_map", {}))
    return None


def _load_gguf(path: Path, dtype: torch.dtype, device) -> Checkpoint:
    from ..tokenizer import Tokenizer
    from .gguf_loader import load_gguf

    ckpt = load_gguf(path, dtype)
    config = ModelConfig.from_dict(ckpt.config, source=str(path))
    generation = GenerationDefaults.from_dict(ckpt.generation_config)
    tok, meta = ckpt.tokenizer_files
    tokenizer = Tokenizer(tok, **meta)
    tensors = ((name, t, str(path)) for name, t in ckpt.tensors())
    net = build_model(config, tensors, dtype, device)
    return Checkpoint(net, config, tokenizer, generation, path)
