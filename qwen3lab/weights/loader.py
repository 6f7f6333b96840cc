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
from ..model import CausalLM, Linear, ModelPlan
from ..model.packed import locate, part_names
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
    compiles anything."""
    names = [n for n in dir(nn.init) if n.endswith("_") and not n.startswith("_")]
    saved = {n: getattr(nn.init, n) for n in names}
    for n in names:
        setattr(nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(nn.init, n, f)


def make_plan(config: ModelConfig, dtype: torch.dtype, device, cpu_kernels: bool, quantization: dict | None,
              mode: str | None, group_size: int | None) -> tuple[ModelPlan, str | None, int | None]:
    """The layer plan for this load, and the (mode, group size) the model ends up quantized with.

    ``quantization``: the checkpoint's own ``quantization_config``; ``mode`` / ``group_size``: what the
    caller asks for (``LLM(quantization=...)``), applied to float checkpoints after loading."""
    from ..quant.apply import check_matches, check_mode, read_quantization_config
    from ..quant.methods import linear_choice

    target = device if cpu_kernels else "meta"  # "meta": PyTorch's own layouts, whatever the device
    if quantization is not None:
        done, done_group, not_converted = read_quantization_config(quantization, config.source)
        if mode is not None:
            check_matches({"mode": done, "group_size": done_group}, mode, group_size)
        choice = linear_choice(target, dtype, done, done_group, not_converted, from_float=False)
        mode, group_size = done, done_group
    elif mode is not None:
        group_size = check_mode(mode, group_size)
        choice = linear_choice(target, dtype, mode, group_size, from_float=True)
    else:
        choice = linear_choice(target, dtype)
    if cpu_kernels:
        return ModelPlan.for_device(device, dtype, choice), mode, group_size
    return ModelPlan(linear=choice, dtype=dtype), mode, group_size


def build_model(config: ModelConfig, tensors: Iterable[tuple[str, torch.Tensor, str]], dtype: torch.dtype,
                device: str | torch.device = "cpu", total: int | None = None, quantization: dict | None = None,
                mode: str | None = None, group_size: int | None = None, cpu_kernels: bool = False) -> CausalLM:
    """Build ``config``'s model with the layouts this load calls for, filled from ``tensors``.

    ``quantization``: the ``quantization_config`` section of a checkpoint written by ``qwen3lab quantize``;
    ``mode`` / ``group_size``: quantize a float checkpoint as it loads; ``cpu_kernels``: the fastest
    layouts and kernels this machine runs (inference), else PyTorch's own (the reference, training)."""
    plan, mode, group_size = make_plan(config, dtype, device, cpu_kernels, quantization, mode, group_size)
    with torch.device("meta"), _no_init():
        model = CausalLM(config, plan)
    modules = dict(model.named_modules())
    shapes = {name: p.shape for name, p in model.named_parameters()}
    loaded: set[str] = set()
    # A layer is processed (quantized, repacked) as soon as its last tensor is in, so that transient float
    # copies exist for one layer at a time; a tied head waits for the tie below.
    pending = {m: len(m.output_dims) * len(m.output_sizes) for m in modules.values() if isinstance(m, Linear)}
    for name, tensor, source in tqdm(tensors, total=total, desc="loading weights", unit="tensor",
                                     leave=False, mininterval=1.0):
        if name.endswith(IGNORED_SUFFIXES) or (name == "lm_head.weight" and config.tie_word_embeddings):
            continue
        module_name, attr, shard = locate(name)
        module = modules.get(module_name)
        if module is None or f"{module_name}.{attr}" not in shapes:
            raise ValueError(f"{source}: unexpected tensor '{name}' for model_type '{config.model_type}' "
                             f"(is config.json from the same checkpoint?)")
        want = module.shard_shape(attr, shard) if isinstance(module, Linear) else tuple(shapes[name])
        if tuple(tensor.shape) != tuple(want):
            raise ValueError(f"{source}: tensor '{name}' has shape {tuple(tensor.shape)}, expected "
                             f"{tuple(want)} from {config.source}")
        # Integer tensors are quantized weights: they keep their dtype.
        value = tensor.to(device=device, dtype=dtype if tensor.is_floating_point() else None)
        if isinstance(module, Linear):
            module.load_weight(attr, value, shard)
            pending[module] -= 1
            if not pending[module]:
                module.process_weights_after_loading()
                del pending[module]
        else:
            setattr(module, attr, nn.Parameter(value, requires_grad=False))
        loaded.add(name)
    expected = {f"{p}.{n.rpartition('.')[2]}" for n in shapes for p in part_names(n.rpartition(".")[0])}
    needed = expected - ({"lm_head.weight"} if config.tie_word_embeddings else set())
    missing = sorted(needed - loaded)
    if missing:
        raise ValueError(f"checkpoint is missing {len(missing)} tensor(s), e.g. {missing[:4]}; "
                         f"expected by {config.source}")
    model.tie_weights()
    for m in pending:
        m.process_weights_after_loading()
    if mode is not None:
        from ..quant.apply import describe

        model.quantization = describe(model, mode, group_size)
    model.rotary_emb.to(device)
    if cpu_kernels and torch.device(device).type == "cpu":
        _trim_cpu_memory(model)
    return model.eval()


def _trim_cpu_memory(model: CausalLM) -> None:
    """Inference on the CPU: hand back what loading left behind (glibc keeps the freed transient copies of
    quantizing and packing), and read an untied embedding's rows from the file instead of its memory map."""
    from ..memory import release_free_memory
    from .file_rows import FileRowsEmbedding

    release_free_memory()
    if getattr(model.lm_head, "weight", None) is not model.model.embed_tokens.weight:
        FileRowsEmbedding.swap(model.model)


def load_checkpoint(model: str | Path, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu",
                    quantization: str | None = None, group_size: int | None = None,
                    cpu_kernels: bool = False, attention: dict | None = None,
                    max_len: int | None = None, rope_scaling: dict | None = None) -> Checkpoint:
    """Load a checkpoint (folder, GGUF file or hub id). ``quantization`` ("int8" / "int4", with int4's
    ``group_size``) quantizes a float checkpoint as it loads; ``cpu_kernels`` picks the fastest layouts and
    kernels this machine runs (what inference wants) instead of PyTorch's own ops (the reference).
    ``attention``: run-time hybrid attention (``qwen3lab.hybrid_attention``), checked against ``max_len``;
    ``rope_scaling``: run-time rotary scaling such as YaRN (``qwen3lab.rope_scaling``)."""
    from .. import hybrid_attention, rope_scaling as scaling

    path = resolve_model_path(model)
    opts = {"mode": quantization, "group_size": group_size, "cpu_kernels": cpu_kernels}
    layers = lambda config: hybrid_attention.apply(scaling.apply(config, rope_scaling), attention, max_len)  # noqa: E731
    if path.is_file():
        return _load_gguf(path, dtype, device, opts, layers)
    from ..tokenizer import Tokenizer
    from .safetensors_loader import iter_safetensors

    config = layers(ModelConfig.from_file(path / "config.json"))
    raw = read_json(path / "config.json", what="model config")
    generation = GenerationDefaults.from_dir(path)
    tokenizer = Tokenizer.from_dir(path)
    net = build_model(config, iter_safetensors(path), dtype, device, total=_count_tensors(path, raw),
                      quantization=raw.get("quantization_config"), **opts)
    return Checkpoint(net, config, tokenizer, generation, path)


def _count_tensors(path: Path, raw: dict) -> int | None:
    index = path / "model.safetensors.index.json"
    if index.exists():
        return len(read_json(index, what="safetensors index").get("weight_map", {}))
    return None


def _load_gguf(path: Path, dtype: torch.dtype, device, opts: dict, layers) -> Checkpoint:
    from ..tokenizer import Tokenizer
    from .gguf_loader import load_gguf

    ckpt = load_gguf(path, dtype)
    config = layers(ModelConfig.from_dict(ckpt.config, source=str(path)))
    generation = GenerationDefaults.from_dict(ckpt.generation_config)
    tok, meta = ckpt.tokenizer_files
    tokenizer = Tokenizer(tok, **meta)
    tensors = ((name, t, str(path)) for name, t in ckpt.tensors())
    net = build_model(config, tensors, dtype, device, **opts)
    return Checkpoint(net, config, tokenizer, generation, path)
