"""The one table where module names differ from Hugging Face's: packed q/k/v and gate/up projections.

Checkpoints hold ``q_proj``, ``k_proj``, ``v_proj``, ``gate_proj`` and ``up_proj`` separately; the model
holds ``qkv_proj`` and ``gate_up_proj``, whose tensors stack the parts along each tensor's output
dimension (``Linear.output_dims``). ``locate`` maps a checkpoint name onto (module, tensor, part) and
``checkpoint_tensors`` maps a model back onto checkpoint names (for saving).
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import nn

# Packed module -> the Hugging Face projections it holds, in output order.
PACKED_MODULES = {"qkv_proj": ("q_proj", "k_proj", "v_proj"), "gate_up_proj": ("gate_proj", "up_proj")}
_PART_OF = {part: (packed, i) for packed, parts in PACKED_MODULES.items() for i, part in enumerate(parts)}


def locate(name: str) -> tuple[str, str, int | None]:
    """Checkpoint tensor name -> (module name, tensor name, part index or None for an unpacked module)."""
    module, _, tensor = name.rpartition(".")
    parent, _, proj = module.rpartition(".")
    if proj in _PART_OF:
        packed, shard = _PART_OF[proj]
        return f"{parent}.{packed}", tensor, shard
    return module, tensor, None


def part_names(module_name: str) -> tuple[str, ...]:
    """The Hugging Face module names a (possibly packed) module stands for."""
    parent, _, attr = module_name.rpartition(".")
    return tuple(f"{parent}.{p}" for p in PACKED_MODULES[attr]) if attr in PACKED_MODULES else (module_name,)


def checkpoint_tensors(model: nn.Module) -> Iterator[tuple[str, torch.Tensor]]:
    """(Hugging Face name, tensor) for every parameter, packed ones split back into their parts."""
    for name, p in model.named_parameters():  # tied weights once
        module, _, tensor = name.rpartition(".")
        parts = part_names(module)
        if len(parts) == 1:
            yield name, p
            continue
        layer = model.get_submodule(module)
        dim, sizes = layer.output_dims[tensor], layer.output_sizes
        for part, t in zip(parts, p.split(sizes, dim=dim)):
            yield f"{part}.{tensor}", t


def unpack_state(model: nn.Module, state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A ``state_dict`` of ``model`` under checkpoint names: packed tensors split into their parts."""
    out = {}
    for name, t in state.items():
        module, _, tensor = name.rpartition(".")
        parts = part_names(module)
        if len(parts) == 1:
            out[name] = t
            continue
        layer = model.get_submodule(module)
        pieces = t.split(layer.output_sizes, dim=layer.output_dims[tensor])
        out.update((f"{p}.{tensor}", x) for p, x in zip(parts, pieces))
    return out


def pack_state(model: nn.Module, tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Checkpoint-named tensors -> ``model``'s state-dict names, parts stacked into their packed tensors
    (parts missing from ``tensors`` leave the packed tensor out, for the caller's missing-tensor check)."""
    out, packed = {}, {}
    for name, t in tensors.items():
        module, tensor, shard = locate(name)
        if shard is None:
            out[name] = t
        else:
            packed.setdefault(f"{module}.{tensor}", {})[shard] = t
    for key, parts in packed.items():
        module, _, tensor = key.rpartition(".")
        try:
            layer = model.get_submodule(module)
        except AttributeError:
            layer = None
        if layer is None or len(parts) != len(layer.output_sizes):
            out.update((f"{part_names(module)[i]}.{tensor}", t) for i, t in parts.items())  # reported as unknown
            continue
        out[key] = torch.cat([parts[i] for i in range(len(parts))], dim=layer.output_dims[tensor])
    return out
