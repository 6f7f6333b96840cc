"""Put LoRA layers into a ``CausalLM`` from outside, take them out again (merge), switch them off.

Targets are matched by the last component of the module name (``q_proj`` ... ``down_proj``), as
PEFT's ``target_modules`` list does; ``lm_head`` and embeddings are never wrapped. After
``apply_lora`` only the adapter parameters require grad.
"""

from __future__ import annotations

from contextlib import contextmanager

from torch import nn

from .layer import LoRALinear

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


def apply_lora(model: nn.Module, r: int = 16, alpha: float = 32, dropout: float = 0.05,
               target_modules: tuple[str, ...] | list[str] = DEFAULT_TARGETS) -> list[str]:
    """Swap every targeted ``nn.Linear`` under ``model.model`` for a ``LoRALinear``; return their names."""
    for p in model.parameters():
        p.requires_grad_(False)
    targets = set(target_modules)
    swapped = []
    for name, module in list(model.named_modules()):
        if not name.startswith("model.") or name.rpartition(".")[2] not in targets:
            continue
        if isinstance(module, LoRALinear):
            raise ValueError(f"{name} already carries a LoRA adapter; merge or remove it first")
        if not isinstance(module, nn.Linear):
            continue
        parent, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent), attr, LoRALinear.from_base(module, r, alpha, dropout))
        swapped.append(name)
    if not swapped:
        raise ValueError(f"no module matched target_modules={sorted(targets)}")
    return swapped


def lora_layers(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def merge_lora(model: nn.Module) -> nn.Module:
    """Fold every adapter into its base weight and put the plain ``nn.Linear`` back (in place)."""
    for name, layer in lora_layers(model).items():
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
