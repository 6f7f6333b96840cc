"""Several LoRA adapters served at once from one base model, chosen per request (as vLLM's multi-LoRA).

Each adapter gets a slot (0 is the base model). Every adapted projection becomes a ``MultiLoRALinear``
holding all adapters' A and B stacked by slot; the model runner tells the shared ``AdapterBank``
which slot each token of the step belongs to, and each layer adds, per slot present,
``scaling * B[slot] @ A[slot] @ x`` to the base output of that slot's tokens. Tokens of the base
model cost nothing extra, and a batch may mix adapters freely.

Packed projections stay packed: for ``qkv_proj`` the parts' A matrices are stacked
([A_q; A_k; A_v], rank 3r) and B is block-diagonal, so one low-rank product gives every part its own
adapter's update exactly (the zero blocks add exact zeros). Adapters of different ranks are padded
with zeros to the largest, and a projection an adapter does not target gets zeros, so every slot
has the same shapes. The base layer may be anything callable (bf16 kernel, int8, int4).
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..model.packed import PACKED_MODULES
from .peft_io import PREFIX, WEIGHTS_FILE, read_adapter_config, read_adapter_tensors



class AdapterBank:
    """Adapter names by slot and, during a model step, which tokens belong to which slot."""

    def __init__(self, names: list[str], paths: list[str]):
        self.names, self.paths = list(names), list(paths)
        self.segments: list[tuple[int, torch.Tensor | None]] = []  # (slot, token rows or None = all rows)

    def slot(self, name: str) -> int:
        try:
            return self.names.index(name) + 1
        except ValueError:
            raise ValueError(f"no LoRA adapter named {name!r} is loaded; loaded: {', '.join(self.names)}") from None

    @contextmanager
    def active(self, slots: list[int], device):
        """Run the model with token i under adapter ``slots[i]`` (0 = base model) inside the block; the
        model is the base model again after it, whatever happens."""
        used = sorted(set(slots) - {0})
        if len(used) == 1 and slots.count(used[0]) == len(slots):
            self.segments = [(used[0], None)]
        else:
            self.segments = [(s, torch.tensor([i for i, t in enumerate(slots) if t == s], device=device))
                             for s in used]
        try:
            yield
        finally:
            self.segments = []


class MultiLoRALinear(nn.Module):
    """A base projection plus per-slot LoRA updates; ``parts`` are the output widths of packed projections."""

    def __init__(self, base: nn.Module, bank: AdapterBank, parts: tuple[int, ...], rank: int):
        super().__init__()
        self.base, self.bank, self.parts, self.rank = base, bank, parts, rank
        n, in_f, out_f = len(bank.names), base.in_features, sum(parts)
        w = base.weight
        # Row s - 1 holds slot s (slot 0, the base model, has none). float32 like LoRALinear's own
        # weights, so a served adapter computes what LLM(lora=...) does.
        self.register_buffer("lora_A", torch.zeros(n, rank * len(parts), in_f, device=w.device))
        self.register_buffer("lora_B", torch.zeros(n, out_f, rank * len(parts), device=w.device))
        self.scaling = [0.0] * n

    @property
    def in_features(self) -> int:
        return self.base.in_features

    @property
    def out_features(self) -> int:
        return sum(self.parts)

    @property
    def weight(self) -> torch.Tensor:
        return self.base.weight

    @torch.no_grad()
    def set_part(self, slot: int, part: int, a: torch.Tensor, b: torch.Tensor, scaling: float) -> None:
        r, lo, i = a.shape[0], sum(self.parts[:part]), slot - 1
        self.lora_A[i, part * self.rank: part * self.rank + r] = a
        self.lora_B[i, lo: lo + self.parts[part], part * self.rank: part * self.rank + r] = b
        self.scaling[i] = scaling

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.base(x)
        for slot, rows in self.bank.segments:
            xs = x if rows is None else x.index_select(0, rows)
            i = slot - 1
            delta = (xs.to(torch.float32) @ self.lora_A[i].T) @ self.lora_B[i].T
            if rows is None:
                y = y.add(delta.to(y.dtype), alpha=self.scaling[i])
            else:
                y = y.index_add(0, rows, delta.to(y.dtype), alpha=self.scaling[i])
        return y


def _read(folder: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    cfg = read_adapter_config(folder)
    path = folder / WEIGHTS_FILE
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: a LoRA adapter folder needs {WEIGHTS_FILE}")
    return cfg, read_adapter_tensors(path)


def _locate(modules: dict[str, nn.Module], name: str) -> tuple[str, int] | None:
    """(module name to wrap, part index) for a Hugging Face projection name, packed or not.

    Only decoder-layer projections: the head runs after the step's adapter rows are cleared (as in
    ``apply_lora``, which never wraps ``lm_head`` or embeddings)."""
    if not name.startswith("model.layers."):
        return None
    if name in modules and hasattr(modules[name], "in_features"):
        return name, 0
    parent, _, proj = name.rpartition(".")
    for fused, parts in PACKED_MODULES.items():
        if proj in parts and f"{parent}.{fused}" in modules:
            return f"{parent}.{fused}", parts.index(proj)
    return None


def _part_sizes(model: nn.Module, target: str) -> tuple[int, ...]:
    module = model.get_submodule(target)
    return tuple(getattr(module, "output_sizes", (module.out_features,)))


def apply_adapters(model: nn.Module, adapters: dict[str, str | Path]) -> AdapterBank:
    """Load PEFT-format adapter folders (name -> folder) into slots 1..n of an inference model, in place.

    Raises a ValueError naming the adapter file and key when a tensor fits no projection of this model.
    """
    if not adapters:
        raise ValueError("apply_adapters needs at least one name -> adapter folder")
    loaded = []
    for name, folder in adapters.items():
        cfg, tensors = _read(Path(folder))
        loaded.append((name, Path(folder), cfg, tensors))
    rank = max(int(cfg["r"]) for _, _, cfg, _ in loaded)
    bank = AdapterBank([n for n, *_ in loaded], [str(p) for _, p, *_ in loaded])
    # Where each adapter's tensors go: {module to wrap: [(slot, part, A, B, scaling)]}.
    plan: dict[str, list] = {}
    modules = dict(model.named_modules())
    for slot, (name, folder, cfg, tensors) in enumerate(loaded, start=1):
        scaling = float(cfg["lora_alpha"]) / float(cfg["r"])
        for key in sorted(tensors):
            if not key.endswith(".lora_A.weight"):
                if not key.endswith(".lora_B.weight"):
                    raise ValueError(f"{folder / WEIGHTS_FILE}: unexpected tensor {key} (plain LoRA A/B only)")
                continue
            proj = key[len(PREFIX): -len(".lora_A.weight")] if key.startswith(PREFIX) else None
            b_key = key.replace(".lora_A.", ".lora_B.")
            where = _locate(modules, proj) if proj else None
            if where is None or b_key not in tensors:
                raise ValueError(f"{folder / WEIGHTS_FILE}: {key} does not match a projection of this model "
                                 f"(or lacks its lora_B): is the adapter for this base model?")
            plan.setdefault(where[0], []).append((slot, where[1], tensors[key], tensors[b_key], scaling, key, folder))
    for target, entries in plan.items():
        base = model.get_submodule(target)
        layer = MultiLoRALinear(base, bank, _part_sizes(model, target), rank)
        for slot, part, a, b, scaling, key, folder in entries:
            want_a, want_b = (a.shape[0], layer.in_features), (layer.parts[part], a.shape[0])
            if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
                raise ValueError(f"{folder / WEIGHTS_FILE}: {key} and its lora_B have shapes {tuple(a.shape)} and "
                                 f"{tuple(b.shape)}, expected {want_a} and {want_b} for this model")
            layer.set_part(slot, part, a.float(), b.float(), scaling)
        parent, _, attr = target.rpartition(".")
        setattr(model.get_submodule(parent), attr, layer)
    model.lora_bank = bank
    return bank
