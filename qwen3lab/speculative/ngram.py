"""Prompt-lookup n-gram drafting: no extra model.

The last n tokens are looked up earlier in the sequence (prompt and output); the tokens that
followed the most recent earlier match are proposed. Strong when the answer copies from the
prompt (extraction, editing, code). Deterministic, so verification treats q as one-hot.

With ``topk`` > 1 the continuations of every earlier match are merged into a token tree (a trie,
as SGLang's n-gram speculator does): a node's children are the different tokens that followed
its path, at most ``topk`` of them, and the ``num_tokens`` nodes kept are those the most matches
agree on (then the most recent). Text that repeated with variations keeps every variant in play.
"""

from __future__ import annotations

import numpy as np

from ..engine.sequence import Sequence, SpecDraft


class NgramDrafter:
    hidden_layers: tuple[int, ...] = ()  # drafts from tokens alone

    def __init__(self, num_tokens: int = 4, max_ngram: int = 4, min_ngram: int = 1, topk: int = 1):
        if topk < 1:
            raise ValueError(f"speculative topk must be >= 1, got {topk}")
        self.num_tokens, self.max_ngram, self.min_ngram, self.topk = num_tokens, max_ngram, min_ngram, topk

    def _matches(self, tokens: list[int], k: int) -> list[list[int]]:
        """Continuations (up to k tokens) of the earlier matches of the longest matching suffix, most recent first."""
        arr = np.asarray(tokens, dtype=np.int64)
        for n in range(min(self.max_ngram, len(arr) - 1), self.min_ngram - 1, -1):
            windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)  # excludes the suffix itself
            hits = np.nonzero((windows == arr[-n:]).all(axis=1))[0]
            follows = [arr[h + n: h + n + k].tolist() for h in hits[::-1]]
            follows = [f for f in follows if f]
            if follows:
                return follows
        return []

    def propose_one(self, tokens: list[int], k: int) -> list[int]:
        follows = self._matches(tokens, k)
        return follows[0] if follows else []

    def propose_tree(self, tokens: list[int], k: int) -> tuple[list[int], list[int]]:
        """(draft tokens, parent of each: -1 for the last real token), parents before children."""
        toks, parent, count, rank, depth = [], [], [], [], []
        child: dict[tuple[int, int], int] = {}
        for r, follow in enumerate(self._matches(tokens, k)):
            node = -1
            for t in follow:
                c = child.get((node, t))
                if c is None:
                    c = child[(node, t)] = len(toks)
                    toks.append(t)
                    parent.append(node)
                    count.append(0)
                    rank.append(r)
                    depth.append(depth[node] + 1 if node >= 0 else 1)
                count[c] += 1
                node = c
        # Most-agreed nodes first (a node's count is at least its children's, so parents come first).
        chosen, kids = [], {}
        for c in sorted(range(len(toks)), key=lambda c: (-count[c], rank[c], depth[c])):
            if len(chosen) == k:
                break
            p = parent[c]
            if (p < 0 or p in kids) and len(kids.setdefault(p, [])) < self.topk:
                kids[p].append(c)
                kids[c] = []
                chosen.append(c)
        chosen.sort(key=lambda c: (depth[c], -count[c], rank[c]))
        index = {c: i for i, c in enumerate(chosen)}
        return [toks[c] for c in chosen], [index[parent[c]] if parent[c] >= 0 else -1 for c in chosen]

    def propose(self, seqs: list[Sequence], budgets: list[int]) -> None:
        for seq, k in zip(seqs, budgets):
            if self.topk == 1:
                seq.draft = SpecDraft(self.propose_one(seq.all_token_ids, k))
                continue
            tokens, parents = self.propose_tree(seq.all_token_ids, k)
            # A tree without branches is a chain: the plain path, no tree masks.
            seq.draft = SpecDraft(tokens, None, None if parents == list(range(-1, len(parents) - 1)) else parents)

    def observe(self, seqs, num_new_tokens, starts, hidden) -> None:
        pass

    def on_verified(self, seq: Sequence, num_accepted: int, path: list[int] | None = None) -> None:
        pass

    def release(self, seq: Sequence) -> None:
        pass
