"""Per-step attention metadata for a flat batch of tokens from many sequences.

The model sees one flat token list (no padding): sequence i owns tokens
``[starts[i], starts[i] + new_lens[i])`` at positions ``context_lens[i] - new_lens[i] ...``. With a
paged cache, ``slot_mapping`` says where each token's keys go and ``gather`` rows say where each
sequence's keys are read from. Rows with the same number of new tokens (all decodes; verification
rows of equal width; equal prefill chunks) are attended in one call, keys padded to the longest
context and masked. Masks are built once per step and shared by every layer of the same type.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class RowGroup:
    """Sequences attended together: queries [G, T], keys [G, S]."""

    rows: list[int]
    new_len: int  # T, the same for every row of the group
    key_len: int  # S
    gather: torch.Tensor | None  # [G, S] flat cache indices, None without a cache
    masks: dict[str, torch.Tensor | None]  # layer type -> bool [G, 1, T, S]; None: plain causal
    context_lens: torch.Tensor | None = None  # [G] keys each row attends to (its context length)
    token_index: torch.Tensor | None = None  # [G, T] positions of the group's tokens in the flat batch
    covers_all: bool = False  # the group is the whole batch in order: views instead of gathers
    _per_token: tuple[torch.Tensor, torch.Tensor] | None = field(default=None, repr=False)

    def per_token(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(gather [G*T, S], context lengths [G*T]): each new token as its own one-query row, so that a
        row of T tokens (speculative verification) is attended exactly as T decode steps would be."""
        if self._per_token is None:
            T = self.new_len
            ctx = self.context_lens.repeat_interleave(T) - (T - 1) + torch.arange(T).repeat(len(self.rows))
            self._per_token = (self.gather.repeat_interleave(T, dim=0), ctx)
        return self._per_token


@dataclass
class AttentionMetadata:
    positions: torch.Tensor  # [N]
    starts: list[int]
    new_lens: list[int]
    context_lens: list[int]
    slot_mapping: torch.Tensor | None = None  # [N]
    groups: list[RowGroup] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return int(self.positions.shape[0])

    @classmethod
    def build(cls, new_lens: list[int], context_lens: list[int], layer_types: tuple[str, ...],
              sliding_window: int | None, block_tables: list[list[int]] | None = None, block_size: int = 16,
              device: torch.device | str = "cpu") -> "AttentionMetadata":
        """``block_tables`` None means no cache: each sequence attends to its own new tokens only."""
        starts, pos = [], []
        offset = 0
        for n, ctx in zip(new_lens, context_lens):
            starts.append(offset)
            offset += n
            pos.append(torch.arange(ctx - n, ctx))
        positions = torch.cat(pos).to(device)
        slot_mapping = None
        if block_tables is not None:
            slot_mapping = torch.cat([_flat_index(bt, p, block_size) for bt, p in zip(block_tables, pos)]).to(device)
        meta = cls(positions, starts, list(new_lens), list(context_lens), slot_mapping)
        kinds = set(layer_types)
        # Same-length rows share one call; one-token rows (decodes) are the common large group.
        by_len: dict[int, list[int]] = {}
        for i, n in enumerate(new_lens):
            by_len.setdefault(n, []).append(i)
        for n, group in by_len.items():
            g = _group(group, n, [context_lens[r] for r in group], kinds, sliding_window,
                       [block_tables[r] for r in group] if block_tables is not None else None,
                       block_size, device)
            g.token_index = (torch.tensor([starts[r] for r in group]).unsqueeze(1) + torch.arange(n)).to(device)
            g.covers_all = group == list(range(len(new_lens))) and all(x == n for x in new_lens)
            meta.groups.append(g)
        return meta


def _flat_index(block_table: list[int], positions: torch.Tensor, block_size: int) -> torch.Tensor:
    bt = torch.tensor(block_table, dtype=torch.long)
    return bt[positions // block_size] * block_size + positions % block_size


def _group(rows, n, ctx_lens, kinds, window, block_tables, block_size, device) -> RowGroup:
    cached = block_tables is not None
    S = max(ctx_lens) if cached else n
    gather = None
    if cached:
        keys = torch.arange(S)
        gather = torch.stack([
            _flat_index(bt, keys.clamp(max=ctx - 1), block_size) for bt, ctx in zip(block_tables, ctx_lens)
        ]).to(device)
    q = torch.stack([torch.arange(ctx - n, ctx) if cached else torch.arange(n) for ctx in ctx_lens]).unsqueeze(-1)
    k = torch.arange(S).view(1, 1, S)
    causal = k <= q  # [G, T, S]; also hides keys past a shorter row's context
    masks: dict[str, torch.Tensor | None] = {}
    # Queries and keys both start at position 0 in every row: SDPA's own causal path, no mask tensor.
    plain = not cached or all(ctx == n for ctx in ctx_lens)
    masks["full_attention"] = None if plain else causal.unsqueeze(1).to(device)
    if "sliding_attention" in kinds:
        masks["sliding_attention"] = (causal & (k > q - window)).unsqueeze(1).to(device)
    return RowGroup(rows, n, S, gather, masks, context_lens=torch.tensor(ctx_lens))
