"""Perplexity of a model on a fixed text, to measure what quantization costs.

Owns: the shipped corpus (``qwen3lab/data/ppl_corpus.txt``, ~4.3k words of prose, facts, code and
dialogue written for this repository) and the sliding-window perplexity over ``LLM.logits``: each
window of ``window`` tokens scores only the tokens not scored by the previous window, so every token
after the first is predicted once, with at least ``window - stride`` tokens of context (except at the
start). Leaves out downstream task accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch

CORPUS = Path(__file__).resolve().parent.parent / "data" / "ppl_corpus.txt"


@dataclass
class Perplexity:
    perplexity: float
    nll: float  # mean negative log-likelihood per scored token (nats)
    tokens: int  # tokens scored
    windows: int


def corpus_text(path: str | Path | None = None) -> str:
    path = Path(path) if path is not None else CORPUS
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read the perplexity corpus {path}: {e}") from e


def perplexity(llm, text: str | None = None, window: int = 512, stride: int = 256,
               max_tokens: int | None = None, chunk: int | None = None) -> Perplexity:
    """Sliding-window perplexity of ``llm`` (a ``qwen3lab.LLM``) on ``text`` (default: the shipped corpus).

    ``chunk``: score each window ``chunk`` tokens at a time through the KV cache (decode-sized products,
    so the decode kernels' arithmetic is what gets scored); None: one pass per window."""
    if not 0 < stride <= window:
        raise ValueError(f"need 0 < stride <= window, got stride={stride}, window={window}")
    ids = llm.tokenizer.encode(corpus_text() if text is None else text)
    if max_tokens is not None:
        ids = ids[:max_tokens]
    if len(ids) < 2:
        raise ValueError("the text has fewer than 2 tokens; nothing to score")
    total, scored, windows, prev_end = 0.0, 0, 0, 1  # token 0 is never predicted
    for begin in range(0, len(ids), stride):
        end = min(begin + window, len(ids))
        if end <= prev_end:
            break
        piece = ids[begin:end]
        logits = llm.logits(piece, chunk)  # [len, vocab] float32; row i predicts piece[i + 1]
        first = prev_end - begin  # first position in chunk that is still unscored
        targets = torch.tensor(piece[first:])
        logp = torch.log_softmax(logits[first - 1:-1], dim=-1)
        total -= logp.gather(1, targets[:, None]).sum().item()
        scored += len(targets)
        windows += 1
        prev_end = end
        if end == len(ids):
            break
    nll = total / scored
    return Perplexity(math.exp(nll), nll, scored, windows)
