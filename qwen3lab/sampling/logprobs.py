"""Per-token logprob entries: ``{token_id: logprob}`` with the chosen token first, then the top k.

One rule for plain sampling and speculative verification alike: log-probabilities of the raw model
distribution (vLLM's default), before penalties and warpers.
"""

from __future__ import annotations

import torch


def logprob_entry(logprobs: torch.Tensor, token: int, k: int) -> dict[int, float]:
    """``logprobs``: one row [vocab] of log_softmax; ``k``: how many top tokens to add (0: none)."""
    entry = {token: float(logprobs[token])}
    if k:
        vals, ids = logprobs.topk(k)
        for t, v in zip(ids.tolist(), vals.tolist()):
            entry.setdefault(t, v)
    return entry
