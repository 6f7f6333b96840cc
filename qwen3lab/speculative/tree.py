"""Growing a draft token tree (EAGLE-2's dynamic tree), for drafters that score tokens with a model.

One ``DraftTree`` per sequence. The root's top-k tokens are the first level; each further step
feeds the k best newest candidates (by cumulative draft log-probability) to the draft together and
adds each one's top-k children. ``select`` keeps the best nodes up to a budget; a node never scores
above its parent, so the best nodes form a tree (ties are broken so that parents come first).
The drafter does the feeding: ``feed`` says which candidates to feed next, ``fed_parents`` the
tree they form in the draft's own cache (as ``TokenTree`` parents, slot order).
"""

from __future__ import annotations

from typing import Any

import torch


def tree_shape(num_tokens: int, topk: int, num_steps: int | None) -> tuple[int, int]:
    """Validated (topk, num_steps) of a model drafter: chains draft num_tokens steps, trees at most 4
    (each step's candidates share one forward; deeper steps rarely survive selection)."""
    if topk < 1:
        raise ValueError(f"speculative topk must be >= 1, got {topk}")
    steps = num_steps if num_steps is not None else (num_tokens if topk == 1 else min(num_tokens, 4))
    if steps < 1:
        raise ValueError(f"speculative num_steps must be >= 1, got {steps}")
    return topk, steps


class DraftTree:
    def __init__(self, topk: int):
        self.topk = topk
        self.tokens: list[int] = []
        self.parent: list[int] = []  # candidate index, -1: the root (the last real token)
        self.score: list[float] = []
        self.depth: list[int] = []
        self.source: list[Any] = []  # what the drafter needs to feed a candidate (EAGLE3: its hidden input)
        self.newest: list[int] = []
        self.fed: list[int] = []  # candidates fed to the draft, in slot order
        self._slot: dict[int, int] = {}

    def add_children(self, parent: int, logprobs: torch.Tensor, ids: torch.Tensor | None = None, source: Any = None):
        """The top-k tokens of one draft distribution (``logprobs`` [V]; ``ids`` maps its indices to
        target token ids) become children of ``parent``."""
        vals, idx = logprobs.topk(self.topk)
        if ids is not None:
            idx = ids[idx]
        base, d = (self.score[parent], self.depth[parent]) if parent >= 0 else (0.0, 0)
        for v, t in zip(vals.tolist(), idx.tolist()):
            self.newest.append(len(self.tokens))
            self.tokens.append(t)
            self.parent.append(parent)
            self.score.append(base + v)
            self.depth.append(d + 1)
            self.source.append(source)

    def feed(self) -> list[int]:
        """The candidates to feed next (the k best of the newest level), registered as fed."""
        chosen = sorted(self.newest, key=lambda c: -self.score[c])[: self.topk]
        self.newest = []
        for c in chosen:
            self._slot[c] = len(self.fed)
            self.fed.append(c)
        return chosen

    def fed_parents(self) -> tuple[int, ...]:
        """Parents of the fed candidates by fed slot (-1: the root), for ``TokenTree``."""
        return tuple(self._slot[self.parent[c]] if self.parent[c] >= 0 else -1 for c in self.fed)

    def select(self, budget: int) -> tuple[list[int], list[int]]:
        """The best ``budget`` nodes as (tokens, parents), parents first (by depth)."""
        chosen, taken = [], set()
        for c in sorted(range(len(self.tokens)), key=lambda c: (-self.score[c], self.depth[c])):
            if len(chosen) == budget:
                break
            if self.parent[c] < 0 or self.parent[c] in taken:
                chosen.append(c)
                taken.add(c)
        chosen.sort(key=lambda c: (self.depth[c], -self.score[c]))
        index = {c: i for i, c in enumerate(chosen)}
        return [self.tokens[c] for c in chosen], [index[self.parent[c]] if self.parent[c] >= 0 else -1 for c in chosen]


class SlotView:
    """A drafter's per-sequence state seen ``num_computed`` slots in, sharing its block table: what a
    chain step or a tree level is fed at, past the computed count, so its keys are never kept."""

    def __init__(self, state: Any, num_computed: int):
        self.state, self.num_computed = state, num_computed

    @property
    def block_table(self) -> list[int]:
        return self.state.block_table

    @block_table.setter
    def block_table(self, value: list[int]) -> None:
        self.state.block_table = value


def draft_pool(config, dtype, device, block_size: int, kv_cache_memory_gb: float, max_num_seqs: int,
               max_model_len: int, num_tokens: int, topk: int, num_steps: int):
    """A drafter's own paged KV pool and block manager, sized for every sequence plus its deepest draft;
    finished sequences' blocks go back to the OS."""
    from ..engine.block_manager import BlockManager
    from ..engine.kv_cache import PagedKVCache, pool_num_blocks

    num_blocks = pool_num_blocks(config, block_size, dtype, kv_cache_memory_gb, max_num_seqs,
                                 max_model_len + max(num_tokens, topk * num_steps))
    cache = PagedKVCache(config, num_blocks, block_size, dtype, device)
    blocks = BlockManager(num_blocks, block_size, enable_prefix_caching=False)
    blocks.on_discard = cache.discard
    return cache, blocks
