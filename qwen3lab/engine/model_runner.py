"""Runs one scheduled step through the model: builds the padded batch, attention metadata and
cache writes, and returns the logits of every row that samples. Knows tensors, not requests.
"""

from __future__ import annotations

import torch

from ..model import AttentionBatch, CausalLM
from .kv_cache import KVCache
from .scheduler import ScheduledBatch


class ModelRunner:
    def __init__(self, model: CausalLM, num_slots: int, dtype: torch.dtype, device: torch.device | str = "cpu",
                 initial_capacity: int = 256):
        self.model, self.config = model, model.config
        self.device = torch.device(device)
        self.cache = KVCache(self.config, num_slots, initial_capacity, dtype, self.device)

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch) -> tuple[list[int], torch.Tensor]:
        """Feed each row's next tokens; return (rows that sample, their logits [R, vocab] float32)."""
        seqs, counts = batch.seqs, batch.num_new_tokens
        T = max(counts)
        starts = [s.num_computed for s in seqs]
        ids = torch.zeros(len(seqs), T, dtype=torch.long)
        for i, (s, n) in enumerate(zip(seqs, counts)):
            ids[i, :n] = torch.tensor(s.all_token_ids[starts[i]: starts[i] + n])
        # Padding continues each row's positions: its cache writes land past the row's length,
        # where they are masked now and overwritten later.
        positions = torch.tensor(starts).unsqueeze(1) + torch.arange(T).unsqueeze(0)
        kv_len = max(starts) + T
        self.cache.ensure_capacity(kv_len)
        slots = [s.slot for s in seqs]
        contiguous = slots == list(range(slots[0], slots[0] + len(slots)))
        attn = AttentionBatch.build(positions.to(self.device), self.config.layer_types, self.config.sliding_window,
                                    slot_ids=torch.tensor(slots, device=self.device), kv_len=kv_len,
                                    slot_range_start=slots[0] if contiguous else None)
        hidden = self.model(ids.to(self.device), attn, self.cache)
        rows = [i for i in range(len(seqs)) if batch.samples(i)]
        if not rows:
            return [], torch.empty(0)
        last = hidden[torch.tensor(rows, device=self.device), torch.tensor([counts[i] - 1 for i in rows], device=self.device)]
        return rows, self.model.compute_logits(last).cpu()
