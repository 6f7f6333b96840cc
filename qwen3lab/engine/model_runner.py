"""Runs one scheduled step through the model: flat tokens, attention metadata over the paged
cache, and a ``StepOutput`` with the logits of the rows that pick a next token (and any captured
hidden layers). Knows tensors, not requests.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Iterator

import torch

from .. import kernels
from ..model import AttentionMetadata, CausalLM, TokenTree
from ..sampling.logprobs import logprob_entry
from .kv_cache import PagedKVCache
from .scheduler import ScheduledBatch

PROMPT_LOGPROB_ROWS = 64  # prompt rows scored per head product: [64, vocab] float32 is 39 MB for Qwen3


@dataclass
class StepOutput:
    """What one model step hands the engine."""

    rows: list[int]  # batch rows that sample (they reached the end of their known tokens)
    logits: torch.Tensor  # [sum(widths), vocab] float32, the rows' positions in order
    widths: list[int]  # per sampling row: 1, or 1 + its draft tokens (every one needs logits to verify)
    hidden: list[torch.Tensor] = field(default_factory=list)  # captured layers, [fed tokens, hidden] each
    hidden_starts: list[int] = field(default_factory=list)  # row of each batch row's first token in those
    # Batch rows that score their prompt: (first prompt position scored, one logprob entry per position).
    prompt_logprobs: dict[int, tuple[int, list[dict[int, float]]]] = field(default_factory=dict)

    def row_logits(self) -> Iterator[tuple[int, torch.Tensor]]:
        """(batch row, its logits [width, vocab]) for every sampling row."""
        offset = 0
        for i, m in zip(self.rows, self.widths):
            yield i, self.logits[offset: offset + m]
            offset += m


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
        trees = [TokenTree(s.num_tokens, s.draft.tree) if s.draft.tree is not None else None for s in batch.seqs]
        prompt_lens = [s.num_prompt_tokens for s in batch.seqs] if self.config.full_attention_decode else None
        trees = trees if any(t is not None for t in trees) else None
        ctx = [s.num_computed + n for s, n in zip(batch.seqs, batch.num_new_tokens)]
        meta = self.metadata(batch.num_new_tokens, ctx, batch.seqs, trees, prompt_lens)
        if self.config.rope.long_only and any(s.long_rope for s in batch.seqs):
            meta.long_rope = torch.tensor([s.long_rope for s, n in zip(batch.seqs, batch.num_new_tokens)
                                           for _ in range(n)], device=self.device)
        return torch.tensor(ids, device=self.device), meta

    def metadata(self, new_lens: list[int], context_lens: list[int], seqs, trees=None, prompt_lens=None
                 ) -> AttentionMetadata:
        """Attention metadata over the sequences' block tables; with a pool of the sliding layers' own,
        a twin over their sliding tables (each built with its layers' masks only)."""
        cfg, bs = self.config, self.cache.block_size
        split = self.cache.sliding_blocks is not None

        def build(types, tables):
            return AttentionMetadata.build(new_lens, context_lens, types, cfg.sliding_window, block_tables=tables,
                                           block_size=bs, device=self.device, trees=trees,
                                           sink_tokens=cfg.sink_tokens, prompt_lens=prompt_lens)

        if not split:
            return build(cfg.layer_types, [s.block_table for s in seqs])
        meta = build(("full_attention",), [s.block_table for s in seqs])
        meta.sliding = build(("sliding_attention",), [s.sliding_table for s in seqs])
        return meta

    @torch.inference_mode()
    def run(self, batch: ScheduledBatch, capture_layers: tuple[int, ...] = ()) -> StepOutput:
        """Feed each row's new tokens; ``capture_layers``: also keep these layers' outputs for every
        fed token (for drafters like EAGLE3)."""
        ids, meta = self.prepare(batch)
        adapters = nullcontext() if self.lora_bank is None else self.lora_bank.active(
            [s.lora_slot for s, n in zip(batch.seqs, batch.num_new_tokens) for _ in range(n)], self.device)
        captured: list[torch.Tensor] = []
        with adapters:  # the head below is never adapted
            if capture_layers:
                hidden, captured = self.model(ids, meta, self.cache, output_hidden_layers=capture_layers)
            else:
                hidden = self.model(ids, meta, self.cache)
        if self.device.type == "cpu" and ids.numel() > kernels.MAX_ROWS:  # prefill-sized
            kernels.release_transients()
        starts = meta.starts if capture_layers else []
        scored = self._prompt_logprobs(batch, meta.starts, hidden)
        rows = [i for i in range(len(batch.seqs)) if batch.samples(i)]
        if not rows:
            return StepOutput([], torch.empty(0), [], captured, starts, scored)
        widths = [1 + len(batch.seqs[i].draft.tokens) for i in rows]
        index = [meta.starts[i] + batch.num_new_tokens[i] - m + j for i, m in zip(rows, widths) for j in range(m)]
        logits = self.model.compute_logits(hidden[torch.tensor(index, device=self.device)]).cpu()
        return StepOutput(rows, logits, widths, captured, starts, scored)

    def _prompt_logprobs(self, batch: ScheduledBatch, starts: list[int], hidden: torch.Tensor
                         ) -> dict[int, tuple[int, list[dict[int, float]]]]:
        """For sequences with ``prompt_logprobs``: the log-probability of each fed prompt token's successor
        (and the top k), a slice of rows at a time so that [rows, vocab] stays small."""
        out = {}
        for i, (s, n) in enumerate(zip(batch.seqs, batch.num_new_tokens)):
            k = s.params.prompt_logprobs
            prompt = s.prompt_token_ids
            first, last = s.num_computed, min(s.num_computed + n, len(prompt) - 1)  # positions p -> token p + 1
            if k is None or first >= last:
                continue
            entries = []
            for p0 in range(first, last, PROMPT_LOGPROB_ROWS):
                p1 = min(p0 + PROMPT_LOGPROB_ROWS, last)
                rows = hidden[starts[i] + p0 - first: starts[i] + p1 - first]
                lps = self.model.compute_logits(rows).log_softmax(-1).cpu()
                entries.extend(logprob_entry(lps[j], prompt[p0 + j + 1], k) for j in range(p1 - p0))
            out[i] = (first + 1, entries)
        return out
