"""Pieces SFT and GRPO share: loading a float32 trainable model, LoRA or full, the optimizer, memory."""

from __future__ import annotations

import resource
import sys
from contextlib import nullcontext

import torch
from torch import nn

from ..lora import apply_lora, load_adapter
from ..memory import release_free_memory  # noqa: F401 - re-exported for the trainers


def prepare_trainable(model: nn.Module, lora_r: int, lora_alpha: float, lora_dropout: float,
                      target_modules, init_adapter: str | None = None) -> list[nn.Parameter]:
    """LoRA (r > 0: adapters only train) or full fine-tuning (r == 0: every weight trains)."""
    if init_adapter:
        load_adapter(model, init_adapter, dropout=lora_dropout)
    elif lora_r > 0:
        apply_lora(model, r=lora_r, alpha=lora_alpha, dropout=lora_dropout, target_modules=target_modules)
    else:
        for p in model.parameters():
            p.requires_grad_(True)
    return [p for p in model.parameters() if p.requires_grad]


def make_optimizer(params, lr: float, weight_decay: float) -> torch.optim.AdamW:
    decay = [p for p in params if p.dim() >= 2]  # no decay on norms and biases
    rest = [p for p in params if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW([g for g in groups if g["params"]], lr=lr, betas=(0.9, 0.95))


def autocast(device: str, bf16: bool):
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16) if bf16 else nullcontext()


def peak_memory_gb(device: str) -> float:
    """Peak accelerator memory, or this process's peak resident set size on the CPU."""
    if torch.device(device).type == "cuda":
        return torch.cuda.max_memory_allocated() / 2**30
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 2**20 if sys.platform != "darwin" else kb / 2**30


