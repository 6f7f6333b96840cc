"""Quantizing a loaded model in place, and the ``quantization_config`` section that describes the result.

A model is normally built quantized from the start (the loader's ``ModelPlan`` gives each layer its
int8 / int4 method, ``quant/methods.py``). ``quantize_model`` does the same for a model already loaded
in float: each target layer gets its quantized method and converts its weight. Targets are every
projection of the decoder layers and ``lm_head``; the embedding stays in the float dtype: a lookup
reads one row per token, so quantizing it saves memory but no time.

A tied model (``lm_head`` sharing ``embed_tokens``) gets a quantized *copy* of the matrix as its head
and keeps the float embedding for lookups; the head is the largest matrix of a small model
(Qwen3-4B: 389M of 4.0B parameters) and is read for every generated token.
"""

from __future__ import annotations

from typing import Iterable

from torch import nn

from ..model.linear import Linear
from ..model.packed import part_names
from .int4 import DEFAULT_GROUP_SIZE, Int4Method, check_group_size
from .int8 import Int8Method
from .methods import MODES, int4_method, int8_method, is_target, skipped

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


def target_layers(model: nn.Module) -> list[tuple[str, Linear]]:
    """(module name, layer) of every ``Linear`` that quantization applies to."""
    return [(n, m) for n, m in model.named_modules() if isinstance(m, Linear) and is_target(part_names(n))]


def is_quantized(layer: Linear) -> bool:
    return isinstance(layer.method, (Int8Method, Int4Method))


def quantize_model(model: nn.Module, mode: str, group_size: int | None = None, skip: Iterable[str] = (),
                   keep_portable: bool = False) -> nn.Module:
    """Quantize ``model`` (a loaded ``CausalLM``) in place and return it. ``skip``: Hugging Face module
    names or fnmatch patterns (``'*.down_proj'``, ``'lm_head'``) to keep in float.

    ``keep_portable``: int4 layers keep their on-disk nibble layout next to a kernel's form, which
    ``save_quantized`` needs; inference alone does not.
    """
    if getattr(model, "quantization", None):
        raise ValueError(f"the model is already quantized ({model.quantization['mode']})")
    group_size = check_mode(mode, group_size)
    skip = tuple(skip)
    targets = [(n, m) for n, m in target_layers(model) if not skipped(part_names(n), skip)]
    # Check every width before converting anything, so that a bad group size leaves the model untouched.
    if mode == "int4":
        for name, layer in targets:
            check_group_size(group_size, layer.in_features, part_names(name)[0])
    for name, layer in targets:
        w = layer.weight
        if mode == "int8":
            layer.method = int8_method(layer.in_features, layer.out_features, w.device, from_float=True)
        else:
            layer.method = int4_method(layer.in_features, layer.out_features, group_size, w.device, w.dtype,
                                       from_float=True, keep_portable=keep_portable)
        layer.process_weights_after_loading()
    model.quantization = describe(model, mode, group_size)
    return model


def describe(model: nn.Module, mode: str, group_size: int | None) -> dict:
    """``model.quantization``: the config.json section plus whether a tied head was copied."""
    not_converted = sorted(p for n, m in target_layers(model) if not is_quantized(m) for p in part_names(n))
    section = quantization_config(mode, group_size, not_converted)
    section["tied_head_copied"] = bool(model.config.tie_word_embeddings and is_quantized(model.lm_head))
    return section


def quantization_config(mode: str, group_size: int | None, not_converted: list[str]) -> dict:
    """The config.json section of a quantized checkpoint (described in weights/quantized_export.py)."""
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


def check_matches(done: dict, mode: str, group_size: int | None) -> None:
    """``LLM(quantization=...)`` on a checkpoint already quantized: the same quantization is fine."""
    want = check_mode(mode, group_size)
    if done["mode"] != mode or (group_size is not None and done["group_size"] != want):
        have = done["mode"] + (f" (group size {done['group_size']})" if done["group_size"] else "")
        raise ValueError(f"the checkpoint is already quantized as {have}; load it without quantization= "
                         "or quantize the float checkpoint instead")


def ensure_quantized(model: nn.Module, mode: str, group_size: int | None = None) -> nn.Module:
    """Quantize a float model; accept a model already quantized the same way."""
    done = getattr(model, "quantization", None)
    if not done:
        return quantize_model(model, mode, group_size)
    check_matches(done, mode, group_size)
    return model



def quantize_linear(linear: nn.Module, mode: str, group_size: int | None = None, keep_portable: bool = False,
                    method=None) -> Linear:
    """A quantized ``Linear`` made from a float ``nn.Linear`` or ``Linear`` (which is left as it is), in the
    layout this machine runs best, or in ``method`` (a from-float int8 / int4 method) when given."""
    group_size = check_mode(mode, group_size)
    w = linear.weight.detach()
    n, k = w.shape
    if method is None and mode == "int8":
        method = int8_method(k, n, w.device, from_float=True)
    elif method is None:
        method = int4_method(k, n, group_size, w.device, w.dtype, from_float=True, keep_portable=keep_portable)
    layer = Linear(k, n, linear.bias is not None, method, w.dtype, w.device)
    layer.load_weight("weight", w.clone())
    if linear.bias is not None:
        layer.load_weight("bias", linear.bias.detach().clone())
    layer.process_weights_after_loading()
    return layer
