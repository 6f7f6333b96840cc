"""Fusing q/k/v and gate/up projections into one matrix each, for inference.

A decode step is bandwidth-bound and every product is a separate call: one [q; k; v] product
instead of three (and [gate; up] instead of two) reads the same bytes with fewer calls, and for
quantized layers quantizes the activations once instead of per projection. Every supported layer
type is quantized per output row, so stacking rows is exact: the fused layer computes exactly the
outputs of the separate ones. Layers of other kinds (LoRA wrappers, PyTorch's packed int4) are left
separate. Checkpoints keep the Hugging Face names; this is applied after loading, like quantization.

Memory: loaded weights are views of the checkpoint's memory-mapped files. Stacking copies them, and
the pages the copy read stay counted in the process's resident memory while any tensor keeps the
mapping open (measured: Qwen3-4B bf16 peak RSS 14.3 GB instead of 9.9). After each layer is fused,
the parts' file-backed pages are handed back (``weights/memory.py``), so fusing costs one layer's
copy at the peak.
"""

from __future__ import annotations

import torch
from torch import nn

from ..quant.int4 import Int4Linear
from ..quant.int8 import Int8Linear
from ..weights.memory import release_file_pages


def _stack(parts: list[nn.Module]) -> nn.Module | None:
    """One layer whose output is the parts' outputs concatenated, or None if they cannot be stacked."""
    kind = type(parts[0])
    if not issubclass(kind, (nn.Linear, Int8Linear, Int4Linear)) or any(type(p) is not kind for p in parts):
        return None  # e.g. LoRA wrappers: their adapters are per projection
    if len({p.in_features for p in parts}) != 1:
        return None
    has_bias = parts[0].bias is not None
    if any((p.bias is not None) != has_bias for p in parts):
        return None
    out_features = sum(p.out_features for p in parts)
    bias = torch.cat([p.bias.data for p in parts]) if has_bias else None
    if issubclass(kind, nn.Linear):
        new = kind.__new__(kind)
        nn.Module.__init__(new)
        new.in_features, new.out_features = parts[0].in_features, out_features
        new.weight = nn.Parameter(torch.cat([p.weight.data for p in parts]), requires_grad=False)
        new.bias = nn.Parameter(bias, requires_grad=False) if has_bias else None
        return new
    if kind is Int8Linear:
        new = Int8Linear(parts[0].in_features, out_features, has_bias, parts[0].weight_scale.dtype, "meta")
        new.weight = nn.Parameter(torch.cat([p.weight.data for p in parts]), requires_grad=False)
        new.weight_scale = nn.Parameter(torch.cat([p.weight_scale.data for p in parts]), requires_grad=False)
    elif kind is Int4Linear and (all(p.amx_weight is not None for p in parts)
                                 or all(p.kernel_scales is not None for p in parts)):
        g = parts[0].group_size
        if any(p.group_size != g for p in parts):
            return None
        new = Int4Linear(parts[0].in_features, out_features, g, has_bias, parts[0].scales_and_zeros.dtype, "meta")
        # Portable tensors may have been dropped for the kernel's forms (prepare()); those stack along N
        # (the AMX tile layout is per 16 output rows, so it stays valid).
        w, sz = [p.weight.data for p in parts], [p.scales_and_zeros.data for p in parts]
        new.weight = nn.Parameter(torch.cat(w) if all(t.numel() for t in w) else w[0].new_empty(0), requires_grad=False)
        new.scales_and_zeros = nn.Parameter(torch.cat(sz, dim=1) if all(t.numel() for t in sz) else sz[0].new_empty(0),
                                            requires_grad=False)
        for attr in ("amx_weight", "amx_scales", "amx_zeros", "kernel_scales", "kernel_zeros"):
            if getattr(parts[0], attr) is not None:
                setattr(new, attr, torch.cat([getattr(p, attr) for p in parts]))
    else:
        return None
    new.bias = nn.Parameter(bias, requires_grad=False) if has_bias else None
    return new


def _weights(parts: list[nn.Module]) -> list[torch.Tensor]:
    return [t for p in parts for t in (p.weight.data, getattr(p, "scales_and_zeros", None)) if t is not None]


def fuse_layer(layer: nn.Module) -> int:
    """Fuse one decoder layer's q/k/v and gate/up projections in place; returns how many fusions."""
    count = 0
    attn, mlp = layer.self_attn, layer.mlp
    qkv = _stack([attn.q_proj, attn.k_proj, attn.v_proj])
    if qkv is not None:
        attn.qkv_proj, attn.qkv_sizes = qkv, (attn.q_proj.out_features, attn.k_proj.out_features,
                                             attn.v_proj.out_features)
        release_file_pages(_weights([attn.q_proj, attn.k_proj, attn.v_proj]))
        del attn.q_proj, attn.k_proj, attn.v_proj
        count += 1
    gate_up = _stack([mlp.gate_proj, mlp.up_proj])
    if gate_up is not None:
        mlp.gate_up_proj = gate_up
        release_file_pages(_weights([mlp.gate_proj, mlp.up_proj]))
        del mlp.gate_proj, mlp.up_proj
        count += 1
    return count


def fuse_projections(model: nn.Module) -> int:
    """Fuse every decoder layer's q/k/v and gate/up projections in place; returns how many fusions."""
    return sum(fuse_layer(layer) for layer in model.model.layers)
