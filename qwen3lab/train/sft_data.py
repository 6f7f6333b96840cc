"""SFT data: JSONL conversations -> tokenised examples -> packs -> the batch of each optimizer step.

Each JSONL line is ``{"messages": [...], "tools": [...]?}`` (OpenAI shape). Packing is greedy
first-fit in a seeded per-epoch order: examples go into packs of at most ``pack_length`` tokens
(an example longer than that is cut to it). The packs of a step are a pure function of
(seed, step), which makes resume exact (only the step is stored) and lets every rank derive the
same global batch and take its own share.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from ..tokenizer import Tokenizer
from .render import render_conversation


@dataclass
class Example:
    ids: list[int]
    mask: list[bool]

    @property
    def num_targets(self) -> int:
        return sum(self.mask[1:])


def read_jsonl(path: str | Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as e:
                    raise ValueError(f"{path}:{n}: not valid JSON ({e.msg})") from e
    if not rows:
        raise ValueError(f"{path}: no examples")
    return rows


def tokenize_conversations(rows: list[dict], tokenizer: Tokenizer, pack_length: int, train_thinking: bool = True,
                           source: str = "data") -> list[Example]:
    out = []
    for n, row in enumerate(rows, 1):
        if "messages" not in row:
            raise ValueError(f"{source}:{n}: each line needs a 'messages' list")
        ids, mask = render_conversation(tokenizer, row["messages"], row.get("tools"), train_thinking)
        ex = Example(ids[:pack_length], mask[:pack_length])
        if ex.num_targets:  # a conversation cut before its first assistant token teaches nothing
            out.append(ex)
    if not out:
        raise ValueError(f"{source}: no example has an assistant token within pack_length={pack_length}")
    return out


def pack(examples: list[Example], order: list[int], pack_length: int) -> list[list[int]]:
    """Greedy first-fit of examples (indices, in ``order``) into packs of <= pack_length tokens."""
    packs: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = len(examples[i].ids)
        for k, free in enumerate(room):
            if n <= free:
                packs[k].append(i)
                room[k] -= n
                break
        else:
            packs.append([i])
            room.append(pack_length - n)
    return packs


class StepBatches:
    """Packs for step s: epochs are concatenated; each epoch has its own seeded order and packing."""

    def __init__(self, examples: list[Example], pack_length: int, packs_per_step: int, seed: int):
        self.examples, self.pack_length, self.packs_per_step, self.seed = examples, pack_length, packs_per_step, seed
        self._epochs: dict[int, list[list[int]]] = {}

    def epoch_packs(self, epoch: int) -> list[list[int]]:
        if epoch not in self._epochs:
            order = list(range(len(self.examples)))
            random.Random(self.seed * 100003 + epoch).shuffle(order)
            packs = pack(self.examples, order, self.pack_length)
            # A step never straddles two epochs: the epoch's tail that does not fill a step is dropped.
            self._epochs[epoch] = packs[: len(packs) // self.packs_per_step * self.packs_per_step]
            if not self._epochs[epoch]:
                raise ValueError(f"{len(packs)} packs per epoch is fewer than one step's {self.packs_per_step}; "
                                 f"lower batch_size or add data")
        return self._epochs[epoch]

    def steps_per_epoch(self) -> int:
        return len(self.epoch_packs(0)) // self.packs_per_step

    def step(self, step: int) -> list[list[Example]]:
        per_epoch = self.steps_per_epoch()
        epoch, k = divmod(step, per_epoch)
        packs = self.epoch_packs(epoch)[k * self.packs_per_step:(k + 1) * self.packs_per_step]
        return [[self.examples[i] for i in p] for p in packs]
