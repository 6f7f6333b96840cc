"""A tiny random Qwen3 checkpoint (real tokenizer) and a small conversation file for training tests."""

from __future__ import annotations

import json
from pathlib import Path

from checkpoints import save_reference

TINY = dict(num_hidden_layers=2, hidden_size=64, intermediate_size=128, num_attention_heads=4,
            num_key_value_heads=2, head_dim=16)


def tiny_checkpoint(folder: Path) -> Path:
    save_reference(folder, "qwen3", **TINY)
    return folder


def conversations(path: Path, n: int = 24) -> Path:
    rows = [{"messages": [{"role": "user", "content": f"Add {i} and {i + 1}."},
                          {"role": "assistant", "content": f"The sum is {2 * i + 1}."}]} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    return path


def random_adapter(base: Path, folder: Path, r: int, targets: tuple[str, ...], seed: int = 0) -> Path:
    """A PEFT-format LoRA adapter for ``base`` with random B (a fresh one would be the identity)."""
    import torch

    from qwen3lab.lora import apply_lora, save_adapter
    from qwen3lab.weights.loader import load_checkpoint

    torch.manual_seed(seed)
    model = load_checkpoint(base, torch.float32).model
    apply_lora(model, r=r, alpha=2 * r, target_modules=targets)
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)
    return save_adapter(model, folder)
