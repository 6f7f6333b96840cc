"""Training checkpoints: weights (a PEFT adapter or full safetensors), optimizer, scheduler, RNG, step.

Layout of ``<out>/checkpoint-<step>/``: ``adapter_config.json`` + ``adapter_model.safetensors`` (LoRA)
or ``model.safetensors`` (+ the base folder's config/tokenizer files when it has them), and
``trainer_state.pt`` with the optimizer and scheduler state, the step, and every rank's RNG states.
Rank 0 writes; the RNG states of all ranks are gathered to it first. Data position is the step:
batches are a pure function of (seed, step).
"""

from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from ..lora import lora_layers, save_adapter
from ..lora.peft_io import load_adapter_weights
from ..model.packed import pack_state, unpack_state
from . import distributed as dist

_BASE_FILES = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
               "special_tokens_map.json", "chat_template.jinja")


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_weights(model: nn.Module, folder: Path, base_path: Path | None) -> None:
    if lora_layers(model):
        save_adapter(model, folder, str(base_path) if base_path else None)
        return
    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous().cpu() for k, v in unpack_state(model, model.state_dict()).items()
             if "rotary_emb" not in k}  # under Hugging Face names: packed projections split into their parts
    if model.config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})
    if base_path is not None and base_path.is_dir():
        for name in _BASE_FILES:
            if (base_path / name).exists():
                shutil.copy(base_path / name, folder / name)


def save_checkpoint(folder: Path, model: nn.Module, optimizer, scheduler, step: int, base_path: Path | None,
                    extra: dict | None = None) -> None:
    rngs = dist.gather_objects(rng_state())  # every rank must take part
    if dist.rank() == 0:
        tmp = folder.with_name(folder.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        save_weights(model, tmp, base_path)
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                    "rng": rngs, "extra": extra or {}}, tmp / "trainer_state.pt")
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # a crash mid-save never leaves a half-written checkpoint under the real name
    dist.barrier()


def load_checkpoint_state(folder: str | Path, model: nn.Module, optimizer, scheduler) -> dict:
    """Restore weights, optimizer, scheduler and this rank's RNG; return the trainer state."""
    folder = Path(folder)
    if not (folder / "trainer_state.pt").exists():
        raise FileNotFoundError(f"{folder}/trainer_state.pt not found: not a training checkpoint folder")
    state = torch.load(folder / "trainer_state.pt", weights_only=False)
    if lora_layers(model):
        load_adapter_weights(model, folder / "adapter_model.safetensors")
    else:
        tensors = pack_state(model, load_file(str(folder / "model.safetensors")))
        missing, unexpected = model.load_state_dict(tensors, strict=False)
        bad = [k for k in missing if "rotary_emb" not in k and not k.startswith("lm_head")]
        if bad or unexpected:
            raise ValueError(f"{folder}: weights do not match the model (missing {bad[:3]}, unexpected {unexpected[:3]})")
        model.tie_weights()
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    if len(rngs) != dist.world_size():
        raise ValueError(f"{folder} was saved by {len(rngs)} process(es); resume with the same number "
                         f"(got {dist.world_size()}) for an exact continuation")
    set_rng_state(rngs[dist.rank()])
    return state
