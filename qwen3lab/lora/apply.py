"""Put LoRA layers into a ``CausalLM`` from outside, take them out again (merge), switch them off.

Targets are matched by the last component of the Hugging Face module name (``q_proj`` ...
``down_proj``, parts of packed projections included), as PEFT's ``target_modules`` list does;
``lm_head`` and embeddings are never wrapped. After ``apply_lora`` only the adapter parameters
require grad.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from ..model.linear import Linear
from ..model.packed import PACKED_MODULES
from .layer import LoRAAdapter, LoRALinear, PackedLoRALinear

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(model: nn.Module, r: int = 16, alpha: float = 32, dropout: float = 0.05,
               target_modules: tuple[str, ...] | list[str] = DEFAULT_TARGETS) -> list[str]:
    """Give every targeted projection under ``model.model`` an adapter; return the targeted names.

    A packed projection (``qkv_proj``, ``gate_up_proj``) gets a ``PackedLoRALinear`` with an adapter on
    each targeted part, so ``q_proj`` alone can be adapted while k and v stay frozen."""
    for p in model.parameters():
        p.requires_grad_(False)
    targets = set(target_modules)
    swapped = []
    for name, module in list(model.named_modules()):
        if not name.startswith("model."):
            continue
        parent, _, attr = name.rpartition(".")
        parts = PACKED_MODULES.get(attr, (attr,))
        chosen = {p: i for i, p in enumerate(parts) if p in targets}
        if not chosen:
            continue
        if isinstance(module, (LoRALinear, PackedLoRALinear)):
            raise ValueError(f"{name} already carries a LoRA adapter; merge or remove it first")
        if not isinstance(module, (nn.Linear, Linear)):
            continue
        if attr in PACKED_MODULES:
            new = PackedLoRALinear.from_base(module, chosen, r, alpha, dropout)
        else:
            new = LoRALinear.from_base(module, r, alpha, dropout)
        setattr(model.get_submodule(parent), attr, new)
        swapped.extend(f"{parent}.{p}" for p in chosen)
    if not swapped:
        raise ValueError(f"no module matched target_modules={sorted(targets)}")
    return swapped


def lora_layers(model: nn.Module) -> dict[str, LoRAAdapter]:
    """Every adapter under its Hugging Face projection name (the parts of packed projections apart)."""
    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoRALinear):
            out[name] = m
        elif isinstance(m, PackedLoRALinear):
            parent = name.rpartition(".")[0]
            out.update((f"{parent}.{p}", adapter) for p, adapter in m.parts.items())
    return out


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain layer back (in place)."""
    for name, layer in list(model.named_modules()):
        if isinstance(layer, (LoRALinear, PackedLoRALinear)):
            parent, _, attr = name.rpartition(".")
            setattr(model.get_submodule(parent), attr, layer.merged())
    return model


@contextmanager
def lora_disabled(model: nn.Module):
    """Run the base model (the reference policy) without removing the adapters."""
    layers = list(lora_layers(model).values())
    for layer in layers:
        layer.disabled = True
    try:
        yield model
    finally:
        for layer in layers:
            layer.disabled = False
