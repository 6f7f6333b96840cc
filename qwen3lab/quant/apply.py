"""Quantization as a module swap applied from outside the model.

Owns: choosing which layers to quantize (every ``nn.Linear`` of attention and MLP, and ``lm_head``),
swapping them for ``Int8Linear`` / ``Int4Linear`` in place, the ``quantization_config`` section that
describes the result in config.json, and the empty quantized skeleton the loader fills from a
quantized checkpoint. The embedding stays in the float dtype: a lookup reads one row per token, so
quantizing it saves memory but no time.

A tied model (``lm_head`` sharing ``embed_tokens``) gets a quantized *copy* of the matrix as its head
and keeps the float embedding for lookups; the head is the largest matrix of a small model
(Qwen3-4B: 389M of 4.0B parameters) and is read for every generated token.
"""

from __future__ import annotations

from fnmatch import fnmatch
from typing import Iterable

import torch
from torch import nn

from .int4 import DEFAULT_GROUP_SIZE, Int4Linear, check_group_size
from .int8 import Int8Linear

MODES = ("int8", "int4")
QUANT_METHOD = "qwen3lab"  # quantization_config["quant_method"] of checkpoints this package writes


def check_mode(mode: str, group_size: int | None) -> int | None:
    """Validate (mode, group_size); return the group size to use (None for int8)."""
    if mode not in MODES:
        raise ValueError(f"quantization mode {mode!r} is not supported; use one of {', '.join(MODES)}")
    if mode == "int8":
        if group_size is not None:
            raise ValueError("int8 quantization is per output channel and takes no group size")
        return None
    group_size = DEFAULT_GROUP_SIZE if group_size is None else group_size
    check_group_size(group_size)
    return group_size


def target_linears(model: nn.Module, skip: Iterable[str] = ()) -> list[str]:
    """Names of the layers to quantize: linears under ``model.layers`` and ``lm_head``, minus ``skip``
    (exact names or fnmatch patterns such as ``'*.down_proj'`` or ``'lm_head'``)."""
    skip = tuple(skip)
    names = [n for n, m in model.named_modules()
             if isinstance(m, nn.Linear) and (n.startswith("model.layers.") or n == "lm_head")]
    return [n for n in names if not any(n == s or fnmatch(n, s) for s in skip)]


def _quantized(mode: str, linear: nn.Linear, group_size: int | None, weight: torch.Tensor, name: str) -> nn.Module:
    if mode == "int8":
        return Int8Linear.from_linear(linear, weight)
    return Int4Linear.from_linear(linear, group_size, weight, name)


def quantize_model(model: nn.Module, mode: str, group_size: int | None = None, skip: Iterable[str] = (),
                   keep_portable: bool = False) -> nn.Module:
    """Quantize ``model`` (a loaded ``CausalLM``) in place and return it.

    ``keep_portable``: int4 layers keep their on-disk nibble layout next to the CPU-packed one, which
    ``save_quantized`` needs; inference alone does not.
    """
    if getattr(model, "quantization", None):
        raise ValueError(f"the model is already quantized ({model.quantization['mode']})")
    group_size = check_mode(mode, group_size)
    names = target_linears(model, skip)
    embed = model.model.embed_tokens.weight
    # Check every width before swapping anything, so that a bad group size leaves the model untouched.
    if mode == "int4":
        for name in names:
            check_group_size(group_size, model.get_submodule(name).in_features, name)
    tied_head = False
    for name in names:
        linear = model.get_submodule(name)
        tied_head |= name == "lm_head" and linear.weight is embed
        new = _quantized(mode, linear, group_size, linear.weight, name)
        if mode == "int4":
            new.prepare(keep_portable)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    model.quantization = quantization_config(mode, group_size, sorted(set(_all_linears(model)) - set(names)))
    model.quantization["tied_head_copied"] = tied_head
    return model


def _all_linears(model: nn.Module) -> list[str]:
    return [n for n, m in model.named_modules()
            if isinstance(m, (nn.Linear, Int8Linear, Int4Linear)) and (n.startswith("model.layers.") or n == "lm_head")]


def quantization_config(mode: str, group_size: int | None, not_converted: list[str]) -> dict:
    """The config.json section of a quantized checkpoint (described in checkpoint.py)."""
    return {"quant_method": QUANT_METHOD, "mode": mode, "group_size": group_size,
            "modules_to_not_convert": list(not_converted)}


def read_quantization_config(section: dict, source: str) -> tuple[str, int | None, list[str]]:
    """Validate a config.json ``quantization_config`` section; return (mode, group_size, not converted)."""
    if not isinstance(section, dict) or section.get("quant_method") != QUANT_METHOD:
        method = section.get("quant_method") if isinstance(section, dict) else section
        raise ValueError(f"{source}: quantization_config with quant_method {method!r} is not supported; "
                         f"qwen3lab loads float checkpoints and its own '{QUANT_METHOD}' int8/int4 format "
                         "(written by `qwen3lab quantize`)")
    try:
        group_size = check_mode(section.get("mode"), section.get("group_size"))
    except ValueError as e:
        raise ValueError(f"{source}: quantization_config: {e}") from None
    return section["mode"], group_size, list(section.get("modules_to_not_convert") or [])


def convert_for_loading(model: nn.Module, section: dict, source: str) -> None:
    """Swap the linears of a freshly built (meta) model for empty quantized modules, ready to be filled."""
    mode, group_size, not_converted = read_quantization_config(section, source)
    for name in target_linears(model, not_converted):
        linear = model.get_submodule(name)
        if mode == "int8":
            new = Int8Linear(linear.in_features, linear.out_features, linear.bias is not None)
        else:
            check_group_size(group_size, linear.in_features, name)
            new = Int4Linear(linear.in_features, linear.out_features, group_size, linear.bias is not None)
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    model.quantization = quantization_config(mode, group_size, not_converted)


def finish_loading(model: nn.Module) -> None:
    """After the tensors are in place: pack int4 weights for the CPU kernel."""
    for m in model.modules():
        if isinstance(m, Int4Linear):
            m.prepare(keep_portable=False)


def ensure_quantized(model: nn.Module, mode: str, group_size: int | None = None) -> nn.Module:
    """``LLM(quantization=...)``: quantize a float model; accept a checkpoint already quantized the same way."""
    done = getattr(model, "quantization", None)
    if not done:
        return quantize_model(model, mode, group_size)
    want = check_mode(mode, group_size)
    if done["mode"] != mode or (group_size is not None and done["group_size"] != want):
        have = done["mode"] + (f" (group size {done['group_size']})" if done["group_size"] else "")
        raise ValueError(f"the checkpoint is already quantized as {have}; load it without quantization= "
                         "or quantize the float checkpoint instead")
    return model
