"""``LoRALinear``: a frozen ``nn.Linear`` plus a trainable low-rank update, swapped in from outside.

y = base(x) + (dropout(x) @ A^T @ B^T) * alpha / r, with A [r, in] (Kaiming-uniform, as PEFT) and
B [out, r] (zeros, so a fresh adapter is the identity). Parameter names follow PEFT's
(``lora_A.weight`` / ``lora_B.weight``) so state dicts map onto ``adapter_model.safetensors`` by a
prefix. Owns the layer only; which modules get one is ``apply.py``, the file format ``peft_io.py``.
"""

from __future__ import annotations

import math

import torch
from torch import nn


class LoRALinear(nn.Module):
    def __init__(self, base: nn.Linear, r: int, alpha: float, dropout: float = 0.0):
        super().__init__()
        if r <= 0:
            raise ValueError(f"LoRA rank r must be positive, got {r}")
        self.base = base
        self.r, self.alpha = r, alpha
        self.scaling = alpha / r
        w = base.weight
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=w.device, dtype=torch.float32)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=w.device, dtype=torch.float32)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's default init
        nn.init.zeros_(self.lora_B.weight)
        self.lora_dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.disabled = False  # True: behave as the base layer (the GRPO reference policy)

    @classmethod
    def from_base(cls, linear: nn.Linear, r: int = 16, alpha: float = 32, dropout: float = 0.0) -> "LoRALinear":
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"LoRA wraps nn.Linear modules, got {type(linear).__name__}")
        linear.weight.requires_grad_(False)
        if linear.bias is not None:
            linear.bias.requires_grad_(False)
        return cls(linear, r, alpha, dropout)

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return self.base.out_features

    @property
    def weight(self) -> torch.Tensor:  # code that reads .weight (dtype/device probes) keeps working
        return self.base.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        if self.disabled:
            return y
        xa = self.lora_dropout(x)
        if not torch.is_autocast_enabled(x.device.type):  # the adapter computes in its own dtype (float32)
            xa = xa.to(self.lora_A.weight.dtype)
        return y + (self.lora_B(self.lora_A(xa)) * self.scaling).to(y.dtype)

    def delta_weight(self) -> torch.Tensor:
        return (self.lora_B.weight @ self.lora_A.weight) * self.scaling

    @torch.no_grad()
    def merged(self) -> nn.Linear:
        """The base layer with B @ A * scaling added into its weight (returned, not copied)."""
        w = self.base.weight
        w.copy_((w.float() + self.delta_weight().float()).to(w.dtype))
        return self.base
