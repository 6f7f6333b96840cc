"""Runs one scheduled step through the model: flat tokens, attention metadata over the paged
cache, and the logits of the rows that pick a next token. Knows tensors, not requests.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch

from .. import kernels
from ..model import AttentionMetadata, CausalLM, TokenTree
from .kv_cache import PagedKVCache
from .scheduler import ScheduledBatch


class ModelRunner:
    def __init__(self, model: CausalLM, cache: PagedKVCache, device: torch.device | str = "cpu"):
        self.model, self.config, self.cache = model, model.config, cache
        self.device = torch.device(device)
        self.lora_bank = getattr(model, "lora_bank", None)  # multi-LoRA serving (qwen3lab/lora/multi.py)

    def prepare(self, batch: ScheduledBatch) -> tuple[torch.Tensor, AttentionMetadata]:
        ids: list[int] = []
        for s, n in zip(batch.seqs, batch.num_new_tokens):
            ids.extend(s.feed_token_ids[s.num_computed: s.num_computed + n])
        # Draft trees sit after the sequence's real tokens (the first of their parents is the last real token).
        trees = [TokenTree(s.num_tokens, tuple(s.spec_parents)) if s.spec_parents is not None and s.spec_tokens
                 else None for s in batch.seqs]
        meta = AttentionMetadata.build(
            batch.num_new_tokens, [s.num_computed + n for s, n in zip(batch.seqs, batch.num_new_tokens)],
            self.config.layer_types, self.config.sliding_window,
            block_tables=[s.block_table for s in batch.seqs], block_size=self.cache.block_size, device=self.device,
            trees=trees if any(t is not None for t in trees) else None)
        return torch.tensor(ids, device=self.device), meta

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, capture_layers: tuple[int, ...] = ()
            ) -> tuple[list[int], torch.Tensor, list[int]]:
        """Feed each row's new tokens.

        Returns (rows that sample, their logits [sum(m), vocab] float32, m per row): m is 1, or
        1 + the number of draft tokens, whose positions all need logits for verification.
        ``capture_layers``: outputs of these layers for every fed token are kept in
        ``self.captured`` ([N, hidden] each, rows at ``self.last_starts``) for drafters like EAGLE3.
        """
        ids, meta = self.prepare(batch)
        adapters = nullcontext() if self.lora_bank is None else self.lora_bank.active(
            [s.lora_slot for s, n in zip(batch.seqs, batch.num_new_tokens) for _ in range(n)], self.device)
        with adapters:  # the head below is never adapted
            if capture_layers:
                hidden, self.captured = self.model(ids, meta, self.cache, output_hidden_layers=capture_layers)
                self.last_starts = meta.starts
            else:
                hidden = self.model(ids, meta, self.cache)
        if self.device.type == "cpu" and ids.numel() > kernels.MAX_ROWS:  # prefill-sized
            kernels.release_transients()
        rows = [i for i in range(len(batch.seqs)) if batch.samples(i)]
        if not rows:
            return [], torch.empty(0), []
        widths = [1 + len(batch.seqs[i].spec_tokens) for i in rows]
        index = [meta.starts[i] + batch.num_new_tokens[i] - m + j for i, m in zip(rows, widths) for j in range(m)]
        logits = self.model.compute_logits(hidden[torch.tensor(index, device=self.device)]).cpu()
        return rows, logits, widths
