"""The engine's side of speculative decoding: draft budgets, acceptance, the accepted tree path's keys.

Owns: how many drafts each decoding sequence may get, running ``verify`` / ``verify_tree`` on one
row's logits, and moving an accepted tree path's keys next to the sequence. Leaves out: drafting
(``qwen3lab.speculative``) and appending the accepted tokens (the engine).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model.attention_metadata import flat_index
from ..speculative import verify, verify_tree
from .kv_cache import PagedKVCache
from .sequence import Sequence


@dataclass
class Acceptance:
    tokens: list[int]  # accepted drafts, then one token of the target's
    num_accepted: int  # drafts among them
    path: list[int] | None  # accepted tree nodes; None for a chain
    logits: torch.Tensor  # the target's logits row of each token (for logprobs)


def draft_budgets(running: list[Sequence], num_tokens: int, max_model_len: int) -> tuple[list[Sequence], list[int]]:
    """Decoding sequences that may take drafts and how many each, within its token and context budget."""
    seqs, budgets = [], []
    for s in running:
        if s.in_prefill or s.constraint is not None:
            continue
        k = min(num_tokens, s.max_tokens - len(s.output_token_ids) - 1, max_model_len - s.num_tokens - 1)
        if k > 0:
            seqs.append(s)
            budgets.append(k)
    return seqs, budgets


def accept(seq: Sequence, logits: torch.Tensor, banned: list[int] | None) -> Acceptance:
    """Verify ``seq.draft`` against ``logits`` [1 + drafts, vocab] (the last real token's row first)."""
    d, p = seq.draft, seq.params
    if d.parents is None:
        tokens, n = verify(logits, d.tokens, d.probs, p, seq.prompt_token_ids, seq.output_token_ids,
                           seq.generator, banned, p.min_tokens)
        return Acceptance(tokens, n, None, logits)
    tokens, path = verify_tree(logits, d.tokens, d.parents, p, seq.prompt_token_ids, seq.output_token_ids,
                               seq.generator, banned, p.min_tokens)
    # Logits rows follow the tree's node order; give logprobs the path's rows.
    return Acceptance(tokens, len(path), path, logits[torch.tensor([0] + [j + 1 for j in path])])


def move_path(cache: PagedKVCache, seq: Sequence, prefix: int, path: list[int] | None) -> None:
    """An accepted tree path's keys go to the slots right after the ``prefix`` tokens it now extends."""
    moved = [(prefix + j, prefix + i) for i, j in enumerate(path or []) if i != j]
    if moved:
        device = cache.k[0].device
        tables = [seq.block_table] + ([seq.sliding_table] if cache.sliding_blocks is not None else [])
        for group, table in enumerate(tables):
            src, dst = (flat_index(table, torch.tensor(x), cache.block_size).to(device) for x in zip(*moved))
            cache.move(src, dst, group)
