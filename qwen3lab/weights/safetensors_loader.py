"""Tensor source for Hugging Face safetensors folders: one file or shards with an index.

Yields tensors one at a time from memory-mapped files so that loading never holds a second copy
of the model; the caller converts and places each tensor before asking for the next.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import torch
from safetensors import SafetensorError, safe_open


def safetensors_files(folder: Path) -> list[Path]:
    index = folder / "model.safetensors.index.json"
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a valid safetensors index (needs a 'weight_map' object): {e}") from e
        files = [folder / f for f in dict.fromkeys(weight_map.values())]
        missing = [f.name for f in files if not f.exists()]
        if missing:
            raise FileNotFoundError(f"{index} lists shards that are not in {folder}: {missing[:5]}; "
                                    "download the complete checkpoint")
        return files
    files = sorted(folder.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors weights in {folder} (expected model.safetensors or shards "
                                "with model.safetensors.index.json)")
    return files


def iter_safetensors(folder: Path) -> Iterator[tuple[str, torch.Tensor, str]]:
    """Yield (name, tensor, file) for every tensor of the checkpoint."""
    for path in safetensors_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for name in f.keys():
                    yield name, f.get_tensor(name), str(path)
        except (SafetensorError, OSError) as e:
            raise ValueError(f"cannot read safetensors file {path}: {e}. The file is truncated or corrupt; "
                             "download it again") from e
