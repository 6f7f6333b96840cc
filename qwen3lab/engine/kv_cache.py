"""Slot-based KV cache: one preallocated row of keys and values per running sequence.

Owns storage only: ``update`` writes a step's keys/values at their positions and returns what the
attention must read. Which sequence holds which slot, and how long each is, is the scheduler's
business; rollback (speculation) is just the scheduler lowering a length, since positions beyond a
sequence's length are masked and later overwritten.
"""

from __future__ import annotations

import torch

from ..config import ModelConfig


class KVCache:
    def __init__(self, config: ModelConfig, num_slots: int, capacity: int, dtype: torch.dtype,
                 device: torch.device | str = "cpu"):
        self.num_layers = config.num_hidden_layers
        self.num_slots, self.dtype, self.device = num_slots, dtype, torch.device(device)
        self.shape_tail = (config.num_key_value_heads, config.head_dim)
        self.capacity = 0
        self.k: list[torch.Tensor] = []
        self.v: list[torch.Tensor] = []
        self.ensure_capacity(capacity)

    def _alloc(self, capacity: int) -> torch.Tensor:
        # Zeros, not empty: masked keys still enter the matmul, and 0 * NaN garbage would be NaN.
        kvh, d = self.shape_tail
        return torch.zeros(self.num_slots, kvh, capacity, d, dtype=self.dtype, device=self.device)

    def ensure_capacity(self, capacity: int) -> None:
        """Grow every layer to hold ``capacity`` positions per slot (at least doubling, to amortise)."""
        if capacity <= self.capacity:
            return
        new_cap = max(capacity, 2 * self.capacity)
        for store in (self.k, self.v):
            for i in range(self.num_layers):
                new = self._alloc(new_cap)
                if i < len(store):
                    new[:, :, : self.capacity] = store[i]
                    store[i] = new
                else:
                    store.append(new)
        self.capacity = new_cap

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k + self.v)

    def update(self, layer: int, batch, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """k, v: [B, T, kvh, d] at ``batch.positions`` -> cached keys/values [B, kvh, kv_len, d]."""
        kc, vc = self.k[layer], self.v[layer]
        slots, pos = batch.slot_ids, batch.positions
        # Advanced indices on dims 0 and 2 around a slice: the indexed view is [B, T, kvh, d].
        kc[slots[:, None], :, pos] = k
        vc[slots[:, None], :, pos] = v
        start = batch.slot_range_start
        if start is not None:  # slots form a contiguous range: read a view, no gather copy
            return kc[start: start + len(slots), :, : batch.kv_len], vc[start: start + len(slots), :, : batch.kv_len]
        return kc[slots, :, : batch.kv_len], vc[slots, :, : batch.kv_len]
