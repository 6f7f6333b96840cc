"""``LoRALinear``: a frozen linear layer plus a trainable low-rank update, swapped in from outside;
``PackedLoRALinear``: the same for the parts of a packed q/k/v or gate/up projection.

y = base(x) + (dropout(x) @ A^T @ B^T) * alpha / r, with A [r, in] (Kaiming-uniform, as PEFT) and
B [out, r] (zeros, so a fresh adapter is the identity). The adapter reads x in its compute dtype (bf16
under autocast) and its dropout keeps a one-byte mask for the backward where ``nn.Dropout`` on the CPU
keeps float noise: 3 instead of 6 bytes per input element stay alive per adapter. Parameter names follow
PEFT's (``lora_A.weight`` / ``lora_B.weight``) so state dicts map onto ``adapter_model.safetensors`` by a
prefix. Owns the layer only; which modules get one is ``apply.py``, the file format ``peft_io.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


def drop_mask(shape: torch.Size, p: float, device) -> tuple[torch.Tensor, float]:
    """Bool mask of dropped elements, each with probability p rounded to a multiple of 2^-16; and that p.

    Each 64-bit draw gives four 16-bit lanes: 3.5x faster on the CPU than ``bernoulli_``, whose kernel
    draws one double per element, serially.
    """
    n, cut = math.prod(shape), round(p * 65536)
    bits = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64, device=device)
    return (bits.view(torch.int16)[:n] < cut - 32768).view(shape), cut / 65536


class LoRAAdapter(nn.Module):
    """The trainable low-rank pair of one projection: ``delta(x) = B(A(dropout(x))) * alpha / r``."""

    def __init__(self, in_features: int, out_features: int, r: int, alpha: float, dropout: float = 0.0, device=None):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        self.lora_A = nn.Linear(in_features, r, bias=False, device=device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, out_features, bias=False, device=device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()  # p and train/eval; see delta
        self.disabled = False  # True: behave as the base layer (the GRPO reference policy)

    def add_delta(self, y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """y + the adapter's update for input x (y itself when disabled)."""
        if self.disabled:
            return y
        kind = x.device.type
        # The adapter computes in the autocast dtype, else in its own (float32); cast before the dropout.
        dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else self.lora_A.weight.dtype
        xa, scale = x.to(dtype), self.scaling
        p = getattr(self.lora_dropout, "p", 0.0)
        if p > 0 and self.lora_dropout.training:
            drop, p = drop_mask(xa.shape, p, xa.device)
            if p >= 1:
                return y
            # masked_fill keeps the bool mask for the backward; A and B are linear, so the 1/(1-p) rescale
            # joins the output scale instead of costing a pass over x.
            xa, scale = xa.masked_fill(drop, 0), scale / (1 - p)
        return y.add(self.lora_B(self.lora_A(xa)).to(y.dtype), alpha=scale)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling


def _freeze(linear: nn.Module) -> None:
    if not (hasattr(linear, "in_features") and hasattr(linear, "weight")):
        raise TypeError(f"LoRA wraps linear layers, got {type(linear).__name__}")
    for p in linear.parameters():
        p.requires_grad_(False)


class _ReadsBase:
    """``in_features`` / ``out_features`` / ``weight`` of the wrapped layer, for code that probes them."""

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight


class LoRALinear(_ReadsBase, LoRAAdapter):
    """A frozen linear layer (``nn.Linear`` or qwen3lab's ``Linear``) plus one adapter."""

    def __init__(self, base: nn.Module, r: int, alpha: float, dropout: float = 0.0):
        super().__init__(base.in_features, base.out_features, r, alpha, dropout, base.weight.device)
        self.base = base

    @classmethod
    def from_base(cls, linear: nn.Module, r: int = 16, alpha: float = 32, dropout: float = 0.0) -> "LoRALinear":
        _freeze(linear)
        return cls(linear, r, alpha, dropout)


    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.add_delta(self.base(x), x)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base layer with B @ A * scaling added into its weight (returned, not copied)."""
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight().float()).to(w.dtype))
        return self.base


class PackedLoRALinear(_ReadsBase, nn.Module):
    """A packed projection (``qkv_proj``, ``gate_up_proj``) with one adapter per targeted part, each named
    after its Hugging Face projection (``parts.q_proj``), so PEFT files map onto it part by part."""

    def __init__(self, base: nn.Module, parts: dict[str, int], r: int, alpha: float, dropout: float = 0.0):
        """``parts``: Hugging Face projection name -> its index in ``base.output_sizes``."""
        super().__init__()
        self.base, self.index = base, dict(parts)
        sizes = base.output_sizes
        self.parts = nn.ModuleDict({name: LoRAAdapter(base.in_features, sizes[i], r, alpha, dropout, base.weight.device)
                                    for name, i in parts.items()})

    @classmethod
    def from_base(cls, linear: nn.Module, parts: dict[str, int], r: int = 16, alpha: float = 32,
                  dropout: float = 0.0) -> "PackedLoRALinear":
        _freeze(linear)
        return cls(linear, parts, r, alpha, dropout)

    @property
    def output_sizes(self) -> tuple[int, ...]:
        return self.base.output_sizes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ys = list(self.base(x).split(self.base.output_sizes, dim=-1))
        for name, adapter in self.parts.items():
            i = self.index[name]
            ys[i] = adapter.add_delta(ys[i], x)
        return torch.cat(ys, dim=-1)

    @torch.no_grad()
    def merged(self) -> nn.Module:
        """The base layer with each part's update added into its rows of the weight (returned, not copied)."""
        w, sizes = self.base.weight, self.base.output_sizes
        for name, adapter in self.parts.items():
            i = self.index[name]
            rows = w.narrow(0, sum(sizes[:i]), sizes[i])
            rows.copy_((rows.float() + adapter.delta_weight().float()).to(w.dtype))
        return self.base
