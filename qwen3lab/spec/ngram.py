"""Prompt-lookup n-gram drafting: no extra model.

The last n tokens are looked up earlier in the sequence (prompt and output); the tokens that
followed the most recent earlier match are proposed. Strong when the answer copies from the
prompt (extraction, editing, code). Deterministic, so verification treats q as one-hot.
"""

from __future__ import annotations

import numpy as np

from ..engine.sequence import Sequence


class NgramDrafter:
    def __init__(self, num_tokens: int = 4, max_ngram: int = 4, min_ngram: int = 1):
        self.num_tokens, self.max_ngram, self.min_ngram = num_tokens, max_ngram, min_ngram

    def propose_one(self, tokens: list[int], k: int) -> list[int]:
        arr = np.asarray(tokens, dtype=np.int64)
        for n in range(min(self.max_ngram, len(arr) - 1), self.min_ngram - 1, -1):
            windows = np.lib.stride_tricks.sliding_window_view(arr[:-1], n)  # excludes the suffix itself
            hits = np.nonzero((windows == arr[-n:]).all(axis=1))[0]
            if len(hits):
                start = int(hits[-1]) + n  # the most recent match
                follow = arr[start: start + k].tolist()
                if follow:
                    return follow
        return []

    def propose(self, seqs: list[Sequence], budgets: list[int]) -> None:
        for seq, k in zip(seqs, budgets):
            seq.spec_tokens = self.propose_one(seq.all_token_ids, k)
            seq.spec_probs = None

    def on_verified(self, seq: Sequence, num_accepted: int) -> None:
        pass

    def release(self, seq: Sequence) -> None:
        pass
