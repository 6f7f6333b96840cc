"""Turn a batch of next-token logits into tokens: penalties, temperature, top-k, top-p, min-p.

Pure functions over tensors; each row carries its own (resolved) ``SamplingParams`` and its own
``torch.Generator`` so a seeded request gives the same tokens whatever else shares its batch.
``processed_probs`` is exposed separately because speculative decoding needs the exact
distribution a token was drawn from.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .logprobs import logprob_entry
from .params import SamplingParams


@dataclass
class SampleResult:
    tokens: list[int]
    logprobs: list[dict[int, float] | None]  # per row: sampled token first, then the top-k


def apply_penalties(logits: torch.Tensor, params: list[SamplingParams], prompt_ids: list[list[int]],
                    output_ids: list[list[int]]) -> torch.Tensor:
    for i, p in enumerate(params):
        if p.repetition_penalty != 1.0:
            # transformers/vLLM rule: divide positive logits, multiply negative ones.
            seen = torch.tensor(sorted(set(prompt_ids[i]) | set(output_ids[i])), dtype=torch.long)
            if len(seen):
                vals = logits[i, seen]
                logits[i, seen] = torch.where(vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and output_ids[i]:
            counts = torch.bincount(torch.tensor(output_ids[i]), minlength=logits.shape[1])[: logits.shape[1]]
            logits[i] -= p.frequency_penalty * counts.to(logits.dtype) + p.presence_penalty * (counts > 0).to(logits.dtype)
    return logits


def processed_probs(logits: torch.Tensor, params: list[SamplingParams]) -> torch.Tensor:
    """Probabilities after temperature, top-k, top-p and min-p (rows with temperature 0 are one-hot)."""
    B, V = logits.shape
    temps = torch.tensor([p.temperature if p.temperature > 0 else 1.0 for p in params], dtype=logits.dtype)
    logits = logits / temps.unsqueeze(1)
    top_ks = [p.top_k if 0 < p.top_k < V else V for p in params]
    if any(k < V for k in top_ks) or any(p.top_p < 1.0 for p in params):
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        ranks = torch.arange(V).unsqueeze(0)
        drop = ranks >= torch.tensor(top_ks).unsqueeze(1)
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        probs = sorted_logits.softmax(dim=-1)
        top_p = torch.tensor([p.top_p for p in params], dtype=probs.dtype).unsqueeze(1)
        # Drop a token when the mass before it already reaches top_p (the first token always stays).
        drop = (probs.cumsum(dim=-1) - probs) >= top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(1, order, sorted_logits)
    probs = logits.softmax(dim=-1)
    min_p = torch.tensor([p.min_p for p in params], dtype=probs.dtype).unsqueeze(1)
    if (min_p > 0).any():
        probs = probs.masked_fill(probs < min_p * probs.max(dim=-1, keepdim=True).values, 0.0)
        probs = probs / probs.sum(dim=-1, keepdim=True)
    greedy = [i for i, p in enumerate(params) if p.temperature == 0]
    if greedy:
        rows = torch.tensor(greedy)
        probs[rows] = torch.nn.functional.one_hot(logits[rows].argmax(-1), V).to(probs.dtype)
    return probs


def sample(logits: torch.Tensor, params: list[SamplingParams], prompt_ids: list[list[int]],
           output_ids: list[list[int]], generators: list[torch.Generator | None],
           banned: list[list[int] | None] | None = None) -> SampleResult:
    """logits: [B, V] float32 raw model outputs for each row's next token.

    ``banned``: per row, token ids that must not be drawn now (eos while under min_tokens).
    """
    raw = logits
    if any(p.repetition_penalty != 1.0 or p.presence_penalty or p.frequency_penalty for p in params) or \
            any(banned or []):
        logits = apply_penalties(logits.clone(), params, prompt_ids, output_ids)  # keep raw for logprobs
    for i, ids in enumerate(banned or []):
        if ids:
            logits[i, ids] = float("-inf")
    tokens = [0] * len(params)
    greedy_rows = [i for i, p in enumerate(params) if p.temperature == 0]
    if greedy_rows:
        best = logits[greedy_rows].argmax(dim=-1).tolist()
        for i, t in zip(greedy_rows, best):
            tokens[i] = t
    sampled_rows = [i for i, p in enumerate(params) if p.temperature != 0]
    if sampled_rows:
        probs = processed_probs(logits[sampled_rows], [params[i] for i in sampled_rows])
        # Inverse-CDF draw, one uniform per row: over a 152k vocabulary this is several times cheaper
        # than torch.multinomial. With right=True a zero-probability token can never be chosen.
        cdf = probs.double().cumsum(dim=-1)
        for row, i in enumerate(sampled_rows):
            u = torch.rand(1, generator=generators[i], dtype=torch.float64) * cdf[row, -1]
            tokens[i] = min(int(torch.searchsorted(cdf[row], u, right=True)), probs.shape[1] - 1)
    return SampleResult(tokens, _logprobs(raw, params, tokens))


def _logprobs(raw: torch.Tensor, params: list[SamplingParams], tokens: list[int]) -> list[dict[int, float] | None]:
    """Log-probabilities of the raw model distribution (vLLM's default), sampled token first."""
    rows = [i for i, p in enumerate(params) if p.logprobs is not None]
    out: list[dict[int, float] | None] = [None] * len(params)
    if not rows:
        return out
    lp = raw[rows].log_softmax(dim=-1)
    for r, i in enumerate(rows):
        out[i] = logprob_entry(lp[r], tokens[i], params[i].logprobs)
    return out
