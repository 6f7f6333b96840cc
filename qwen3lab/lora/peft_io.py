"""Save and load adapters in PEFT's on-disk format, so `peft.PeftModel.from_pretrained` reads ours.

A folder holds ``adapter_config.json`` (``peft_type`` LORA, ``r``, ``lora_alpha``, ``lora_dropout``,
``target_modules``, ...) and ``adapter_model.safetensors`` with keys
``base_model.model.<HF module name>.lora_A.weight`` / ``.lora_B.weight`` (PEFT strips the adapter
name "default" on save). Only plain LoRA is read: DoRA, rsLoRA, rank/alpha patterns, bias training
and ``modules_to_save`` are refused with a clear error rather than loaded wrongly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from .apply import apply_lora, lora_layers

PREFIX = "base_model.model."
CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    out = {}
    for name, layer in lora_layers(model).items():
        out[f"{PREFIX}{name}.lora_A.weight"] = layer.lora_A.weight.detach().float().contiguous().cpu()
        out[f"{PREFIX}{name}.lora_B.weight"] = layer.lora_B.weight.detach().float().contiguous().cpu()
    return out


def save_adapter(model: nn.Module, folder: str | Path, base_model_name_or_path: str | None = None) -> Path:
    layers = lora_layers(model)
    if not layers:
        raise ValueError("the model has no LoRA layers to save (call apply_lora first)")
    first = next(iter(layers.values()))
    targets = sorted({n.rpartition(".")[2] for n in layers})
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": first.r, "lora_alpha": first.alpha,
        "lora_dropout": getattr(first.lora_dropout, "p", 0.0), "target_modules": targets, "bias": "none",
        "fan_in_fan_out": False, "use_rslora": False, "use_dora": False, "init_lora_weights": True,
        "modules_to_save": None, "rank_pattern": {}, "alpha_pattern": {}, "inference_mode": True,
        "base_model_name_or_path": base_model_name_or_path,
    }
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / CONFIG_FILE).write_text(json.dumps(config, indent=2))
    save_file(adapter_state_dict(model), str(folder / WEIGHTS_FILE), metadata={"format": "pt"})
    return folder


def read_adapter_config(folder: str | Path) -> dict:
    path = Path(folder) / CONFIG_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a LoRA adapter folder needs {CONFIG_FILE} and {WEIGHTS_FILE}")
    cfg = json.loads(path.read_text())
    if cfg.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{path}: peft_type {cfg.get('peft_type')!r} is not supported (only LORA)")
    for key in ("use_dora", "use_rslora"):
        if cfg.get(key):
            raise ValueError(f"{path}: {key}=true is not supported")
    for key in ("rank_pattern", "alpha_pattern", "modules_to_save"):
        if cfg.get(key):
            raise ValueError(f"{path}: {key} is not supported (plain LoRA only)")
    if cfg.get("bias", "none") != "none":
        raise ValueError(f"{path}: bias={cfg['bias']!r} is not supported (only 'none')")
    return cfg


def load_adapter(model: nn.Module, folder: str | Path, dropout: float | None = None) -> nn.Module:
    """Apply LoRA as the folder's config says and load its weights (strict: every key must match)."""
    folder = Path(folder)
    cfg = read_adapter_config(folder)
    targets = cfg["target_modules"]
    if isinstance(targets, str):  # PEFT also allows a regex; we take it only as a single name
        targets = [targets]
    if not lora_layers(model):
        apply_lora(model, r=cfg["r"], alpha=cfg["lora_alpha"],
                   dropout=cfg.get("lora_dropout", 0.0) if dropout is None else dropout, target_modules=targets)
    load_adapter_weights(model, folder / WEIGHTS_FILE)
    return model


def read_adapter_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """``adapter_model.safetensors`` with keys as ours (``...lora_A.weight``)."""
    # PEFT versions differ on whether the adapter name appears in the key; accept both.
    return {k.replace(".lora_A.default.", ".lora_A.").replace(".lora_B.default.", ".lora_B."): v
            for k, v in load_file(str(path)).items()}


def load_adapter_weights(model: nn.Module, path: str | Path) -> None:
    tensors = read_adapter_tensors(path)
    expected = adapter_state_dict(model)
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(f"{path}: adapter keys do not match the model: missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]} (is it for this base model and target_modules?)")
    layers = lora_layers(model)
    with torch.no_grad():
        for key, value in tensors.items():
            name, _, part = key[len(PREFIX):].rpartition(".lora_")
            param = getattr(layers[name], "lora_" + part.split(".")[0]).weight
            if param.shape != value.shape:
                raise ValueError(f"{path}: {key} has shape {tuple(value.shape)}, expected {tuple(param.shape)}")
            param.copy_(value)
