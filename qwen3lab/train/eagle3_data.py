"""Data for EAGLE3 training: target responses, the target's hidden states, the draft vocabulary.

- ``load_records``: JSONL lines ``{"prompt": str}`` or ``{"messages": [...]}``, optionally with a
  ``"response"`` (then the target does not generate one).
- ``generate``: the prompts rendered with the chat template and answered by the target through the
  batched engine (greedy unless told otherwise), so the draft learns the target's own outputs.
- ``record``: one target forward per sequence with ``output_hidden_layers``: the three hidden
  states every draft row is built from and the target's argmax at every position (the labels).
- ``draft_vocab``: the N most frequent label tokens (``d2t``/``t2d``), as SpecForge builds it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..model import AttentionMetadata
from ..sampling import SamplingParams


@dataclass
class Example:
    ids: list[int]  # prompt + response
    num_prompt: int
    aux: torch.Tensor | None = None  # [T, 3*hidden] outputs of the three target layers
    argmax: torch.Tensor | None = None  # [T] target's greedy next token at each position


def load_records(path: str | Path) -> list[dict]:
    records = []
    for n, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        rec = json.loads(line)
        if "prompt" not in rec and "messages" not in rec:
            raise ValueError(f"{path}:{n}: each line needs 'prompt' (a user message) or 'messages' (a chat)")
        records.append(rec)
    if not records:
        raise ValueError(f"{path}: no records")
    return records


def generate(llm, records: list[dict], max_tokens: int, temperature: float = 0.0) -> list[Example]:
    """Render each prompt with the chat template; answer it with the target unless a response is given."""
    prompts, given = [], []
    for rec in records:
        messages = rec.get("messages") or [{"role": "user", "content": rec["prompt"]}]
        text = llm.render_chat(messages, enable_thinking=False)
        prompts.append(llm.tokenizer.encode(text, add_special_tokens=False))
        given.append(rec.get("response"))
    todo = [i for i, r in enumerate(given) if r is None]
    out: dict[int, list[int]] = {}
    if todo:
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=0)
        for i, o in zip(todo, llm.generate([prompts[i] for i in todo], params)):
            out[i] = list(o.token_ids)
    for i, r in enumerate(given):
        if r is not None:
            out[i] = llm.tokenizer.encode(r, add_special_tokens=False)[:max_tokens]
    return [Example(prompts[i] + out[i], len(prompts[i])) for i in range(len(records)) if out[i]]


@torch.inference_mode()
def record(model, examples: list[Example], layers: tuple[int, ...], max_batch_tokens: int = 2048) -> None:
    """Fill ``aux`` (float32) and ``argmax`` of every example with cache-free target forwards."""
    cfg = model.config
    order = sorted(set(layers))
    pick = [order.index(i) for i in layers]
    batch: list[Example] = []

    def flush():
        lens = [len(e.ids) for e in batch]
        meta = AttentionMetadata.build(lens, lens, cfg.layer_types, cfg.sliding_window, None)
        ids = torch.tensor([t for e in batch for t in e.ids])
        hidden, captured = model(ids, meta, None, output_hidden_layers=tuple(order))
        aux = torch.cat([captured[i] for i in pick], dim=-1).float()
        top = model.compute_logits(hidden).argmax(-1)
        for e, s, n in zip(batch, meta.starts, lens):
            e.aux, e.argmax = aux[s: s + n].clone(), top[s: s + n].clone()
        batch.clear()

    for e in examples:
        if batch and sum(len(b.ids) for b in batch) + len(e.ids) > max_batch_tokens:
            flush()
        batch.append(e)
    if batch:
        flush()


def label_positions(e: Example) -> range:
    """Positions whose argmax is a response token (the last prompt position .. the one before the end)."""
    return range(e.num_prompt - 1, len(e.ids) - 1)


def draft_vocab(examples: list[Example], vocab_size: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(d2t [size] int64, t2d [vocab] bool): the most frequent labels, topped up with the lowest unused ids."""
    size = min(size, vocab_size)
    counts = torch.zeros(vocab_size, dtype=torch.long)
    for e in examples:
        pos = torch.tensor(list(label_positions(e)), dtype=torch.long)
        counts += torch.bincount(e.argmax[pos], minlength=vocab_size)
    used = (counts > 0).sum().item()
    chosen = counts.argsort(descending=True, stable=True)[: min(size, used)]
    if len(chosen) < size:
        rest = torch.ones(vocab_size, dtype=torch.bool)
        rest[chosen] = False
        chosen = torch.cat([chosen, rest.nonzero().squeeze(1)[: size - len(chosen)]])
    chosen = chosen.sort().values
    t2d = torch.zeros(vocab_size, dtype=torch.bool)
    t2d[chosen] = True
    return chosen - torch.arange(size), t2d
